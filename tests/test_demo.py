"""The README's main job, end to end, at its --fast scale (a few minutes on 2 CPU cores)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_demo_fast_runs_end_to_end(tmp_path):
    out = tmp_path / "demo"
    proc = subprocess.run(
        [sys.executable, "-m", "mtdistill", "demo", "--fast", "--out", str(out)],
        cwd=tmp_path, capture_output=True, text=True, timeout=1800,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "demo_summary.json").read_text())
    assert set(summary["runs"]) == {"demo_teacher", "demo_mtd", "demo_bce"}
    for run in summary["runs"].values():
        results = json.loads((Path(run) / "eval" / "results.json").read_text())
        assert set(results["accuracy"]) == {"5", "7", "9", "11", "13", "15"}
        assert (Path(run) / "model_best.safetensors").is_file()
    table = (out / "report" / "table1.md").read_text()
    assert "MTD (UW-25D)" in table and "ours (demo_bce)" in table
    for fig in ("fig2_params_vs_accuracy.png", "fig4_loss_ratio.png"):
        assert (out / "report" / fig).stat().st_size > 1000
    assert summary["sync"]["true_offset"] == 4 and isinstance(summary["sync"]["offset_frames"], int)
    assert summary["sync"]["model"] in {"demo_mtd", "demo_bce"}  # the better student by the protocol
    assert f"sync with {summary['sync']['model']} " in proc.stdout
    assert "on sync_check_offset+4.mp4: offset" in proc.stdout
    # the teacher's front ends are warm-started from the committed tiny model (docs/training.md)
    assert "trained_tiny.safetensors" in (Path(summary["runs"]["demo_teacher"]) / "config.yaml").read_text()
    assert "model.init_from: 176 of 377 tensors" in proc.stderr


def test_demo_teacher_warm_start_is_in_the_recipe_and_a_missing_file_is_one_clear_error(tmp_path, monkeypatch):
    from mtdistill.commands import demo
    from mtdistill.core.errors import UserError

    cfg = demo._recipe("demo_teacher", tmp_path, demo.FAST, 0, 1)
    assert cfg["model"]["init_from"] == str(REPO / demo.WARM_START) and cfg["data"]["batch_size"] == 16
    assert not demo._recipe("demo_teacher", tmp_path, demo.FAST, 0, 1, warm_start=False)["model"]["init_from"]
    assert not demo._recipe("demo_mtd", tmp_path, demo.FAST, 0, 1)["model"]["init_from"]  # students: random
    monkeypatch.setattr(demo, "WARM_START", "tests/data/no_such_model.safetensors")
    with pytest.raises(UserError, match="missing from this checkout; restore it with git or use --from-scratch"):
        demo._recipe("demo_teacher", tmp_path, demo.FAST, 0, 1)
