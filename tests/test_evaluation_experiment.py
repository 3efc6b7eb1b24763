"""`mtdistill experiment`: grid parsing, cell states, and resuming (finished cells skipped, trained ones evaluated)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from mtdistill.cli import main
from mtdistill.core.errors import UserError
from mtdistill.models.vocalist import VocaLiST
from mtdistill.workflows.experiment import cell_state, read_grid, run_experiment
from test_evaluation_cli import MICRO, write_store  # tests/ is on sys.path (rootdir import mode)

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def finished_run(run: Path, method: str, with_eval: bool) -> None:
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump({"name": run.name, "kind": "distill", "method": method}))
    (run / "summary.json").write_text(json.dumps({"name": run.name, "finished": True, "params": 1}))
    torch.manual_seed(0)
    VocaLiST(MICRO, "mtd").save_checkpoint(run / "model_best.safetensors")
    if with_eval:
        (run / "eval").mkdir()
        (run / "eval" / "results.json").write_text(json.dumps({"accuracy": {"5": 50.0}, "params": 1}))


def test_grid_parsing_and_errors(tmp_path):
    grid = tmp_path / "grid.yaml"
    grid.write_text(yaml.safe_dump({
        "name": "g", "overrides": {"trainer.epochs": 1},
        "cells": ["demo_bce.yaml", {"recipe": "demo_kd.yaml", "overrides": ["optim.lr=0.1"]}],
    }))  # fmt: skip
    settings, cells = read_grid(grid)
    assert settings["name"] == "g" and [c.recipe.name for c in cells] == ["demo_bce.yaml", "demo_kd.yaml"]
    assert cells[0].overrides == ["trainer.epochs=1"] and cells[1].overrides == ["trainer.epochs=1", "optim.lr=0.1"]
    grid.write_text(yaml.safe_dump({"cells": ["no_such_recipe.yaml"]}))
    with pytest.raises(UserError, match="not found"):
        read_grid(grid)
    grid.write_text(yaml.safe_dump({"name": "empty"}))
    with pytest.raises(UserError, match="non-empty list"):
        read_grid(grid)


def test_resume_skips_finished_cells_and_evaluates_trained_ones(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    store = write_store(tmp_path / "store")
    runs = tmp_path / "runs"
    finished_run(runs / "demo_bce", "BCE", with_eval=False)  # trained, not evaluated
    finished_run(runs / "demo_kd", "KD", with_eval=True)  # done
    grid = tmp_path / "grid.yaml"
    grid.write_text(yaml.safe_dump({
        "name": "mini", "data": str(store), "overrides": [f"output.dir={runs}", f"data.store={store}"],
        "evaluate": {"lengths": [5, 7], "max_utterances": 1, "val_f1": False},
        "cells": [str(CONFIGS / "demo_bce.yaml"), str(CONFIGS / "demo_kd.yaml")],
    }))  # fmt: skip
    assert [cell_state(runs / n) for n in ("demo_bce", "demo_kd")] == ["trained", "done"]
    assert main(["experiment", str(grid), "--dry-run"]) == 0
    assert "trained" in capsys.readouterr().out and not (runs / "demo_bce" / "eval").exists()

    statuses = run_experiment(grid)
    assert [s.get("state") for s in statuses[:2]] == ["done", "done"]
    res = json.loads((runs / "demo_bce" / "eval" / "results.json").read_text())
    assert set(res["accuracy"]) == {"5", "7"} and res["n_utterances"] == 1
    assert json.loads((runs / "demo_kd" / "eval" / "results.json").read_text())["accuracy"] == {"5": 50.0}  # untouched
    report = Path(statuses[-1]["report"])
    assert report == runs / "mini_report" / "report.md" and "ours (demo_bce)" in report.read_text()

    before = (runs / "demo_bce" / "eval" / "results.json").stat().st_mtime_ns
    run_experiment(grid)  # everything finished: nothing is trained or evaluated again
    assert (runs / "demo_bce" / "eval" / "results.json").stat().st_mtime_ns == before
