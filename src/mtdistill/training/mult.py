"""Lightning training for the MulT teacher and the video-only students of seed paper 002.

``train_mult(cfg)`` builds everything from a recipe (configs/mult_*.yaml, edam*.yaml, crd*.yaml, kd_mult*.yaml)
and writes the run folder of docs/internal_api.md (config.yaml, metrics.csv, tb/, checkpoints/, model_best /
model_last .safetensors, summary.json). Engine pieces are shared with the VocaLiST trainer (RunCheckpoints,
RunCSVLogger, AtomicCheckpointIO, YAML ``base:`` / ``--set``). Optimiser: Adam (lr 1e-3) on the model and the
loss's own parameters (CRD embeddings, EDAM-T resamplers); ReduceLROnPlateau(patience 10, factor 0.5) on the
validation cross-entropy; best = highest validation weighted F1 over the 7 classes.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from mtdistill.core.errors import UserError
from mtdistill.core.runs import CONFIG, METRICS, SUMMARY
from mtdistill.core.safeio import atomic_write_text
from mtdistill.data.mult.mosei import MoseiDataset, MoseiSplit, load_mosei
from mtdistill.distill import build_loss
from mtdistill.distill.mult.objective import classification_loss, logits_of
from mtdistill.distill.registry import LOSSES, MULT, _ensure_builtin, accepted_kwargs, check_loss
from mtdistill.metrics.mult import mosei_metrics
from mtdistill.models.mult import MulT, MulTConfig, load_mult_checkpoint, resolve_model_file
from mtdistill.models.mult.students import StudentConfig, configuration, student_for
from mtdistill.training.checkpoints import ResumableStateMixin, read_checkpoint_step, seed_epoch
from mtdistill.training.config import (
    LightningSection,
    apply_overrides,
    check_run_name,
    dump_config,
    parse_section,
    read_yaml,
)
from mtdistill.training.engine import fit_run


# ---- recipe (typed; parsed by training.config.parse_section) ----
@dataclass(kw_only=True)
class MultTeacherSection:
    run: str | None = None
    """A teacher run folder (its model_best.safetensors)."""
    checkpoint: str | None = None
    """A MulT file: ours, or an official whole-model pickle / state_dict (docs/mult.md); wins over ``run``."""
    heads: int | None = None
    """The head count an official state_dict does not record."""


@dataclass(kw_only=True)
class MultDataSection:
    pickle: str
    batch_size: int = 64
    val_batch_size: int | None = None
    num_workers: int = 0
    limit_train: int | None = None


@dataclass(kw_only=True)
class MultOptimSection:
    lr: float = 1e-3
    patience: int = 10
    factor: float = 0.5
    max_grad_norm: float | None = 0.8
    weight_decay: float = 0.0


@dataclass(kw_only=True)
class MultTrainerSection(LightningSection):
    epochs: int = 100
    threads: int | None = None
    """torch CPU threads; 1 avoids OpenMP spin contention on busy small machines."""


@dataclass(kw_only=True)
class MultOutputSection:
    dir: str = "runs"
    epoch_checkpoints: bool = False


@dataclass(kw_only=True)
class MultRunConfig:
    """A resolved MulT recipe (``mtdistill mult train``): a teacher, or a video-only student."""

    name: str
    kind: Literal["teacher", "student"]
    method: str | None = None
    """The row's description in reports."""
    row: str | None = None
    """Table 1 row id (see evaluation/mult/report.py); None = not a paper row."""
    description: str | None = None
    seed: int = 1111
    configuration: Literal[1, 2, 3, 4, 5] = 5
    """Student-teacher configuration (paper section 4.2)."""
    edam_s: bool = True
    """Student proxies take the teacher's stream lengths."""
    model: dict[str, Any] = field(default_factory=dict)
    """MulTConfig fields (teacher) or StudentConfig fields (student)."""
    teacher: MultTeacherSection = field(default_factory=MultTeacherSection)
    data: MultDataSection
    loss: dict[str, Any] = field(default_factory=dict)
    """``name`` (default mult_ce) plus the keyword arguments of a MulT-family loss."""
    optim: MultOptimSection = field(default_factory=MultOptimSection)
    trainer: MultTrainerSection = field(default_factory=MultTrainerSection)
    output: MultOutputSection = field(default_factory=MultOutputSection)


def parse_mult_config(data: dict[str, Any], where: str = "<dict>") -> MultRunConfig:
    """Check every key of a merged MulT recipe and fill defaults: the typed ``MultRunConfig``."""
    if not isinstance(data, dict):
        raise UserError(f"config {where}: top level must be a mapping of keys, got {type(data).__name__}")
    cfg = parse_section(MultRunConfig, data, where)
    check_run_name(cfg.name, where)
    cfg.loss.setdefault("name", "mult_ce")
    check_loss(cfg.loss["name"], MULT, f"config {where}: 'loss.name'")
    if cfg.kind == "teacher" and cfg.loss["name"] != "mult_ce":
        raise UserError(f"config {where}: a teacher trains with loss mult_ce, not {cfg.loss['name']!r}")
    if cfg.data.batch_size < 1 or cfg.trainer.epochs < 1 or cfg.optim.lr <= 0:
        raise UserError(f"config {where}: batch_size and epochs must be >= 1 and lr > 0")
    cfg.method = cfg.method or cfg.name
    return cfg


def validate_mult_config(data: dict[str, Any], where: str = "<dict>") -> dict[str, Any]:
    """``parse_mult_config`` as the plain nested dict the trainer and config.yaml use."""
    return asdict(parse_mult_config(data, where))


def load_mult_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> dict[str, Any]:
    """Read a recipe (with its ``base:`` chain), apply ``--set`` overrides, validate and fill defaults."""
    merged = apply_overrides(read_yaml(Path(path)), list(overrides))
    return validate_mult_config(merged, str(path) + (" (with --set)" if overrides else ""))


# ---- data ----
class MoseiDataModule(pl.LightningDataModule):
    """train / valid / test loaders over one MulT-layout pickle (loaded once)."""

    def __init__(self, data: dict[str, Any], seed: int, splits: dict[str, MoseiSplit] | None = None) -> None:
        super().__init__()
        self.cfg, self.seed = data, seed
        self.splits = splits or load_mosei(data["pickle"])

    def dataset(self, split: str) -> MoseiDataset:
        limit = self.cfg.get("limit_train") if split == "train" else None
        return MoseiDataset(self.splits[split], limit=limit)

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        bs = self.cfg["batch_size"] if split == "train" else (self.cfg.get("val_batch_size") or self.cfg["batch_size"])
        gen = torch.Generator().manual_seed(self.seed)
        return DataLoader(
            self.dataset(split),
            batch_size=bs,
            shuffle=shuffle,
            generator=gen,
            num_workers=int(self.cfg.get("num_workers") or 0),
            drop_last=False,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("valid", False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", False)


def labels_for(model: nn.Module, batch: dict[str, Tensor]) -> Tensor:
    """7-class ids for a classifier head, the float sentiment for a regression head."""
    return batch["class7"] if model.config.output_dim > 1 else batch["label"]


# ---- module ----
class MultLightningModule(ResumableStateMixin, pl.LightningModule):
    """Trains ``student`` (a MulT teacher from scratch, or a video-only student) with a registered MulT loss."""

    def __init__(
        self,
        student: nn.Module,
        loss: nn.Module,
        cfg: dict[str, Any],
        teacher: nn.Module | None = None,
        probe: dict[str, Tensor] | None = None,
    ) -> None:
        super().__init__()
        self.student, self.loss, self.cfg = student, loss, cfg
        self.seed = int(cfg["seed"])
        self._teacher = [teacher.eval().requires_grad_(False)] if teacher is not None else []  # not a submodule
        wants = bool(getattr(loss, "needs_capture", False))
        names = getattr(loss, "capture_names", lambda side: True)
        # what each model captures: only the transformers the loss reads (False = logits only)
        self.capture = {side: (names(side) if wants else False) for side in ("student", "teacher")}
        self.teacher_needed = bool(getattr(loss, "needs_teacher", False))
        if self.teacher_needed and teacher is None:
            raise UserError(f"loss {cfg['loss']['name']!r} needs a teacher; set teacher.run in the recipe")
        if probe is not None and hasattr(loss, "setup"):
            # shape-dependent loss parts (CRD embeddings, EDAM-T resamplers) exist before the optimiser and resume
            with torch.no_grad():
                t_out = self.teacher_forward(probe) if self.teacher_needed else None
                self.loss.setup(student.forward_batch(probe, capture=self.capture["student"]), t_out)
        self._val: list[tuple[Tensor, Tensor]] = []
        self.val_f1_of_epoch: dict[int, float] = {}

    @property
    def teacher(self) -> nn.Module | None:
        return self._teacher[0] if self._teacher else None

    @torch.no_grad()
    def teacher_forward(self, batch: dict[str, Tensor]) -> Any:
        return self.teacher.forward_batch(batch, capture=self.capture["teacher"])

    def on_fit_start(self) -> None:
        if self.teacher is not None:
            self.teacher.to(self.device).eval()

    def on_train_epoch_start(self) -> None:
        seed_epoch(self.seed, self.current_epoch, self.global_rank)
        if self.teacher is not None:
            self.teacher.eval()

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        t_out = self.teacher_forward(batch) if self.teacher_needed else None
        s_out = self.student.forward_batch(batch, capture=self.capture["student"])
        total = self.loss(s_out, t_out, labels_for(self.student, batch), batch["index"])
        return self.log_train_step(total, batch["index"].shape[0])

    def on_validation_epoch_start(self) -> None:
        self._val = []

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        # validation indices address another split: CRD memories must not see them, so only L_c is computed
        logits = logits_of(self.student.forward_batch(batch)).float()
        loss = classification_loss(logits, labels_for(self.student, batch))
        self.log("val/loss", loss, on_step=False, on_epoch=True, batch_size=batch["index"].shape[0])
        self._val.append((logits.cpu(), batch["label"].cpu()))

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking or not self._val:
            return
        logits = torch.cat([v[0] for v in self._val]).numpy()
        labels = torch.cat([v[1] for v in self._val]).numpy()
        m = mosei_metrics(logits, labels)
        f1 = m.get("f1_weighted", m.get("f1_binary", float("nan")))
        self.val_f1_of_epoch[self.current_epoch] = float(f1)
        self.log("val/f1", float(f1), on_step=False, on_epoch=True)
        self.log("val/acc7", float(m["acc7"]), on_step=False, on_epoch=True, prog_bar=True)
        if "f1_macro" in m:
            self.log("val/f1_macro", float(m["f1_macro"]), on_step=False, on_epoch=True)

    def configure_optimizers(self) -> dict[str, Any]:
        o = self.cfg["optim"]
        groups = [{"params": [p for p in self.student.parameters() if p.requires_grad], "name": "model"}]
        loss_params = [p for p in self.loss.parameters() if p.requires_grad]
        if loss_params:
            groups.append({"params": loss_params, "name": "loss"})
        opt = torch.optim.Adam(groups, lr=float(o["lr"]), weight_decay=float(o["weight_decay"]))
        sched = torch.optim.lr_scheduler.ReduceLROnPlateau(
            opt, mode="min", patience=int(o["patience"]), factor=float(o["factor"])
        )
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "monitor": "val/loss", "interval": "epoch"}}

    def configure_gradient_clipping(
        self, optimizer: torch.optim.Optimizer, gradient_clip_val: Any = None, gradient_clip_algorithm: Any = None
    ) -> None:
        norm = self.cfg["optim"]["max_grad_norm"]
        self.clip_update(optimizer, norm)


# ---- building a run ----
def build_teacher(cfg: dict[str, Any]) -> MulT | None:
    t = cfg["teacher"]
    src = t.get("checkpoint") or t.get("run")  # an explicit file wins over the recipe's teacher run
    if src is None:
        return None
    if t.get("checkpoint") and Path(src).is_file():
        model: nn.Module = MulT.from_checkpoint(src, heads=t.get("heads"))
    else:
        model = load_mult_checkpoint(resolve_model_file(src))
    if not isinstance(model, MulT):
        raise UserError(f"teacher {src} is a student checkpoint; point teacher.run at a MulT teacher run")
    want = configuration(cfg["configuration"]).teacher_mode
    if cfg["kind"] == "student" and model.config.mode != want:
        raise UserError(
            f"configuration {cfg['configuration']} distils from a mode={want!r} teacher, but {src} "
            f"has mode={model.config.mode!r}; train the matching teacher recipe"
        )
    return model


def build_model(cfg: dict[str, Any], split: MoseiSplit, teacher: MulT | None) -> nn.Module:
    """The model this run trains, sized from the data (feature sizes, sequence lengths)."""
    options = dict(cfg["model"])
    if cfg["kind"] == "teacher":
        options.setdefault("output_dim", 7)
        try:
            return MulT(config=MulTConfig(orig_dims=split.dims, **options))
        except TypeError as exc:
            raise UserError(f"model: {exc}; allowed keys are MulTConfig fields") from None
    try:
        return student_for(
            cfg["configuration"],
            teacher,
            lengths=split.lengths,
            vision_dim=split.dims[2],
            edam_s=cfg["edam_s"],
            **options,
        )
    except TypeError as exc:
        raise UserError(f"model: {exc}; allowed keys are StudentConfig fields") from None


def loss_kwargs(cfg: dict[str, Any], split: MoseiSplit) -> dict[str, Any]:
    """The recipe's loss options plus what the run knows: pairs of the configuration, n_data, class ids."""
    _ensure_builtin()
    kw = {k: v for k, v in cfg["loss"].items() if k != "name"}
    cls = LOSSES.get(cfg["loss"]["name"])
    accepted = accepted_kwargs(cls) if cls is not None else None
    if accepted is not None:
        if "pairs" in accepted and kw.get("pairs") is None:
            kw["pairs"] = [list(p) for p in configuration(cfg["configuration"]).pairs]
        if "n_data" in accepted:
            kw["n_data"] = len(split)
        if "class_ids" in accepted and kw.get("negatives") == "class":
            kw["class_ids"] = torch.as_tensor(split.classes)
    return kw


def train_mult(cfg: dict[str, Any], resume: bool | None = None, splits: dict[str, MoseiSplit] | None = None) -> dict:
    """Train according to a validated recipe; returns summary.json's content."""

    run_dir = Path(cfg["output"]["dir"]) / cfg["name"]
    last = run_dir / "checkpoints" / "last.ckpt"
    if resume is True and not last.is_file():
        raise UserError(f"--resume: {last} does not exist; drop --resume to start the run")
    ckpt_path = last if (resume is not False and last.is_file()) else None
    if cfg["trainer"]["threads"]:
        torch.set_num_threads(int(cfg["trainer"]["threads"]))
    pl.seed_everything(int(cfg["seed"]), workers=True, verbose=False)
    data = MoseiDataModule(cfg["data"], int(cfg["seed"]), splits)
    train = data.splits["train"]
    teacher = build_teacher(cfg) if cfg["kind"] == "student" else None
    model = build_model(cfg, train, teacher)
    loss = build_loss(cfg["loss"]["name"], MULT, **loss_kwargs(cfg, train))
    probe = next(iter(DataLoader(data.dataset("train"), batch_size=2)))
    module = MultLightningModule(model, loss, cfg, teacher=teacher, probe=probe)

    run_dir.mkdir(parents=True, exist_ok=True)
    saved = {
        **cfg,
        "params": model.num_parameters(),
        "teacher_params": teacher.num_parameters() if teacher is not None else None,
    }
    atomic_write_text(run_dir / CONFIG, dump_config(saved))
    if ckpt_path is None and (run_dir / METRICS).is_file():
        (run_dir / METRICS).unlink()  # a fresh run must not append to an older run's rows
    fit_run(
        module, data, cfg, run_dir, model.num_parameters(), ckpt_path,
        read_checkpoint_step(ckpt_path) if ckpt_path else None,
    )  # fmt: skip
    summary = json.loads((run_dir / SUMMARY).read_text()) if (run_dir / SUMMARY).is_file() else {}
    if int(os.environ.get("LOCAL_RANK", "0")) == 0 and summary:
        summary.update(kind=cfg["kind"], row=cfg["row"], configuration=cfg["configuration"])
        atomic_write_text(run_dir / SUMMARY, json.dumps(summary, indent=2) + "\n")
    return summary


__all__ = [
    "MultRunConfig",
    "MoseiDataModule",
    "MultLightningModule",
    "StudentConfig",
    "load_mult_config",
    "train_mult",
]
