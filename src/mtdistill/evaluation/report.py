"""`mtdistill report`: the paper's Table 1, Table 2 and Fig. 2-4 rebuilt from run folders, beside the paper's numbers.

A run folder (docs/internal_api.md) gives config.yaml (name, method, optional ``table``), eval/results.json (from
``mtdistill evaluate``), summary.json and metrics.csv. Anything missing becomes a warning, never a crash.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mtdistill.evaluation import figures, reference
from mtdistill.evaluation.results import markdown_table, write_csv, write_json

LENGTHS = reference.LENGTHS
TABLES = ("table1", "table2", "fig3")


@dataclass
class Run:
    """What the report reads from one run folder."""

    path: Path
    name: str
    method: str
    tables: set[str]
    results: dict | None = None
    summary: dict | None = None
    config: dict = field(default_factory=dict)

    def accuracy(self, k: int) -> float | None:
        if self.results is None:
            return None
        return self.results.get("accuracy", {}).get(str(k))

    @property
    def params(self) -> int | None:
        if self.results and self.results.get("params"):
            return int(self.results["params"])
        if self.summary and self.summary.get("params"):
            return int(self.summary["params"])
        return None

    @property
    def val_f1(self) -> float | None:
        """Validation F1 in %: the evaluation's fixed-pair F1, else the training's best."""
        for src, key in ((self.results, "val_f1"), (self.summary, "best_val_f1")):
            v = (src or {}).get(key)
            if v is not None and not (isinstance(v, float) and math.isnan(v)):
                return 100.0 * v if v <= 1.0 else float(v)
        return None


@dataclass
class Report:
    runs: list[Run] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def _read_json(path: Path, warnings: list[str], what: str) -> dict | None:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        warnings.append(f"{path}: unreadable {what} ({exc}); ignored")
        return None


def classify(method: str, table: Any = None) -> set[str]:
    """Which tables a run belongs to: the config's ``table`` key wins, else the method name decides."""
    if table:
        wanted = {table} if isinstance(table, str) else set(table)
        return {t for t in wanted if t in TABLES}
    tables = set()
    if reference.table2_row(method) is not None:
        tables.add("table2")
    if reference.is_fig3_method(method) or reference.is_fig3_method(reference.fig3_label(method)):
        tables.add("fig3")
    if reference.table1_row(method) is not None or not tables:
        tables.add("table1")
    if reference.table2_row(method) not in (None, "L_BCE"):
        tables.discard("table1")  # the ablation rows (NMTD F4 CAD / VR / CAD+VR) are not Table 1 methods
    return tables


def load_run(path: Path, warnings: list[str]) -> Run | None:
    cfg_path = path / "config.yaml"
    try:
        cfg = yaml.safe_load(cfg_path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        warnings.append(f"{path}: config.yaml unreadable ({exc}); run skipped")
        return None
    name = str(cfg.get("name") or path.name)
    method = str(cfg.get("method") or name)
    run = Run(path, name, method, classify(method, cfg.get("table")), config=cfg)
    run.results = _read_json(path / "eval" / "results.json", warnings, "results")
    run.summary = _read_json(path / "summary.json", warnings, "summary")
    if run.results is None:
        warnings.append(f"{path}: no eval/results.json; run `mtdistill evaluate {path} DATA` (left out of the tables)")
    return run


def find_runs(paths: list[str | Path]) -> Report:
    """Run folders among ``paths``; a folder without config.yaml is searched one level down."""
    report = Report()
    seen: set[Path] = set()
    for p in map(Path, paths):
        if not p.is_dir():
            report.warnings.append(f"{p}: not a folder; ignored")
            continue
        candidates = [p] if (p / "config.yaml").is_file() else sorted(c for c in p.iterdir() if c.is_dir())
        found = [c for c in candidates if (c / "config.yaml").is_file()]
        if not found:
            report.warnings.append(f"{p}: no run folder (config.yaml) here or one level down; ignored")
        for c in found:
            if c.resolve() in seen:
                continue
            seen.add(c.resolve())
            run = load_run(c, report.warnings)
            if run is not None:
                report.runs.append(run)
    return report


# ---------------------------------------------------------------------------------------------------- tables


def _ours_then_paper(
    runs: list[Run],
    table: str,
    key: str,
    ours: Callable[[Run], dict],
    paper_row: Callable[[str], str | None],
    paper: Mapping[str, Mapping],
) -> list[dict]:
    """Each of our runs that belongs to ``table``, followed by the paper's row for its method (once), then the
    paper's remaining rows in the paper's order; ``key`` names the method column."""
    rows, used = [], set()
    for run in runs:
        if table not in run.tables or run.results is None:
            continue
        rows.append({key: run.method, "source": f"ours ({run.name})", **ours(run)})
        ref = paper_row(run.method)
        if ref is not None and ref not in used:
            used.add(ref)
            rows.append({key: ref, "source": "paper", **paper[ref]})
    return rows + [{key: ref, "source": "paper", **values} for ref, values in paper.items() if ref not in used]


def table1_rows(runs: list[Run]) -> list[dict]:
    """Table 1: accuracy (%) per K for each of our runs, each followed by the paper's row for that method."""
    return _ours_then_paper(
        runs, "table1", "method", lambda run: {k: run.accuracy(k) for k in LENGTHS}, reference.table1_row,
        reference.TABLE1,
    )  # fmt: skip


def table2_rows(runs: list[Run]) -> list[dict]:
    """Table 2 (poster ablation, NMTD on fusion layer 4): validation F1 and K=5 accuracy, ours and the paper's."""
    return _ours_then_paper(
        runs, "table2", "loss", lambda run: {"val_f1": run.val_f1, "acc5": run.accuracy(5)}, reference.table2_row,
        reference.TABLE2,
    )  # fmt: skip


def fig3_bars(runs: list[Run]) -> list[tuple[str, float]]:
    """(label, K=5 accuracy) per run that belongs to Fig. 3, in the paper's order (BCE, F1..VA4, weightings)."""
    bars = [(reference.fig3_label(r.method), r.accuracy(5)) for r in runs if "fig3" in r.tables]
    order = {name: i for i, name in enumerate(reference.FIG3_ORDER)}
    return sorted(((lab, acc) for lab, acc in bars if acc is not None), key=lambda b: order.get(b[0], len(order)))


MAX_CURVES = 8


def loss_ratio_curves(metrics_csv: Path, keep: set[str] | None = None) -> dict[str, tuple[list[int], list[float]]]:
    """Fig. 4: each logged validation loss per epoch divided by its maximum over the epochs (paper Fig. 4).

    The last logged value of an epoch counts; accuracy / F1 columns and per-term sub-columns (val/<loss>/<term>) are
    left out. With more than 8 curves only ``loss`` (BCE), ``total`` (the trained loss) and ``keep`` remain.
    """
    per_epoch: dict[str, dict[int, float]] = {}
    with open(metrics_csv, newline="") as fh:
        for row in csv.DictReader(fh):
            try:
                epoch = int(float(row.get("epoch") or "nan"))
            except ValueError:
                continue
            for col, value in row.items():
                if not col or not col.startswith("val/") or col.count("/") > 1 or "f1" in col or "acc" in col:
                    continue
                try:
                    v = float(value)
                except (TypeError, ValueError):
                    continue
                if math.isfinite(v):
                    per_epoch.setdefault(col[4:], {})[epoch] = v
    curves = {}
    for name, values in per_epoch.items():
        epochs = sorted(values)
        peak = max(abs(values[e]) for e in epochs)
        if peak > 0:
            curves[name] = (epochs, [values[e] / peak for e in epochs])
    if len(curves) > MAX_CURVES:
        wanted = {"loss", "total", *(keep or ())}
        curves = {k: v for k, v in curves.items() if k in wanted}
    return curves


# ---------------------------------------------------------------------------------------------------- writing


def _fmt_rows(rows: list[dict], keys: list[str]) -> list[list[Any]]:
    return [[r.get(k) for k in keys] for r in rows]


def build_report(paths: list[str | Path], out: str | Path) -> dict:
    """Write table1/table2 (.md/.csv/.json), fig2-4 (.png) and report.md into ``out``; return what was written."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rep = find_runs(paths)
    written: dict[str, str] = {}
    md = ["# Report: the paper's tables and figures from our runs", ""]

    t1 = table1_rows(rep.runs)
    keys1 = ["method", "source", *LENGTHS]
    t1_md = markdown_table(["Method", "Source", *[f"K={k}" for k in LENGTHS]], _fmt_rows(t1, keys1))
    write_csv(out / "table1.csv", [{str(k): v for k, v in r.items()} for r in t1], [str(k) for k in keys1])
    write_json(out / "table1.json", [{str(k): v for k, v in r.items()} for r in t1])
    (out / "table1.md").write_text("# Table 1: accuracy (%) by distillation method and context length K\n\n" + t1_md)
    md += ["## Table 1: distillation methods (accuracy %, LRS2-style protocol)", "", t1_md]

    t2 = table2_rows(rep.runs)
    keys2 = ["loss", "source", "val_f1", "acc5"]
    t2_md = markdown_table(["Loss", "Source", "Val F1 (%)", "Acc K=5 (%)"], _fmt_rows(t2, keys2))
    write_csv(out / "table2.csv", t2, keys2)
    write_json(out / "table2.json", t2)
    (out / "table2.md").write_text("# Table 2: NMTD ablation on fusion layer 4\n\n" + t2_md)
    md += ["## Table 2: CAD / VR ablation (NMTD, fusion layer 4, uniform weighting)", "", t2_md]

    points = [(r.name, r.params / 1e6, {k: r.accuracy(k) for k in LENGTHS}) for r in rep.runs if r.params and r.results]
    for r in rep.runs:
        if r.results is not None and not r.params:
            rep.warnings.append(f"{r.path}: no parameter count; left out of Fig. 2")
    figures.fig2_params_vs_accuracy(points, out / "fig2_params_vs_accuracy.png")
    unknown = [n for n, ref in reference.SOTA.items() if ref["params_m"] is None]
    md += [
        "## Fig. 2: parameters vs accuracy",
        "",
        "![Fig. 2](fig2_params_vs_accuracy.png)",
        "",
        f"Reference points from the paper. Parameter counts of {', '.join(unknown)} are not given in the paper: "
        "they are drawn as horizontal lines (accuracy only), not placed on the x axis. AVST's size "
        f"({reference.SOTA['AVST']['params_m']} M) is {reference.SOTA['AVST']['params_note']}.",
        "",
    ]

    bars = fig3_bars(rep.runs)
    if bars:
        figures.fig3_layer_selection(bars, out / "fig3_layer_selection.png")
        write_csv(out / "fig3.csv", [{"label": lab, "acc5": acc} for lab, acc in bars], ["label", "acc5"])
        md += ["## Fig. 3: layer selection (K = 5)", "", "![Fig. 3](fig3_layer_selection.png)", ""]
    else:
        rep.warnings.append("no evaluated Fig. 3 run (BCE, F1..F4, AV1..AV4, VA1..VA4, Uniform, AW/UW); Fig. 3 skipped")

    curves = {}
    for r in rep.runs:
        path = r.path / "metrics.csv"
        if not path.is_file():
            rep.warnings.append(f"{r.path}: no metrics.csv; left out of Fig. 4")
            continue
        extras = {
            str(e.get("label") or e.get("name")) for e in r.config.get("val_extra_losses") or [] if isinstance(e, dict)
        }
        c = loss_ratio_curves(path, extras)
        if c:
            curves[r.name] = c
        else:
            rep.warnings.append(f"{r.path}: metrics.csv has no validation losses; left out of Fig. 4")
    if curves:
        figures.fig4_loss_ratio(curves, out / "fig4_loss_ratio.png")
        md += [
            "## Fig. 4: validation loss ratio (loss / its max over epochs)",
            "",
            "![Fig. 4](fig4_loss_ratio.png)",
            "",
        ]

    if rep.warnings:
        md += ["## Warnings", "", *[f"- {w}" for w in rep.warnings], ""]
    (out / "report.md").write_text("\n".join(md))
    for p in sorted(out.iterdir()):
        if p.is_file():
            written[p.name] = str(p)
    return {"runs": [r.name for r in rep.runs], "warnings": rep.warnings, "files": written}
