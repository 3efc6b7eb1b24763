"""A grid of recipes run end to end: train / distill, evaluate, report; resumable cell by cell.

Grid YAML::

    name: table1_demo                 # the report goes to <output dir of the first cell>/<name>_report (or `report:`)
    data: demo_out/store              # store to evaluate on (default: each recipe's data.store)
    split: test
    overrides: [data.store=demo_out/store]   # applied to every cell (list of KEY=VALUE or a mapping)
    evaluate: {lengths: [5, 7, 9, 11, 13, 15], max_utterances: 20, fixed_edges: false, val_f1: true}
    cells:                            # also accepted: runs, recipes, grid
      - configs/demo_teacher.yaml     # a recipe file ...
      - recipe: configs/demo_kd.yaml  # ... or a recipe + its own overrides
        overrides: {trainer.epochs: 2}

A cell is finished when its run has summary.json with finished: true and eval/results.json; finished cells are
skipped, a trained-but-unevaluated cell is only evaluated, and an interrupted one resumes from its last checkpoint.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mtdistill.core.errors import UserError
from mtdistill.evaluation.report import build_report
from mtdistill.evaluation.store_eval import evaluate_to_folder
from mtdistill.training.config import load_config
from mtdistill.training.run import run_recipe

CELL_KEYS = ("cells", "runs", "recipes", "grid")


@dataclass
class Cell:
    recipe: Path
    overrides: list[str] = field(default_factory=list)


def _overrides(value: Any, where: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, dict):
        return [f"{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in value.items()]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return list(value)
    raise UserError(f"{where}: overrides must be a list of KEY=VALUE strings or a mapping")


def _find_recipe(name: str, base: Path) -> Path:
    for candidate in (Path(name), base / name, Path("configs") / name):
        if candidate.is_file():
            return candidate
    raise UserError(f"recipe {name} not found (looked in ., {base} and configs/); fix the path in the grid file")


def read_grid(path: str | Path) -> tuple[dict, list[Cell]]:
    """Parse a grid YAML into its settings and its cells."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"experiment file {path} not found; e.g. configs/experiments/table1_demo.yaml")
    try:
        grid = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise UserError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if isinstance(grid, list):
        grid = {"cells": grid}
    key = next((k for k in CELL_KEYS if k in grid), None)
    if key is None or not isinstance(grid[key], list) or not grid[key]:
        raise UserError(f"{path}: needs a non-empty list under one of {', '.join(CELL_KEYS)}")
    common = _overrides(grid.get("overrides"), f"{path}: overrides")
    cells = []
    for i, item in enumerate(grid[key]):
        if isinstance(item, str):
            cells.append(Cell(_find_recipe(item, path.parent), common))
        elif isinstance(item, dict) and "recipe" in item:
            own = _overrides(item.get("overrides"), f"{path}: cell {i} overrides")
            cells.append(Cell(_find_recipe(str(item["recipe"]), path.parent), common + own))
        else:
            raise UserError(f"{path}: cell {i} must be a recipe path or {{recipe: PATH, overrides: ...}}")
    grid.setdefault("name", path.stem)
    return grid, cells


def cell_state(run_dir: Path) -> str:
    """'done' (trained and evaluated), 'trained' (needs evaluation) or 'todo' (needs (more) training)."""
    summary = run_dir / "summary.json"
    finished = False
    if summary.is_file():
        try:
            finished = bool(json.loads(summary.read_text()).get("finished"))
        except (OSError, json.JSONDecodeError):
            finished = False
    if not finished:
        return "todo"
    return "done" if (run_dir / "eval" / "results.json").is_file() else "trained"


def run_experiment(path: str | Path, *, dry_run: bool = False, device: str = "auto", report: bool = True) -> list[dict]:
    """Run every cell of a grid (skipping finished ones), evaluate, then write the report. Returns cell statuses."""
    grid, cells = read_grid(path)
    ev = dict(grid.get("evaluate") or {})
    lengths = tuple(int(k) for k in ev.get("lengths", (5, 7, 9, 11, 13, 15)))
    statuses, run_dirs = [], []
    for cell in cells:
        cfg = load_config(cell.recipe, cell.overrides)
        run_dir = Path(cfg["output"]["dir"]) / cfg["name"]
        state = cell_state(run_dir)
        statuses.append({"recipe": str(cell.recipe), "run": str(run_dir), "state": state})
        run_dirs.append(run_dir)
        if dry_run or state == "done":
            continue
        if state == "todo":
            print(f"experiment: training {cfg['name']} ({cell.recipe})", file=sys.stderr)
            run_recipe(cfg, resume=None)
        if cell_state(run_dir) == "todo":
            raise UserError(f"{run_dir}: training stopped before its last epoch; rerun the experiment to resume")

        print(f"experiment: evaluating {cfg['name']}", file=sys.stderr)
        evaluate_to_folder(
            run_dir, grid.get("data") or cfg["data"]["store"], split=grid.get("split", "test"), lengths=lengths,
            official_edges=not ev.get("fixed_edges", False), max_utterances=ev.get("max_utterances"), device=device,
            val_f1=bool(ev.get("val_f1", True)),
        )  # fmt: skip
        statuses[-1]["state"] = cell_state(run_dir)
    if report and not dry_run:
        out = Path(grid.get("report") or (run_dirs[0].parent / f"{grid['name']}_report"))
        result = build_report(run_dirs, out)
        for warning in result["warnings"]:
            print(f"warning: {warning}", file=sys.stderr)
        statuses.append({"report": str(out / "report.md")})
    return statuses
