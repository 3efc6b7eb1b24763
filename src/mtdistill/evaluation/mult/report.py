"""The seed paper's Table 1 (CMU-MOSEI, unaligned) rendered from our runs, paper numbers beside ours.

Each run names its row with ``row:`` in the recipe (ids in PAPER_ROWS). Teacher runs are placed in every section
whose teacher they are (the complete teacher heads sections 1 and 5). Parameter counts and latency are ours,
measured by ``mtdistill mult evaluate``; the paper's 1.802M / 0.675M / 29 ms are shown, never asserted.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mtdistill.core.errors import UserError
from mtdistill.evaluation.mult.evaluate import evaluate_mult_run


@dataclass(frozen=True)
class PaperRow:
    row: str
    section: int  # 0 = the first row (student without KD), else the configuration number
    network: str  # "Student" | "Teacher"
    description: str
    acc: float
    f1: float


SECTIONS = {
    0: "",
    1: "KD from the Complete Teacher Network",
    2: "KD from Video Branch",
    3: "KD from Language Branch",
    4: "KD from Audio Branch",
    5: "KD from Language and Audio Branches",
}
PAPER_ROWS: tuple[PaperRow, ...] = (
    PaperRow("student_nokd", 0, "Student", "Without KD", 41.296, 32.142),
    PaperRow("teacher_full", 1, "Teacher", "Complete Teacher Network", 49.779, 48.817),
    PaperRow("c1_edam_s", 1, "Student", "EDAM-S on Attention Maps", 44.137, 36.286),
    PaperRow("teacher_v", 2, "Teacher", "Video Branch", 49.621, 48.542),
    PaperRow("c2_crd_final", 2, "Student", "CRD on final linear layer", 43.711, 33.281),
    PaperRow("c2_crd_penultimate", 2, "Student", "CRD on penultimate linear layer", 42.576, 35.565),
    PaperRow("c2_crd_attention", 2, "Student", "CRD on attention maps", 43.837, 35.912),
    PaperRow("teacher_l", 3, "Teacher", "Language Branch", 49.217, 47.250),
    PaperRow("c3_crd_final", 3, "Student", "CRD on final linear layer", 43.154, 32.863),
    PaperRow("c3_crd_penultimate", 3, "Student", "CRD on penultimate linear layer", 42.901, 34.467),
    PaperRow("teacher_a", 4, "Teacher", "Audio Branch", 49.217, 47.232),
    PaperRow("c4_crd_final", 4, "Student", "CRD on final linear layer", 43.584, 33.260),
    PaperRow("c4_crd_penultimate", 4, "Student", "CRD on penultimate linear layer", 43.232, 35.115),
    PaperRow("teacher_full", 5, "Teacher", "Complete teacher network", 49.779, 48.817),
    PaperRow("c5_crd_final", 5, "Student", "CRD on final linear layer", 42.731, 32.513),
    PaperRow("c5_crd_penultimate", 5, "Student", "CRD on penultimate linear layer", 43.732, 35.632),
    PaperRow("c5_crd_post_attention", 5, "Student", "CRD on post-attention linear layers", 43.837, 35.711),
    PaperRow("c5_crd_attention", 5, "Student", "CRD on attention maps", 44.031, 36.110),
    PaperRow("c5_edam_s", 5, "Student", "EDAM-S on attention maps", 44.231, 36.332),
    PaperRow("c5_edam_t", 5, "Student", "EDAM-T on attention maps", 43.993, 36.189),
)
PAPER_PARAMS = {"teacher_full": "1.802M", "c5_edam_s": "0.675M", "student_nokd": "0.675M"}
PAPER_LATENCY = {"c5_edam_s": "29 ms", "student_nokd": "29 ms", "teacher_full": "~37 ms"}
KNOWN_ROWS = sorted({r.row for r in PAPER_ROWS})


def _load(run: str | Path) -> dict[str, Any]:
    """A run's eval/results.json; evaluates the run first when it has none."""
    run = Path(run)
    path = run / "eval" / "results.json"
    if not path.is_file():
        if not (run / "model_best.safetensors").is_file():
            raise UserError(f"{run} has neither eval/results.json nor model_best.safetensors; train it first")
        return evaluate_mult_run(run)
    return json.loads(path.read_text())


def _fmt_params(n: int | None) -> str:
    return "-" if n is None else f"{n / 1e6:.3f}M"


def table_rows(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows in the paper's order; runs without a paper row come last (section "other")."""
    by_row: dict[str, list[dict[str, Any]]] = {}
    for r in results:
        by_row.setdefault(r.get("row") or "", []).append(r)
    rows = []
    for p in PAPER_ROWS:
        rows += [_row(p.section, p.network, p.description, r, p) for r in by_row.get(p.row, [])]
    for r in [x for k, v in by_row.items() if k not in KNOWN_ROWS for x in v]:
        rows.append(_row(-1, "Teacher" if r["kind"] == "teacher" else "Student", r.get("method") or r["name"], r, None))
    return rows


def _row(section: int, network: str, description: str, r: dict[str, Any] | None, p: PaperRow | None) -> dict:
    m = (r or {}).get("metrics", {})
    lat = (r or {}).get("latency") or {}
    return {
        "section": SECTIONS.get(section, "other runs"),
        "network": network,
        "description": description,
        "run": (r or {}).get("name", ""),
        "acc7": 100 * m["acc7"] if "acc7" in m else None,
        "f1_weighted": 100 * m["f1_weighted"] if "f1_weighted" in m else None,
        "f1_macro": 100 * m["f1_macro"] if "f1_macro" in m else None,
        "acc2": 100 * m["acc2"] if m.get("acc2") == m.get("acc2") and "acc2" in m else None,
        "mae": m.get("mae"),
        "corr": m.get("corr"),
        "paper_acc": p.acc if p else None,
        "paper_f1": p.f1 if p else None,
        "params": (r or {}).get("params"),
        "paper_params": PAPER_PARAMS.get(p.row) if p else None,
        "latency_ms": lat.get("latency_ms"),
        "latency_min_ms": lat.get("latency_min_ms"),
        "latency_device": f"{lat.get('device', '')} x{lat.get('threads', '')}, batch {lat.get('latency_batch', '')}"
        if lat
        else "",
        "paper_latency": PAPER_LATENCY.get(p.row) if p else None,
    }


def _num(x: float | None, fmt: str = "{:.2f}") -> str:
    return "-" if x is None else fmt.format(x)


def render_markdown(rows: list[dict[str, Any]], baseline: dict[str, Any] | None) -> str:
    head = (
        "| Network | Description | Acc7 (ours) | F1 w (ours) | F1 macro (ours) | Acc (paper) | F1 (paper) "
        "| Params (ours) | Params (paper) | Latency ms, min / median (ours) | Latency (paper) | run |"
    )
    lines = [
        "# Table 1: CMU-MOSEI (unaligned) style, ours beside the seed paper",
        "",
        "Our numbers come from the runs listed (synthetic data unless the runs used the real MulT pickle); "
        "the paper's are quoted, not reproduced.",
        "",
        head,
        "|" + "---|" * 12,
    ]
    section = None
    for r in rows:
        if r["section"] != section and r["section"]:
            lines.append(f"| **{r['section']}** |" + " |" * 11)
        section = r["section"]
        lines.append(
            f"| {r['network']} | {r['description']} | {_num(r['acc7'])} | {_num(r['f1_weighted'])} | "
            f"{_num(r['f1_macro'])} | {_num(r['paper_acc'], '{:.3f}')} | {_num(r['paper_f1'], '{:.3f}')} | "
            f"{_fmt_params(r['params'])} | {r['paper_params'] or '-'} | {_num(r['latency_min_ms'], '{:.1f}')} / "
            f"{_num(r['latency_ms'], '{:.1f}')} | "
            f"{r['paper_latency'] or '-'} | {r['run']} |"
        )
    if baseline:
        lines += [
            "",
            f"Majority-class baseline on the same test split (class {baseline['majority_class']}): "
            f"Acc7 {100 * baseline['acc7']:.2f}, F1 w {100 * baseline['f1_weighted']:.2f}, "
            f"F1 macro {100 * baseline['f1_macro']:.2f}.",
        ]
    lat = next((r["latency_device"] for r in rows if r["latency_device"]), "")
    if lat:
        lines.append(
            f"Latency: fastest and median of 20 forward passes of one batch after warm-up on {lat}; the paper's timing "
            "protocol (device, batch) is not stated."
        )
    return "\n".join(lines) + "\n"


def render_mult_table(runs: list[str | Path], out_dir: str | Path) -> dict[str, Path]:
    """Write table1.md / table1.csv / table1.json for ``runs`` into ``out_dir``; returns the paths."""
    if not runs:
        raise UserError("report needs at least one run folder")
    results = [_load(r) for r in runs]
    rows = table_rows(results)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    baseline = next((r.get("majority_baseline") for r in results if r.get("majority_baseline")), None)
    paths = {"markdown": out / "table1.md", "csv": out / "table1.csv", "json": out / "table1.json"}
    paths["markdown"].write_text(render_markdown(rows, baseline))
    with paths["csv"].open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0].keys()) if rows else ["run"])
        w.writeheader()
        w.writerows(rows)
    paths["json"].write_text(json.dumps({"rows": rows, "majority_baseline": baseline}, indent=2) + "\n")
    return paths
