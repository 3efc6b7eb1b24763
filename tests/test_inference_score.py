"""`score`: one CSV row per video and track, error rows for unreadable files, resume, aggregates JSON."""

from __future__ import annotations

import csv
import json
import shutil

import pytest
import torch

from mtdistill.cli import main
from mtdistill.data.synthetic import make_talking_video
from mtdistill.inference.score import COLUMNS, summary_path
from mtdistill.models import VocaLiST


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("score")
    make_talking_video(root / "a.mp4", seed=21, duration_s=1.6, offset_frames=0)
    (root / "sub").mkdir()
    make_talking_video(root / "sub" / "b.mp4", seed=22, duration_s=1.6, offset_frames=3)
    (root / "broken.mp4").write_bytes(b"definitely not a video" * 50)
    (root / "notes.txt").write_text("ignored: not a video extension")
    torch.manual_seed(0)
    ckpt = VocaLiST.tiny(preset="mtd").save_checkpoint(root.parent / "tiny.safetensors")
    return root, ckpt


def rows_of(path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_score_rows_errors_resume_and_aggregates(folder, tmp_path, capsys) -> None:
    root, ckpt = folder
    out = tmp_path / "scores.csv"
    # first pass: only a.mp4 and the broken file
    first = tmp_path / "first"
    first.mkdir()
    shutil.copy(root / "a.mp4", first / "a.mp4")
    shutil.copy(root / "broken.mp4", first / "broken.mp4")
    assert main(["score", str(first), "--csv", str(out), "--checkpoint", str(ckpt), "--stride", "5"]) == 0
    rows = rows_of(out)
    assert list(rows[0]) == list(COLUMNS)
    by_video = {r["video"].rsplit("/", 1)[-1]: r for r in rows}
    assert set(by_video) == {"a.mp4", "broken.mp4"}
    assert by_video["broken.mp4"]["error"] and not by_video["broken.mp4"]["verdict"]
    good = by_video["a.mp4"]
    assert good["error"] == "" and good["verdict"] in {"in_sync", "out_of_sync", "undetermined"}
    assert abs(float(good["offset_ms"]) - int(good["offset_frames"]) * 40.0) <= 40.0  # sub-frame
    assert good["p_value"] == "" and good["n_segments"] == "1"  # 1.6 s: too short for a null band
    # the row is what `sync` reports for the same file, model and stride (a separate run of the CLI)
    capsys.readouterr()
    assert main(["sync", str(first / "a.mp4"), "--checkpoint", str(ckpt), "--stride", "5", "--json"]) == 0
    track = json.loads(capsys.readouterr().out)["tracks"][0]
    for key in ("track", "start_frame", "end_frame", "n_windows", "offset_frames"):
        assert int(good[key]) == track[key], key
    assert good["verdict"] == track["verdict"]
    assert float(good["confidence"]) == pytest.approx(track["confidence"], abs=1e-4)
    assert float(good["offset_ms"]) == pytest.approx(track["offset_ms"], abs=1e-3)
    # second pass over a folder that also holds them: nothing is scored twice, b.mp4 is added (2 workers)
    shutil.copy(root / "sub" / "b.mp4", first / "b.mp4")
    assert (
        main(["score", str(first), "--csv", str(out), "--checkpoint", str(ckpt), "--stride", "5", "--workers", "2"])
        == 0
    )
    rows = rows_of(out)
    names = [r["video"].rsplit("/", 1)[-1] for r in rows]
    assert sorted(names) == ["a.mp4", "b.mp4", "broken.mp4"]
    summary = json.loads(summary_path(out).read_text())
    assert summary["csv"] == str(out)
    assert summary["videos"] == 3 and summary["videos_failed"] == 1 and summary["tracks"] == 2
    # the aggregates, recomputed here from the rows
    ok = [r for r in rows if not r["error"]]
    offsets = [int(r["offset_frames"]) for r in ok]
    assert summary["mean_offset_frames"] == pytest.approx(sum(offsets) / 2, abs=1e-4)
    assert summary["mean_abs_offset_frames"] == pytest.approx(sum(abs(o) for o in offsets) / 2, abs=1e-4)
    verdicts = [r["verdict"] for r in ok]
    for verdict in ("in_sync", "out_of_sync", "undetermined"):
        assert summary[f"pct_{verdict}"] == pytest.approx(50.0 * verdicts.count(verdict)), verdict
    assert summary["mean_confidence"] == pytest.approx(sum(float(r["confidence"]) for r in ok) / 2, abs=1e-4)
    assert summary["lse_c_mean"] is None and summary["lse_d_mean"] is None  # VocaLiST model: no LSE columns
    printed = capsys.readouterr().out
    assert "| pct_in_sync |" in printed and "mean_confidence" in printed


def test_score_errors(folder, tmp_path, capsys) -> None:
    root, ckpt = folder
    assert main(["score", str(tmp_path / "nope"), "--csv", str(tmp_path / "x.csv"), "--checkpoint", str(ckpt)]) == 2
    assert "is not a folder" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["score", str(empty), "--csv", str(tmp_path / "x.csv"), "--checkpoint", str(ckpt)]) == 2
    assert "no video files" in capsys.readouterr().err
    assert main(["score", str(root), "--csv", str(tmp_path / "x.csv")]) == 2  # no checkpoint
    assert "mtdistill weights" in capsys.readouterr().err
