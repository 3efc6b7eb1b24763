"""`mtdistill report` on fake run folders: tables beside the paper's numbers, figures, warnings for gaps."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml

from mtdistill.cli import main
from mtdistill.evaluation import reference
from mtdistill.evaluation.report import build_report, classify, loss_ratio_curves

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def fake_run(root: Path, name: str, method: str, acc5: float | None, params: int = 13_280_961, **cfg) -> Path:
    run = root / name
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump({"name": name, "kind": "distill", "method": method, **cfg}))
    (run / "summary.json").write_text(json.dumps({"name": name, "method": method, "params": params,
                                                  "best_val_f1": 0.9, "finished": True}))  # fmt: skip
    if acc5 is not None:
        accs = {str(k): acc5 + (k - 5) for k in reference.LENGTHS}
        (run / "eval").mkdir()
        (run / "eval" / "results.json").write_text(json.dumps({"accuracy": accs, "params": params, "val_f1": 0.85}))
    with open(run / "metrics.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["epoch", "step", "lr", "train/loss", "val/loss", "val/f1", "val/fitnets", "val/last_mtd/cad"])
        for epoch, (bce, fit) in enumerate([(0.8, 2.0), (0.4, 1.9), (0.2, 1.8)]):
            w.writerow([epoch, epoch * 10 + 5, 1e-3, 0.5, "", "", "", ""])  # a training row: no val values
            w.writerow([epoch, epoch * 10 + 9, "", "", bce, 0.7, fit, 0.1])
    return run


def test_method_names_map_to_the_papers_rows():
    assert reference.table1_row("MTD (UW-25D)") == "MTD"
    assert reference.table1_row("MiniLM*") == "MiniLM*"
    assert reference.table1_row("BCE") == "L_BCE"
    assert reference.table2_row("NMTD F4 CAD") == "NMTD w/o L_VR"
    assert reference.table2_row("NMTD F4 VR") == "NMTD w/o L_CAD"
    assert reference.table2_row("NMTD F4 CAD+VR") == "NMTD"
    assert classify("NMTD F4 CAD+VR") == {"table2"}
    assert classify("AV3") == {"fig3"}
    assert classify("MTD (UW-25D)") == {"table1", "fig3"}
    assert classify("BCE") == {"table1", "table2", "fig3"}
    assert classify("anything", table="fig3") == {"fig3"}
    # the paper's own consistency: MTD beats SyncNet and PM by 15.65 and 3.35 points at K = 5 (section 4.2)
    assert reference.TABLE1["MTD"][5] - reference.SOTA["SyncNet"]["acc"][5] == pytest.approx(15.65)
    assert reference.TABLE1["MTD"][5] - reference.SOTA["PM"]["acc"][5] == pytest.approx(3.35)


def test_loss_ratio_is_each_validation_loss_over_its_max(tmp_path):
    run = fake_run(tmp_path, "r", "MTD (UW-25D)", 80.0)
    curves = loss_ratio_curves(run / "metrics.csv")
    assert set(curves) == {"loss", "fitnets"}  # f1 and per-term sub-columns are not curves
    epochs, ratio = curves["loss"]
    assert epochs == [0, 1, 2] and ratio == pytest.approx([1.0, 0.5, 0.25])
    assert curves["fitnets"][1] == pytest.approx([1.0, 0.95, 0.9])


def test_report_writes_tables_and_figures_and_warns_on_gaps(tmp_path, capsys):
    runs = tmp_path / "runs"
    fake_run(runs, "mtd", "MTD (UW-25D)", 80.0)
    fake_run(runs, "kd", "KD", 70.0)
    fake_run(runs, "bce", "BCE", 60.0)
    fake_run(runs, "f4cad", "NMTD F4 CAD", 65.0)
    fake_run(runs, "av1", "AV1", 66.0)
    fake_run(runs, "teacher", "VocaLiST (demo)", 85.0, params=80_106_561)
    fake_run(runs, "noeval", "RKD", None)
    out = tmp_path / "report"
    assert main(["report", str(runs), "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "warning:" in err and "noeval" in err and "results.json" in err

    for name in ("fig2_params_vs_accuracy.png", "fig3_layer_selection.png", "fig4_loss_ratio.png"):
        assert (out / name).read_bytes()[:8] == PNG_MAGIC
    table1 = json.loads((out / "table1.json").read_text())
    ours_mtd = next(r for r in table1 if r["source"] == "ours (mtd)")
    assert ours_mtd["5"] == 80.0 and ours_mtd["15"] == 90.0
    paper_mtd = table1[table1.index(ours_mtd) + 1]  # the paper's row sits right below ours
    assert paper_mtd == {"method": "MTD", "source": "paper", **{str(k): v for k, v in reference.TABLE1["MTD"].items()}}
    assert {r["method"] for r in table1 if r["source"] == "paper"} == set(reference.TABLE1)  # all paper rows shown
    assert not any("f4cad" in r["source"] or "av1" in r["source"] for r in table1)

    table2 = json.loads((out / "table2.json").read_text())
    ours_cad = next(r for r in table2 if r["source"] == "ours (f4cad)")
    assert ours_cad["acc5"] == 65.0 and ours_cad["val_f1"] == pytest.approx(85.0)
    assert table2[table2.index(ours_cad) + 1] == {"loss": "NMTD w/o L_VR", "source": "paper", "val_f1": 91.78,
                                                  "acc5": 83.55}  # fmt: skip
    fig3 = (out / "fig3.csv").read_text()
    assert fig3.splitlines()[1:] == ["BCE,60.0000", "AV1,66.0000", "UW-25D,80.0000"]  # the paper's order
    md = (out / "report.md").read_text()
    assert "| MTD | paper | 91.45 | 95.75 | 97.99 | 98.95 | 99.46 | 99.68 |" in md
    assert "SyncNet, PM" in md and "not given in the paper" in md
    assert "## Warnings" in md


def test_report_on_nothing_warns_without_crashing(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    result = build_report([empty, tmp_path / "missing"], tmp_path / "out")
    assert len(result["warnings"]) >= 2 and result["runs"] == []
    assert (tmp_path / "out" / "table1.md").is_file()  # the paper rows alone
    assert (tmp_path / "out" / "fig2_params_vs_accuracy.png").read_bytes()[:8] == PNG_MAGIC
