"""MOSEI pickle reader, synthetic MOSEI-like generator, and the MOSEI metrics on hand-made examples."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from mtdistill.core.errors import UserError
from mtdistill.data.mult.mosei import MULT_FILE, MoseiDataset, load_mosei
from mtdistill.data.mult.synth import SynthMoseiConfig, generate, write_synthetic_mosei
from mtdistill.metrics.mult import (
    classification_metrics,
    majority_baseline,
    regression_metrics,
    sentiment_to_class7,
)


def test_class7_rounds_half_to_even_after_clipping():
    y = [-3.7, -2.5, -1.5, -0.5, 0.0, 0.4, 0.5, 1.5, 2.5, 2.6, 9.0]
    assert sentiment_to_class7(y).tolist() == [0, 1, 1, 3, 3, 3, 3, 5, 5, 6, 6]


def test_reader_zeroes_inf_and_returns_the_index(tmp_path):
    n = 3
    split = {
        "text": np.ones((n, 4, 7)),
        "audio": np.full((n, 8, 3), -np.inf),
        "vision": np.ones((n, 8, 2)),
        "labels": np.array([-3.0, 0.5, 2.5]).reshape(n, 1, 1),
        "id": np.zeros((n, 3)),
    }
    (tmp_path / MULT_FILE).write_bytes(pickle.dumps({"train": split, "valid": split, "test": split}))
    data = load_mosei(tmp_path)
    assert data["train"].dims == (7, 3, 2) and data["train"].lengths == (4, 8, 8)
    item = MoseiDataset(data["train"])[2]
    assert int(item["index"]) == 2 and int(item["class7"]) == 5 and float(item["label"]) == 2.5
    assert item["audio"].abs().sum() == 0 and item["text"].shape == (4, 7)


def test_reader_errors_are_one_line_user_errors(tmp_path):
    with pytest.raises(UserError, match="mult synth"):
        load_mosei(tmp_path)
    (tmp_path / MULT_FILE).write_bytes(pickle.dumps({"train": {}}))
    with pytest.raises(UserError, match="splits"):
        load_mosei(tmp_path)
    bad = {
        "text": np.ones((2, 4, 7)),
        "audio": np.ones((3, 8, 3)),
        "vision": np.ones((2, 8, 2)),
        "labels": np.ones((2, 1, 1)),
    }
    (tmp_path / MULT_FILE).write_bytes(pickle.dumps({"train": bad, "valid": bad, "test": bad}))
    with pytest.raises(UserError, match="inconsistent"):
        load_mosei(tmp_path)
    (tmp_path / MULT_FILE).write_bytes(pickle.dumps({"train": len}))  # a global that is not NumPy
    with pytest.raises(UserError, match="refusing to load builtins.len"):
        load_mosei(tmp_path)
    (tmp_path / MULT_FILE).write_bytes(b"not a pickle")
    with pytest.raises(UserError, match="cannot read"):
        load_mosei(tmp_path)


def test_synthetic_set_has_mults_layout_and_left_padding(tmp_path):
    cfg = SynthMoseiConfig(n_train=40, n_valid=10, n_test=12, lengths=(6, 20, 20), seed=3)
    path = write_synthetic_mosei(tmp_path, cfg)
    raw = pickle.loads(path.read_bytes())
    assert raw["train"]["text"].shape == (40, 6, 300)
    assert raw["train"]["audio"].shape == (40, 20, 74) and raw["train"]["vision"].shape == (40, 20, 35)
    assert raw["test"]["labels"].shape == (12, 1, 1)
    data = load_mosei(path)
    v = data["train"].vision
    # left zero padding: once a frame is real, every later frame is real
    real = np.abs(v).sum(-1) > 0
    assert (np.diff(real.astype(int), axis=1) >= 0).all() and real[:, -1].all()
    assert np.isfinite(data["train"].audio).all()
    assert np.all(np.abs(data["train"].labels * 3 - np.round(data["train"].labels * 3)) < 1e-5)


def test_synthetic_labels_need_all_three_modalities():
    cfg = SynthMoseiConfig(n_train=1500, n_valid=2, n_test=2, lengths=(6, 20, 20), dims=(20, 10, 8), seed=0)
    tr = generate(cfg)["train"]
    y = tr["labels"].reshape(-1)

    def r2(x: np.ndarray) -> float:
        x = np.c_[x, np.ones(len(x))]
        coef, *_ = np.linalg.lstsq(x, y, rcond=None)
        return 1 - np.var(y - x @ coef) / np.var(y)

    feats = {m: np.where(np.isfinite(tr[m]), tr[m], 0).mean(1) for m in ("text", "audio", "vision")}
    r_all = r2(np.concatenate(list(feats.values()), axis=1))
    r_video = r2(feats["vision"])
    assert r_all > 0.6 and 0.05 < r_video < r_all - 0.3  # video alone knows part of the label, not all of it


def test_classification_metrics_on_a_hand_made_example():
    labels = np.array([-3.0, -1.0, 0.0, 1.0, 2.0, 3.0])  # classes 0, 2, 3, 4, 5, 6
    pred_classes = np.array([0, 2, 4, 4, 4, 6])  # one miss: class 3 predicted as 4 (and 5 predicted as 4)
    logits = np.eye(7)[pred_classes]
    m = classification_metrics(logits, labels)
    assert m["acc7"] == pytest.approx(4 / 6)
    # non-zero labels: signs all right (-3, -1 negative; 1, 2, 3 positive)
    assert m["acc2"] == 1.0 and m["f1_binary"] == 1.0
    assert m["mae"] == pytest.approx((0 + 0 + 1 + 0 + 1 + 0) / 6)
    # macro F1 over the 7 classes: class 0,2,6 F1 = 1; class 3: 0; class 4: 2*1/3*1/(4/3)=0.5; 5: 0; 1: absent -> 0
    assert m["f1_macro"] == pytest.approx((1 + 0 + 1 + 0 + 0.5 + 0 + 1) / 7)
    # weighted F1: support-weighted over the present classes (each has 1 sample)
    assert m["f1_weighted"] == pytest.approx((1 + 1 + 0 + 0.5 + 0 + 1) / 6)


def test_regression_metrics_follow_mult():
    truth = np.array([-2.4, 0.0, 0.6, 2.5])
    pred = np.array([-2.6, 0.4, -0.2, 3.4])
    m = regression_metrics(pred, truth)
    assert m["mae"] == pytest.approx(np.mean(np.abs(pred - truth)))
    assert m["acc7"] == pytest.approx(1 / 4)  # rounded: -3 vs -2, 0 vs 0, -0 vs 1, 3 vs 2 (2.5 -> 2, half to even)
    assert m["acc2"] == pytest.approx(2 / 3)  # zero truth excluded; 0.6 vs -0.2 wrong
    assert m["corr"] == pytest.approx(np.corrcoef(pred, truth)[0, 1])


def test_majority_baseline():
    b = majority_baseline([3, 3, 4, 3, 0], [3, 4, 4, 3])
    assert b["majority_class"] == 3 and b["acc7"] == 0.5
    with pytest.raises(UserError):
        classification_metrics(np.zeros((3, 5)), np.zeros(3))


def test_cli_synth_and_one_line_errors(tmp_path, capsys):
    from mtdistill.cli import main

    rc = main(["mult", "synth", str(tmp_path), "--n-train", "5", "--n-valid", "2", "--n-test", "2",
               "--lengths", "3", "6", "6"])  # fmt: skip
    assert rc == 0 and load_mosei(tmp_path)["train"].lengths == (3, 6, 6)
    assert main(["mult", "report", str(tmp_path / "no_run")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and "train it first" in err[-1]
