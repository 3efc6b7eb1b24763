"""One Quirks object: the flags added for issue 13 each change a number on a designed input, faithful vs clean.

F1 threshold and mean of batch F1s (metrics/f1.py), the best-checkpoint rule (training/checkpoints.py, also through
a real two-epoch training run), the ``softmax().log()`` NaN of the CAD/VR KL (distill/behaviour.py, through the
registered losses) and the FitNets regressor direction; plus parsing of ``NAME=VALUE`` and the shortcuts.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import f1_score

from mtdistill.core.errors import UserError
from mtdistill.core.quirks import FAITHFUL, Quirks, parse_assignment, switched_off
from mtdistill.distill import build_loss
from mtdistill.distill.behaviour import cad_loss, vr_loss
from mtdistill.metrics.f1 import (
    batch_f1_stats,
    batch_weighted_f1,
    epoch_f1_from_stats,
    weighted_f1_from_counts,
)
from mtdistill.training.checkpoints import improves
from mtdistill.training.config import validate
from test_distill_losses import LABELS, fake_out
from test_training_engine import one_thread, read_metrics, recipe, workdir  # noqa: F401  (workdir: fixture)

NEW_FLAGS = (
    "f1_logit_threshold",
    "f1_mean_of_batches",
    "best_strictly_greater",
    "kl_log_of_softmax",
    "fitnets_teacher_to_student",
)


def test_new_flags_are_faithful_by_default_and_off_when_clean() -> None:
    for name in NEW_FLAGS:
        assert getattr(FAITHFUL, name) is True and getattr(Quirks.clean(), name) is False
    assert Quirks.clean().kl_reduction == "batchmean"
    assert all(v is False for k, v in Quirks.clean().as_dict().items() if k != "kl_reduction")


def test_assignments_and_one_line_errors() -> None:
    assert parse_assignment("eval_ifelif_edges=false") == ("eval_ifelif_edges", False)
    assert parse_assignment(" kl_reduction = batchmean ") == ("kl_reduction", "batchmean")
    q = FAITHFUL.with_assignments(["f1_logit_threshold=no", "best_strictly_greater=0", "va_cad_clamp=on"])
    assert not q.f1_logit_threshold and not q.best_strictly_greater and q.va_cad_clamp
    for text, message in (
        ("bogus=1", "unknown quirk 'bogus'"),
        ("va_cad_clamp=maybe", "takes true or false"),
        ("kl_reduction=sum", "kl_reduction takes mean or batchmean"),
        ("va_cad_clamp", "expected NAME=VALUE"),
    ):
        with pytest.raises(UserError, match=message):
            parse_assignment(text)
    with pytest.raises(UserError, match="must be true or false"):
        Quirks(va_cad_clamp="no")  # type: ignore[arg-type]
    with pytest.raises(UserError, match="unknown quirk flag"):
        FAITHFUL.replace(warmup=True)


def test_shortcuts_only_switch_their_flag_off() -> None:
    clean_edges = Quirks(eval_ifelif_edges=False)
    assert switched_off(None, eval_ifelif_edges=True) == FAITHFUL
    assert switched_off(None, eval_ifelif_edges=False) == clean_edges
    assert switched_off(clean_edges, eval_ifelif_edges=True) == clean_edges  # True keeps the object's value
    assert switched_off({"kl_reduction": "batchmean"}, va_cad_clamp=False) == Quirks(
        kl_reduction="batchmean", va_cad_clamp=False
    )
    mtd = build_loss("mtd", va_clamp=False, quirks={"kl_reduction": "batchmean"})
    assert mtd.quirks == Quirks(va_cad_clamp=False, kl_reduction="batchmean") and not mtd.va_clamp


# ------------------------------------------------------------------------------------------------ F1


def test_f1_threshold_on_the_logit_or_on_the_probability() -> None:
    logits = torch.tensor([0.3, 0.3, -1.0, -1.0])  # p = 0.57: positive for a probability threshold only
    labels = torch.tensor([1.0, 1.0, 0.0, 0.0])
    released = batch_weighted_f1(logits, labels)
    clean = batch_weighted_f1(logits, labels, Quirks(f1_logit_threshold=False))
    assert released == pytest.approx(f1_score([1, 1, 0, 0], [0, 0, 0, 0], average="weighted", zero_division=0))
    assert released == pytest.approx(1 / 3) and clean == 1.0


def test_epoch_f1_mean_of_batches_or_one_pooled_f1() -> None:
    batches = [
        (torch.tensor([2.0, 2.0, 2.0, -2.0]), torch.tensor([1.0, 1.0, 1.0, 0.0])),  # all right: F1 1
        (torch.tensor([2.0]), torch.tensor([0.0])),  # one wrong sample: F1 0, counts fully in the mean
    ]
    stats = [batch_f1_stats(lo, la) for lo, la in batches]
    pooled = f1_score([1, 1, 1, 0, 0], [1, 1, 1, 0, 1], average="weighted")
    assert epoch_f1_from_stats(stats) == pytest.approx(0.5)
    assert epoch_f1_from_stats(stats, Quirks(f1_mean_of_batches=False)) == pytest.approx(pooled)
    assert pooled == pytest.approx(0.7809523809)  # clearly not 0.5
    assert np.isnan(epoch_f1_from_stats(np.zeros((0, 5))))


def test_weighted_f1_from_counts_is_sklearns() -> None:
    rng = np.random.default_rng(3)
    for n in (1, 2, 7, 50):
        y_true, y_pred = rng.integers(0, 2, n), rng.integers(0, 2, n)
        tp, fp = np.sum((y_pred == 1) & (y_true == 1)), np.sum((y_pred == 1) & (y_true == 0))
        fn, tn = np.sum((y_pred == 0) & (y_true == 1)), np.sum((y_pred == 0) & (y_true == 0))
        expected = f1_score(y_true, y_pred, average="weighted", zero_division=0)
        assert weighted_f1_from_counts(tp, fp, fn, tn) == pytest.approx(expected)


# ------------------------------------------------------------------------------------------------ best rule


def test_best_rule_on_a_tie() -> None:
    assert improves(0.8, None) and improves(0.9, 0.8) and not improves(0.7, 0.8)
    assert not improves(0.8, 0.8)  # released: strictly greater, the earlier epoch stays best
    assert improves(0.8, 0.8, strictly_greater=False)
    assert not improves(float("nan"), 0.1, strictly_greater=False) and not improves(None, None)


def test_best_rule_in_a_real_training_run(workdir: Path) -> None:  # noqa: F811
    from mtdistill.training.run import run_recipe

    # lr 1e-12: the weights do not move, so both epochs score the same fixed validation pairs the same
    summaries = {}
    for name, quirks in (("tie_released", {}), ("tie_clean", {"best_strictly_greater": False})):
        cfg = recipe(workdir, name, kind="train", quirks=quirks, optim={"lr": 1e-12, "schedule": "constant"})
        cfg["loss"], cfg["teacher"] = {"name": "bce"}, {"checkpoint": None}
        with one_thread():
            summaries[name] = run_recipe(validate(cfg))
        f1s = [float(r["val/f1"]) for r in read_metrics(workdir / "runs" / name) if r.get("val/f1")]
        assert len(f1s) == 2 and f1s[0] == f1s[1]
    assert summaries["tie_released"]["best_epoch"] == 0
    assert summaries["tie_clean"]["best_epoch"] == 1


# ------------------------------------------------------------------------------------------- softmax().log()


def _kl_log_softmax(student: torch.Tensor, teacher_probs: torch.Tensor) -> torch.Tensor:
    """KL(teacher || student) with the student's log_softmax, 'mean' over every element (by hand)."""
    log_t = torch.where(teacher_probs > 0, teacher_probs.log(), torch.zeros_like(teacher_probs))
    return (teacher_probs * (log_t - torch.log_softmax(student, -1))).sum() / student.numel()


def test_log_of_softmax_gives_inf_and_nan_where_log_softmax_stays_finite() -> None:
    student = torch.tensor([[[[0.0, 200.0]]]])  # softmax [0, 1]: its log has a -inf
    uniform_teacher = torch.zeros(1, 1, 1, 2)
    peaked_teacher = torch.tensor([[[[0.0, 200.0]]]])  # teacher probability 0 where the student's log is -inf
    assert torch.isinf(cad_loss(student, uniform_teacher))
    assert torch.isnan(cad_loss(student, peaked_teacher))
    clean_uniform = cad_loss(student, uniform_teacher, log_of_softmax=False)
    assert clean_uniform.item() == pytest.approx(_kl_log_softmax(student, torch.full((1, 1, 1, 2), 0.5)).item())
    by_hand = (0.5 * (np.log(0.5) + 200) + 0.5 * np.log(0.5)) / 2  # 'mean' over the 2 entries
    assert clean_uniform.item() == pytest.approx(by_hand, rel=1e-5)
    assert cad_loss(student, peaked_teacher, log_of_softmax=False).item() == pytest.approx(0.0, abs=1e-6)
    # VR: V V^T / sqrt(d) of large values underflows the same way
    values = torch.tensor([[[[30.0, 0.0], [0.0, 1.0]]]])
    assert not torch.isfinite(vr_loss(values, torch.ones(1, 1, 2, 2)))
    assert torch.isfinite(vr_loss(values, torch.ones(1, 1, 2, 2), log_of_softmax=False))


def test_registered_losses_read_the_log_of_softmax_flag() -> None:
    student, teacher = fake_out(seed=0), fake_out(seed=1)
    student.attention_logits["fusion"][3] = student.attention_logits["fusion"][3] * 500.0  # underflowing rows
    released = build_loss("minilm")  # CAD + VR of the last fusion layer, uniform
    clean = build_loss("minilm", quirks=Quirks(kl_log_of_softmax=False))
    assert not torch.isfinite(released(student, teacher, LABELS))
    total = clean(student, teacher, LABELS)
    assert torch.isfinite(total)
    s, t = student.attention_logits["fusion"][3], teacher.attention_logits["fusion"][3]
    expected = _kl_log_softmax(s, torch.softmax(t, -1))
    assert clean.terms["cad/fusion/3"].item() == pytest.approx(expected.item(), rel=1e-5)
    # the VR term did not underflow: both agree there
    assert clean.terms["vr/fusion/3"].item() == pytest.approx(released.terms["vr/fusion/3"].item(), rel=1e-6)


# ------------------------------------------------------------------------------------------- FitNets


def test_fitnets_direction_follows_the_quirk() -> None:
    student, teacher = fake_out(d=8, seed=2), fake_out(d=12, seed=3)
    released = build_loss("fitnets", teacher_dim=12, student_dim=8)
    clean = build_loss("fitnets", teacher_dim=12, student_dim=8, quirks=Quirks.clean())
    assert released.regressor.weight.shape == (8, 12) and released.direction == "teacher_to_student"
    assert clean.regressor.weight.shape == (12, 8) and clean.direction == "student_to_teacher"
    with torch.no_grad():
        for loss in (released, clean):
            loss.regressor.weight.fill_(0.1)
            loss.regressor.bias.zero_()
        s, t = student.hidden["fusion"][-1], teacher.hidden["fusion"][-1]
        released(student, teacher, LABELS)
        clean(student, teacher, LABELS)
    assert released.terms["fitnets/fusion"].item() == pytest.approx(
        100 * ((s - 0.1 * t.sum(-1, keepdim=True)) ** 2).mean().item(), rel=1e-5
    )
    assert clean.terms["fitnets/fusion"].item() == pytest.approx(
        100 * ((0.1 * s.sum(-1, keepdim=True) - t) ** 2).mean().item(), rel=1e-5
    )
