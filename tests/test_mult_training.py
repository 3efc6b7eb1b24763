"""Training the MulT teacher and the video-only students with Lightning, evaluation and the Table 1 report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mtdistill.core.errors import UserError
from mtdistill.data.mult.mosei import load_mosei
from mtdistill.data.mult.synth import SynthMoseiConfig, write_synthetic_mosei
from mtdistill.distill import build_loss
from mtdistill.evaluation.mult.evaluate import evaluate_mult_run
from mtdistill.evaluation.mult.report import render_mult_table
from mtdistill.models.mult.students import CONFIGURATIONS, student_for
from mtdistill.models.mult.teacher import MulT
from mtdistill.training.mult import load_mult_config, train_mult

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
TINY = [
    "model.d=8",
    "model.layers=1",
    "model.heads=2",
    "data.batch_size=16",
    "trainer.progress_bar=false",
    "trainer.threads=1",
]


@pytest.fixture(autouse=True)
def one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("mosei")
    write_synthetic_mosei(out, SynthMoseiConfig(n_train=48, n_valid=16, n_test=16, lengths=(4, 12, 12), seed=1))
    return out


def test_a_training_step_lowers_the_loss(tiny_data):
    torch.manual_seed(0)
    train = load_mosei(tiny_data)["train"]
    batch = {
        "text": torch.from_numpy(train.text[:16]),
        "audio": torch.from_numpy(train.audio[:16]),
        "vision": torch.from_numpy(train.vision[:16]),
        "index": torch.arange(16),
        "class7": torch.from_numpy(train.classes[:16]),
    }
    teacher = MulT(orig_dims=train.dims, output_dim=7, d=8, layers=1, heads=2).eval()
    student = student_for(5, teacher, lengths=train.lengths, vision_dim=35, d=8, layers=1, heads=2)
    loss = build_loss("edam_s", pairs=[list(p) for p in CONFIGURATIONS[5].pairs])
    opt = torch.optim.Adam(student.parameters(), lr=1e-2)
    with torch.no_grad():
        t_out = teacher.forward_batch(batch, capture=True)
    values = []
    for _ in range(8):
        opt.zero_grad()
        total = loss(student.forward_batch(batch, capture=True), t_out, batch["class7"], batch["index"])
        total.backward()
        opt.step()
        values.append(float(total.detach()))
    assert values[-1] < values[0]


def test_recipes_validate_and_name_their_rows():
    for path in sorted(CONFIGS.glob("*.yaml")):
        if not path.name.startswith(("mult_", "edam", "crd", "kd_mult")) or path.name == "mult_demo_base.yaml":
            continue
        if path.name == "mult_base.yaml":
            continue
        cfg = load_mult_config(path)
        assert cfg["kind"] in ("teacher", "student"), path
        if cfg["loss"]["name"] not in ("mult_ce",):
            assert cfg["teacher"]["run"], f"{path.name} distils but names no teacher run"
    with pytest.raises(UserError, match="unknown key 'optim.lrr'"):
        load_mult_config(CONFIGS / "mult_teacher.yaml", ["optim.lrr=1"])
    with pytest.raises(UserError, match="teacher trains with loss mult_ce"):
        load_mult_config(CONFIGS / "mult_teacher.yaml", ["loss.name=edam"])


@pytest.mark.slow
def test_teacher_student_edam_s_crd_train_evaluate_and_report(tiny_data, tmp_path):
    common = [
        *TINY,
        f"data.pickle={tiny_data}",
        f"output.dir={tmp_path}",
        "trainer.epochs=2",
        f"teacher.run={tmp_path / 'mult_demo_teacher'}",
    ]
    runs = []
    for recipe in ("mult_demo_teacher.yaml", "mult_demo_student.yaml", "edam_s_demo.yaml", "crd_attention_demo.yaml"):
        overrides = common if recipe != "mult_demo_teacher.yaml" else common[:-1]
        cfg = load_mult_config(CONFIGS / recipe, [*overrides, *(["loss.nce_k=8"] if "crd" in recipe else [])])
        summary = train_mult(cfg)
        run = tmp_path / cfg["name"]
        assert summary["epochs_done"] == 2 and summary["finished"]
        assert (run / "model_best.safetensors").is_file() and (run / "metrics.csv").is_file()
        result = evaluate_mult_run(run)
        assert 0.0 <= result["metrics"]["acc7"] <= 1.0 and result["latency"]["latency_ms"] > 0
        runs.append(run)
    header = (runs[2] / "metrics.csv").read_text().splitlines()[0]
    assert "train/edam/lv__lv" in header and "val/acc7" in header
    assert "train/crd/lv__lv__0_0" in (runs[3] / "metrics.csv").read_text().splitlines()[0]

    teacher = json.loads((runs[0] / "eval" / "results.json").read_text())
    student = json.loads((runs[2] / "eval" / "results.json").read_text())
    assert teacher["params"] > student["params"]
    paths = render_mult_table(runs, tmp_path / "report")
    md = paths["markdown"].read_text()
    for text in (
        "Without KD",
        "Complete teacher network",
        "EDAM-S on attention maps",
        "CRD on attention maps",
        "44.231",
        "41.296",
        "Majority-class baseline",
        "0.675M",
    ):
        assert text in md, text
    rows = json.loads(paths["json"].read_text())["rows"]
    assert [r["run"] for r in rows][:2] == ["mult_demo_student", "mult_demo_teacher"]

    # resuming a finished run is a no-op that keeps its summary
    cfg = load_mult_config(CONFIGS / "mult_demo_student.yaml", common)
    assert train_mult(cfg, resume=True)["epochs_done"] == 2


def test_student_recipe_with_a_wrong_teacher_mode_is_refused(tiny_data, tmp_path):
    teacher = MulT(orig_dims=(300, 74, 35), mode="v", output_dim=7, d=8, layers=1, heads=2)
    teacher.save_checkpoint(tmp_path / "model_best.safetensors")
    cfg = load_mult_config(
        CONFIGS / "edam_s.yaml",
        [*TINY, f"data.pickle={tiny_data}", f"teacher.run={tmp_path}", f"output.dir={tmp_path / 'runs'}"],
    )
    with pytest.raises(UserError, match="mode='full' teacher"):
        train_mult(cfg)
    cfg["teacher"]["run"] = str(tmp_path / "nowhere")
    with pytest.raises(UserError, match="train that run first"):
        train_mult(cfg)
