"""`mtdistill evaluate` on a real packed store: outputs, agreement with the library, and one-line errors."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from mtdistill.audio import utterance_mel
from mtdistill.cli import main
from mtdistill.data import store as st
from mtdistill.evaluation import utterance_accuracy
from mtdistill.models.presets import frames_to_input
from mtdistill.models.vocalist import VocaLiST, VocaLiSTConfig

MICRO = VocaLiSTConfig(d_model=16, widths=(2, 4, 4, 8, 16))  # fast enough for CLI plumbing tests
# (uid, split, frames, valid): two good test utterances, one too short, one with a detection gap, two val
UTTERANCES = [
    ("t0", "test", 12, None),
    ("t1", "test", 16, None),
    ("t2", "test", 4, None),
    ("t3", "test", 14, 3),
    ("v0", "val", 32, None),
    ("v1", "val", 32, None),
]


def write_store(root: Path, utterances=UTTERANCES, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    (root / "shards").mkdir(parents=True)
    writer = st.ShardWriter(root / "shards" / "shard-00000.h5")
    for i, (uid, split, n, gap) in enumerate(utterances):
        frames = rng.integers(0, 256, size=(n, 48, 96, 3), dtype=np.uint8)
        valid = np.ones(n, bool)
        if gap is not None:
            valid[gap] = False
        audio = (rng.standard_normal(n * 640) * 0.2).astype(np.float32)
        writer.add(str(i), frames, valid, audio, uid=uid, split=split)
    sha = writer.close()
    side = {"id": 0, "file": "shard-00000.h5", "sha256": sha, "n_utterances": len(utterances),
            "utterances": writer.entries}  # fmt: skip
    (root / "shards" / "shard-00000.json").write_text(json.dumps(side))
    st.write_index(root, st.build_index(root))
    return root


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("evalcli")
    store = write_store(root / "store")
    run = root / "runs" / "micro"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump({"name": "micro", "kind": "distill", "method": "BCE"}))
    torch.manual_seed(0)
    VocaLiST(MICRO, "mtd").save_checkpoint(run / "model_best.safetensors")
    return {"root": root, "store": store, "run": run}


def test_evaluate_run_folder_writes_results_that_match_the_library(setup, capsys):
    run, store = setup["run"], setup["store"]
    assert main(["evaluate", str(run), str(store), "--lengths", "5,7,9", "--val-pairs", "32"]) == 0
    assert "K5=" in capsys.readouterr().out
    res = json.loads((run / "eval" / "results.json").read_text())  # default out: <run>/eval
    assert res["n_utterances"] == 2 and res["n_skipped"] == 2
    reasons = {s["uid"]: s["reason"] for s in res["skipped"]}
    assert "too short" in reasons["t2"] and "without a face" in reasons["t3"]
    assert res["protocol"]["official_edges"] is True and res["protocol"]["exclude_last_window"] is True
    assert res["params"] == VocaLiST(MICRO).num_parameters() and res["preset"] == "mtd"
    assert res["timing"]["windows"] == (16 - 5) + (12 - 5) and res["timing"]["path"] == "fast"
    assert 0.0 <= res["val_f1"] <= 1.0

    # the macro average of the library's per-utterance accuracies, in %
    model = VocaLiST.from_checkpoint(run / "model_best.safetensors")
    s = st.Store.open(store)
    per = []
    for uid in ("t0", "t1"):
        audio = s.audio(uid)
        frames = frames_to_input(s.frames(uid), "mtd")
        per.append(utterance_accuracy(model, frames, utterance_mel(audio), (5, 7, 9), n_samples=len(audio)))
    for k in (5, 7, 9):
        assert res["accuracy"][str(k)] == pytest.approx(100 * np.mean([p[k] for p in per]), abs=1e-3)

    with open(run / "eval" / "per_utterance.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["uid"] for r in rows] == ["t0", "t1", "t2", "t3"]
    assert rows[0]["n_windows"] == "7" and rows[0]["status"] == "ok" and "too short" in rows[2]["status"]
    md = (run / "eval" / "results.md").read_text()
    assert "| MTDVocaLiST | paper (LRS2 test) | 91.45 | 95.75 | 97.99 |" in md


def test_plain_loop_and_fixed_edges_options(setup, tmp_path):
    run, store = setup["run"], setup["store"]
    common = ["--lengths", "5,7", "--max-utterances", "1", "--no-val-f1"]
    assert main(["evaluate", str(run), str(store), "--out", str(tmp_path / "fast"), *common]) == 0
    assert main(["evaluate", str(run), str(store), "--out", str(tmp_path / "plain"), "--plain", *common]) == 0
    fast = json.loads((tmp_path / "fast" / "results.json").read_text())
    plain = json.loads((tmp_path / "plain" / "results.json").read_text())
    assert plain["timing"]["path"] == "plain" and fast["accuracy"] == plain["accuracy"]
    assert main(["evaluate", str(run), str(store), "--out", str(tmp_path / "fixed"), "--fixed-edges", *common]) == 0
    fixed = json.loads((tmp_path / "fixed" / "results.json").read_text())
    assert fixed["protocol"]["official_edges"] is False and fixed["val_f1"] is None


def error_line(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err
    return err


def test_error_lines(setup, tmp_path, capsys):
    run, store = setup["run"], setup["store"]
    assert "not found" in error_line(capsys, ["evaluate", str(tmp_path / "nope.safetensors"), str(store)])
    assert "not found" in error_line(capsys, ["evaluate", str(run), str(tmp_path / "nostore")])
    assert "model_best" in error_line(capsys, ["evaluate", str(tmp_path), str(store)])  # folder without a model
    assert "odd integers" in error_line(capsys, ["evaluate", str(run), str(store), "--lengths", "5,6"])
    assert "split 'train'" in error_line(capsys, ["evaluate", str(run), str(store), "--split", "train"])

    empty = tmp_path / "empty_store"
    (empty / "shards").mkdir(parents=True)
    st.write_index(empty, st.build_index(empty))
    assert "no utterances" in error_line(capsys, ["evaluate", str(run), str(empty)])

    # an official file (plain {"state_dict": ...}, student size) carries no preset
    official = tmp_path / "pure_MTDVocaLiST.pth"
    torch.save({"state_dict": VocaLiST.student().state_dict()}, official)
    assert "--preset" in error_line(capsys, ["evaluate", str(official), str(store)])
