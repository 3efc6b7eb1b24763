"""Training engine end to end on a tiny store: loss goes down, run folder layout, SIGKILL + exact resume, DDP.

Models are far below ``VocaLiST.tiny()`` (d=16 teacher, d=8 student, 8 heads each) so that the whole file
stays within the CI budget on 2 CPU cores; every piece is real (Lightning, PairDataset on an HDF5 store,
safetensors, subprocesses killed with SIGKILL, a 2-process gloo process group).
"""

from __future__ import annotations

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from torch import nn

from mtdistill.core.errors import UserError
from mtdistill.core.quirks import Quirks
from mtdistill.data import store as st
from mtdistill.models.vocalist import VocaLiST, VocaLiSTConfig
from mtdistill.training.config import validate

TEACHER_CFG = VocaLiSTConfig(d_model=16, widths=(2, 4, 4, 8, 16))
STUDENT_CFG = {"d_model": 8, "widths": [2, 2, 4, 4, 8]}
N_FRAMES = 32


def make_store(root: Path, seed: int = 0) -> Path:
    """Two shards (one per DDP rank), each with 2 pretrain + 1 val utterance of 32 frames of noise."""
    rng = np.random.default_rng(seed)
    (root / "shards").mkdir(parents=True)
    for shard in range(2):
        name = st.shard_name(shard)
        writer = st.ShardWriter(root / "shards" / f"{name}.h5")
        for i, split in enumerate(("pretrain", "pretrain", "val")):
            frames = rng.integers(0, 256, size=(N_FRAMES, 48, 96, 3), dtype=np.uint8)
            audio = (rng.standard_normal(N_FRAMES * 640) * 0.2).astype(np.float32)
            writer.add(str(i), frames, np.ones(N_FRAMES, bool), audio, uid=f"s{shard}u{i}", split=split)
        sha = writer.close()
        side = {"id": shard, "file": f"{name}.h5", "sha256": sha, "n_utterances": 3, "utterances": writer.entries}
        (root / "shards" / f"{name}.json").write_text(json.dumps(side))
    st.write_index(root, st.build_index(root))
    return root


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("training")
    make_store(root / "store")
    torch.manual_seed(0)
    VocaLiST(TEACHER_CFG, "mtd").save_checkpoint(root / "teacher.safetensors")
    return root


def recipe(workdir: Path, name: str, **sections: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "name": name,
        "kind": "distill",
        "method": "MTD",
        "seed": 7,
        "model": {"size": "custom", "config": STUDENT_CFG},
        "teacher": {"checkpoint": str(workdir / "teacher.safetensors")},
        "data": {
            "store": str(workdir / "store"),
            "batch_size": 2,
            "samples_per_epoch": 4,
            "val_samples": 2,
            "fixed_val": True,
            "min_frames": 25,
        },
        "loss": {"name": "mtd", "weighting": "uw", "n_weights": 25},
        "optim": {"lr": 2e-3, "warmup_epochs": 1},
        "trainer": {"epochs": 2, "accelerator": "cpu", "devices": 1, "log_every_n_steps": 1, "progress_bar": False},
        "output": {"dir": str(workdir / "runs")},
    }
    for key, value in sections.items():
        cfg[key] = {**cfg[key], **value} if isinstance(value, dict) and isinstance(cfg.get(key), dict) else value
    return cfg


def write_recipe(workdir: Path, cfg: dict[str, Any]) -> Path:
    path = workdir / f"{cfg['name']}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def read_metrics(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "metrics.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def train_losses(rows: list[dict[str, str]]) -> dict[int, float]:
    return {int(r["step"]): float(r["train/loss"]) for r in rows if r.get("train/loss")}


ENV = {**os.environ, "OMP_NUM_THREADS": "1"}  # tiny models: one thread per process avoids spin-waiting on 2 cores


@contextmanager
def one_thread() -> Iterator[None]:
    """In-process runs use the same thread count as the subprocesses, so their float sums are identical."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture
def single_thread() -> Iterator[None]:
    with one_thread():
        yield


def cli(args: list[str], **kw: Any) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "mtdistill", *args], env=ENV, **kw)


def cli_run(args: list[str], timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mtdistill", *args], env=ENV, capture_output=True, text=True, timeout=timeout
    )


def test_distillation_steps_lower_the_loss_on_a_fixed_batch(workdir: Path, single_thread: None) -> None:
    from torch.utils.data import default_collate

    from mtdistill.data.pairs import PairDataset
    from mtdistill.training.config import quirks_of
    from mtdistill.training.module import SyncLightningModule
    from mtdistill.training.run import build_losses, build_model, build_teacher

    cfg = validate(recipe(workdir, "steps", optim={"schedule": "constant", "lr": 3e-3}, quirks={}))
    quirks = quirks_of(cfg).replace(first_iteration_lr_zero=False)
    torch.manual_seed(0)
    student, teacher = build_model(cfg["model"], quirks), build_teacher(cfg, quirks)
    loss, _ = build_losses(cfg, quirks, student, teacher)
    module = SyncLightningModule(student, loss, {**cfg, "_quirks": quirks}, teacher=teacher)
    assert module.teacher is teacher and not any(k.startswith("_teacher") for k in module.state_dict())
    opt = module.configure_optimizers()["optimizer"]
    assert [len(g["params"]) for g in opt.param_groups] == [len(list(student.parameters())), 1]  # UW weights apart
    data = PairDataset(cfg["data"]["store"], split="pretrain", seed=1, length=4, fixed=True)
    batch = default_collate([data[i] for i in range(3)])
    video, mel, labels = batch["video"], batch["mel"], batch["label"]

    def evaluate() -> tuple[float, float]:
        student.eval()
        with torch.no_grad():
            total = loss(module.student_forward(video, mel, True), module.teacher_forward(video, mel), labels)
        student.train()
        return float(total), float(loss.terms["distill"])

    total0, distill0 = evaluate()
    weights0 = loss.params.detach().clone()
    for _ in range(4):
        opt.zero_grad()
        out = loss(module.student_forward(video, mel, True), module.teacher_forward(video, mel), labels)
        out.backward()
        assert all(p.grad is None for p in teacher.parameters())
        opt.step()
    total1, distill1 = evaluate()
    assert total1 < total0 and distill1 < distill0
    assert not torch.equal(loss.params.detach(), weights0)  # the loss weights are trained too


@pytest.mark.slow
def test_run_folder_then_sigkill_and_exact_resume(workdir: Path) -> None:
    from mtdistill.training.run import run_recipe

    # uninterrupted reference (in process)
    ref_cfg = recipe(workdir, "ref")
    with one_thread():
        summary = run_recipe(validate(ref_cfg))
    ref = workdir / "runs" / "ref"
    for rel in ("config.yaml", "metrics.csv", "summary.json", "model_best.safetensors", "model_last.safetensors"):
        assert (ref / rel).is_file(), rel
    ckpts = {p.name for p in (ref / "checkpoints").iterdir()}
    assert {"epoch=000.ckpt", "epoch=001.ckpt", "last.ckpt", "best.ckpt"} <= ckpts
    assert not [n for n in ckpts if n.endswith(".tmp")]
    assert any((ref / "tb").glob("events.out.tfevents.*"))
    assert set(summary) >= {"name", "method", "params", "best_val_f1", "best_epoch", "epochs_done", "finished"}
    assert summary["finished"] is True and summary["epochs_done"] == 2 and summary["method"] == "MTD"
    best = VocaLiST.from_checkpoint(ref / "model_best.safetensors")
    assert best.config.d_model == 8 and best.preset == "mtd"
    assert summary["params"] == best.num_parameters()
    rows = read_metrics(ref)
    header = list(rows[0])
    assert header[:3] == ["epoch", "step", "lr"]
    assert {"train/loss", "train/bce", "train/cad/fusion/3", "train/vr/va/0", "val/loss", "val/f1"} <= set(header)
    assert {"val/cad/av/0", "val/w/0"} <= set(header)
    lrs = {int(r["step"]): float(r["lr"]) for r in rows if r.get("lr")}
    assert lrs[0] == 0.0 and lrs[1] == pytest.approx(2e-3) and lrs[3] == pytest.approx(2e-3)
    f1s = [float(r["val/f1"]) for r in rows if r.get("val/f1")]
    assert len(f1s) == 2 and summary["best_val_f1"] == pytest.approx(max(f1s))
    assert summary["best_epoch"] == f1s.index(max(f1s))  # strictly greater: ties keep the earlier epoch
    reference = train_losses(rows)
    assert sorted(reference) == [0, 1, 2, 3]

    # the same recipe under another name, killed with SIGKILL right after the first epoch's checkpoint
    kill_cfg = recipe(workdir, "killed")
    path = write_recipe(workdir, kill_cfg)
    run_dir = workdir / "runs" / "killed"
    proc = cli(["distill", str(path)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while not (run_dir / "summary.json").exists():  # written right after checkpoints/last.ckpt
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:] if proc.stderr else ""
        assert time.time() < deadline, "no checkpoint within 120 s"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    assert json.loads((run_dir / "summary.json").read_text())["finished"] is False

    # rerun the same command: it resumes from last.ckpt automatically
    done = cli_run(["distill", str(path)])
    assert done.returncode == 0, done.stderr[-2000:]
    resumed = json.loads(done.stdout.strip().splitlines()[-1])
    assert resumed["finished"] is True and resumed["epochs_done"] == 2
    losses = train_losses(read_metrics(run_dir))
    assert sorted(losses) == [0, 1, 2, 3]  # rows of the killed epoch were dropped, then logged again once
    for step in (2, 3):  # 2 = the first step after resume
        assert losses[step] == pytest.approx(reference[step], rel=1e-6, abs=1e-6), step
    resumed_weights = VocaLiST.from_checkpoint(run_dir / "model_last.safetensors").state_dict()
    reference_weights = VocaLiST.from_checkpoint(ref / "model_last.safetensors").state_dict()
    for key, value in reference_weights.items():
        torch.testing.assert_close(resumed_weights[key], value, rtol=1e-5, atol=1e-6)

    # explicit --no-resume refuses to touch an existing run; a bad recipe is one line and exit code 2
    refused = cli_run(["distill", str(path), "--no-resume"])
    assert refused.returncode == 2 and "already has checkpoints" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1


class DistillStep(nn.Module):
    """One training step's loss as a module: DDP then wraps the student and the loss's UW weights together."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, video: torch.Tensor, mel: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        m = self.module
        return m.loss(m.student_forward(video, mel, True), m.teacher_forward(video, mel), labels)


def distill_step(cfg: dict[str, Any]) -> tuple[DistillStep, torch.optim.Optimizer]:
    """The MTD step of the recipe as training/run.py builds it (seeded), in eval mode so dropout is off."""
    from mtdistill.training.config import quirks_of
    from mtdistill.training.module import SyncLightningModule
    from mtdistill.training.run import build_losses, build_model, build_teacher

    cfg = validate(cfg)
    quirks = quirks_of(cfg).replace(first_iteration_lr_zero=False)
    torch.manual_seed(0)
    student, teacher = build_model(cfg["model"], quirks), build_teacher(cfg, quirks)
    loss, _ = build_losses(cfg, quirks, student, teacher)
    module = SyncLightningModule(student, loss, {**cfg, "_quirks": quirks}, teacher=teacher)
    return DistillStep(module).eval(), module.configure_optimizers()["optimizer"]


def step_once(step: nn.Module, opt: torch.optim.Optimizer, batch: dict[str, torch.Tensor]) -> dict[str, Any]:
    """zero_grad, loss, backward, optimizer step; the gradients and the updated weights of the wrapped module."""
    opt.zero_grad()
    step(batch["video"], batch["mel"], batch["label"].float()).backward()
    opt.step()
    named = dict(step.named_parameters())
    return {
        "grads": {k: p.grad.detach().clone() for k, p in named.items() if p.grad is not None},
        "weights": {k: p.detach().clone() for k, p in named.items()},
    }


def ddp_rank(rank: int, world: int, port: int, cfg: dict[str, Any], batch: dict, out: str) -> None:
    """One rank of a gloo group: its share of the batch through DistributedDataParallel, one step."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        step, opt = distill_step(cfg)
        share = len(batch["label"]) // world
        mine = {k: v[rank * share : (rank + 1) * share] for k, v in batch.items()}
        result = step_once(DistributedDataParallel(step), opt, mine)
        result["grads"] = {k.removeprefix("module."): v for k, v in result["grads"].items()}
        result["weights"] = {k.removeprefix("module."): v for k, v in result["weights"].items()}
        torch.save(result, Path(out) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_a_ddp_step_on_two_processes_equals_one_process_on_the_whole_batch(workdir: Path, tmp_path: Path) -> None:
    from torch.utils.data import default_collate

    from mtdistill.data.pairs import PairDataset

    cfg = recipe(workdir, "ddp_step", optim={"schedule": "constant", "lr": 3e-3}, quirks={})
    data = PairDataset(str(workdir / "store"), split="pretrain", seed=1, length=4, fixed=True)
    batch = {k: v for k, v in default_collate([data[i] for i in range(4)]).items() if k in ("video", "mel", "label")}

    with one_thread():
        step, opt = distill_step(cfg)
        initial = {k: p.detach().clone() for k, p in step.named_parameters()}
        whole = step_once(step, opt, batch)
    context = torch.multiprocessing.start_processes(
        ddp_rank, args=(2, free_port(), cfg, batch, str(tmp_path)), nprocs=2, join=False, start_method="spawn"
    )
    deadline = time.time() + 240
    while not context.join(timeout=5):  # a rank that fails raises here, with its traceback
        assert time.time() < deadline, "the 2-process gloo step did not finish within 240 s"
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]

    uw = "module.loss.params"
    assert uw in whole["grads"] and len(whole["grads"]) == sum(p.requires_grad for p in step.parameters())
    for rank in ranks:
        assert rank["grads"].keys() == whole["grads"].keys()
        for key, grad in whole["grads"].items():  # all-reduced (averaged) gradients = the whole batch's
            torch.testing.assert_close(rank["grads"][key], grad, rtol=1e-5, atol=1e-6, msg=key)
        for key, weight in whole["weights"].items():
            # Adam's first step is lr * g / (|g| + 1e-8): entries whose gradient is zero in exact arithmetic
            # (the key bias of an attention, |g| ~ 1e-10 of float noise) move by up to lr either way in both runs
            real = whole["grads"][key].abs() > 1e-7 if key in whole["grads"] else torch.ones_like(weight, dtype=bool)
            torch.testing.assert_close(rank["weights"][key][real], weight[real], rtol=1e-5, atol=1e-6, msg=key)
            assert ((rank["weights"][key] - initial[key]).abs() <= 3e-3 * 1.001).all(), key
    assert not torch.equal(whole["weights"][uw], initial[uw])  # the step moved the loss weights too
    # and each rank alone (half the batch) would have given other gradients: the all-reduce did the work
    with one_thread():
        step, opt = distill_step(cfg)
        half = step_once(step, opt, {k: v[:2] for k, v in batch.items()})
    assert not torch.allclose(half["grads"][uw], whole["grads"][uw], rtol=1e-3, atol=1e-5)


@pytest.mark.slow
def test_ddp_two_cpu_processes_gloo_end_to_end(workdir: Path) -> None:
    cfg = recipe(
        workdir,
        "ddp",
        data={"samples_per_epoch": 8},
        trainer={
            "epochs": 1,
            "strategy": "ddp",
            "devices": 2,
            "accelerator": "cpu",
            "precision": "bf16-mixed",
            "accumulate_grad_batches": 2,
        },
    )
    path = write_recipe(workdir, cfg)
    done = cli_run(["distill", str(path)], timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    run_dir = workdir / "runs" / "ddp"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["finished"] is True and summary["epochs_done"] == 1
    # 8 samples / (2 ranks x batch 2) = 2 batches per rank, accumulated into 1 optimizer step
    assert summary["global_step"] == 1
    rows = read_metrics(run_dir)
    assert train_losses(rows) and all(np.isfinite(v) for v in train_losses(rows).values())
    assert any(r.get("val/f1") for r in rows)
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()


def test_datamodule_shards_ranks_and_keeps_the_fixed_val_set_whole(workdir: Path) -> None:
    from mtdistill.training.datamodule import PairDataModule

    class FakeTrainer:  # only the two attributes the data module reads
        def __init__(self, rank: int) -> None:
            self.global_rank, self.world_size = rank, 2

    cfg = validate(recipe(workdir, "dm"))
    uids = []
    for rank in (0, 1):
        dm = PairDataModule(cfg["data"], seed=7, preset="mtd", quirks=Quirks())
        dm.trainer = FakeTrainer(rank)
        dm.setup("fit")
        uids.append(set(dm.train_set.uids))
        assert set(dm.val_set.uids) == {"s0u2", "s1u2"}  # fixed validation: the whole split on each rank
        assert len(dm.train_set) == 4  # the sampler divides the epoch between the ranks
    assert uids == [{"s0u0", "s0u1"}, {"s1u0", "s1u1"}]


def test_bad_inputs_are_one_line_user_errors(workdir: Path) -> None:
    from mtdistill.training.run import run_recipe

    with pytest.raises(UserError, match="needs a teacher"):
        run_recipe(validate(recipe(workdir, "bad1", kind="train")))
    with pytest.raises(UserError, match="teacher checkpoint .* not found"):
        run_recipe(validate(recipe(workdir, "bad2", teacher={"checkpoint": str(workdir / "nope.safetensors")})))
    with pytest.raises(UserError, match="data store .* not found"):
        run_recipe(validate(recipe(workdir, "bad3", data={"store": str(workdir / "nostore")})))
    with pytest.raises(UserError, match="run it with `mtdistill distill`"):
        run_recipe(validate(recipe(workdir, "bad4")), expect_kind="train")


def test_stop_at_val_f1_ends_the_run_at_the_first_validation_that_reaches_it(workdir: Path) -> None:
    from mtdistill.training.run import run_recipe

    cfg = recipe(workdir, "stop_early", kind="train", trainer={"epochs": 4, "stop_at_val_f1": 0.0})
    cfg["loss"] = {"name": "bce"}
    cfg["teacher"] = {"checkpoint": None}
    with one_thread():
        summary = run_recipe(validate(cfg))
    assert summary["epochs_done"] == 1 and summary["finished"]  # F1 >= 0 holds at the first validation
    epochs = {int(r["epoch"]) for r in read_metrics(workdir / "runs" / "stop_early")}
    assert epochs == {0}
    with pytest.raises(UserError, match=r"stop_at_val_f1' is a weighted F1 in \[0, 1\], got 70"):
        validate(recipe(workdir, "bad_stop", trainer={"stop_at_val_f1": 70}))


def test_progress_in_a_log_file_is_one_plain_bar_without_lightning_banners(workdir: Path) -> None:
    # stderr is a file, as in `mtdistill demo > demo.log 2>&1`: the training bar stays, nothing else of Lightning
    cfg = recipe(workdir, "log_file", kind="train", trainer={"epochs": 1, "progress_bar": True})
    cfg["loss"] = {"name": "bce"}
    cfg["teacher"] = {"checkpoint": None}
    path = write_recipe(workdir, cfg)
    log = workdir / "log_file.stderr"
    with open(log, "wb") as fh:
        done = subprocess.run(
            [sys.executable, "-m", "mtdistill", "train", str(path)], env=ENV, stdout=subprocess.PIPE, stderr=fh,
            timeout=300,
        )  # fmt: skip
    text = log.read_text()
    assert done.returncode == 0, text[-2000:]
    assert json.loads(done.stdout.decode().strip().splitlines()[-1])["finished"] is True
    assert "Epoch 0: 100%" in text  # the training bar is drawn (with carriage returns, on one line per epoch)
    assert "\x1b" not in text  # no cursor movements (ESC[A of the nested validation bar) or colours
    for banner in ("GPU available", "TPU available", "HPU available", "LOCAL_RANK", "Trainer.fit", "Validation"):
        assert banner not in text, banner
