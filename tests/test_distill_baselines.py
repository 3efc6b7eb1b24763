"""Baseline losses of Table 1 (design.md §2.5): KD over the batch vs binary, RKD, FitNets, MiniLM*."""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field

import numpy as np
import pytest
import torch

from mtdistill.core.errors import UserError
from mtdistill.core.quirks import Quirks
from mtdistill.distill import build_loss
from mtdistill.distill.baselines import kd_binary, kd_over_batch, rkd_angle_loss, rkd_distance_loss, rkd_loss


@dataclass
class FakeOut:
    logits: torch.Tensor
    hidden: dict = field(default_factory=dict)
    pooled: torch.Tensor | None = None


def hidden_out(batch: int, d: int, seed: int, grad: bool = False) -> FakeOut:
    g = torch.Generator().manual_seed(seed)
    shapes = {"fusion": 16, "av": 16, "va": 5}
    hidden = {
        b: [torch.randn(batch, t, d, generator=g, requires_grad=grad) for _ in range(4)] for b, t in shapes.items()
    }
    return FakeOut(
        logits=torch.randn(batch, generator=g, requires_grad=grad),
        hidden=hidden,
        pooled=torch.randn(batch, d, generator=g, requires_grad=grad),
    )


# ---------------------------------------------------------------- KD


def test_kd_over_batch_hand_value() -> None:
    # teacher logits / T = [0, ln 3] -> softmax over the batch [.25, .75]; student [0, 0] -> [.5, .5]
    teacher = torch.tensor([0.0, 5 * math.log(3.0)])
    student = torch.zeros(2)
    kl = 0.25 * math.log(0.25 / 0.5) + 0.75 * math.log(0.75 / 0.5)
    assert kd_over_batch(student, teacher).item() == pytest.approx(25 * kl / 2, rel=1e-5)  # T^2 * sum / B


def test_kd_binary_hand_value_and_differs_from_batch_softmax() -> None:
    teacher = torch.tensor([0.0, 5 * math.log(3.0)])  # sigmoid(t/T) = [.5, .75]
    student = torch.zeros(2)  # [.5, .5]
    kl_sample1 = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)
    assert kd_binary(student, teacher).item() == pytest.approx(25 * kl_sample1 / 2, rel=1e-5)
    # a softmax over the batch ignores a common shift of the student's logits; a per-sample KD does not
    shifted = student - 5.0
    assert kd_over_batch(shifted, teacher).item() == pytest.approx(kd_over_batch(student, teacher).item(), rel=1e-5)
    assert kd_binary(shifted, teacher).item() > 2 * kd_binary(student, teacher).item()


def test_kd_loss_module_follows_the_quirk_flag() -> None:
    student, teacher = hidden_out(4, 6, seed=1, grad=True), hidden_out(4, 6, seed=2)
    labels = torch.tensor([1.0, 0.0, 0.0, 1.0])
    released = build_loss("kd")
    clean = build_loss("kd", quirks=Quirks(kd_softmax_over_batch=False))
    assert released.over_batch and not clean.over_batch
    with pytest.raises(UserError, match="over_batch"):  # the quirk flag is the one switch
        build_loss("kd", over_batch=False)
    total = released(student, teacher, labels)
    bce = torch.nn.functional.binary_cross_entropy_with_logits(student.logits, labels)
    assert total.item() == pytest.approx((bce + kd_over_batch(student.logits, teacher.logits)).item(), rel=1e-6)
    clean_total = clean(student, teacher, labels)
    assert clean.terms["kd"].item() == pytest.approx(kd_binary(student.logits, teacher.logits).item(), rel=1e-6)
    clean_total.backward()
    assert student.logits.grad.abs().sum() > 0 and teacher.logits.grad is None


# ---------------------------------------------------------------- RKD


def numpy_rkd(student: np.ndarray, teacher: np.ndarray) -> tuple[float, float]:
    """Straightforward loops: RKD distance and angle losses (smooth-L1 with beta 1, mean over all entries)."""

    def smooth_l1(a: np.ndarray, b: np.ndarray) -> float:
        d = np.abs(a - b)
        return float(np.where(d < 1, 0.5 * d**2, d - 0.5).mean())

    def distances(x: np.ndarray) -> np.ndarray:
        n = len(x)
        d = np.array([[np.linalg.norm(x[i] - x[j]) for j in range(n)] for i in range(n)])
        return d / d[~np.eye(n, dtype=bool)].mean()

    def angles(x: np.ndarray) -> np.ndarray:
        n = len(x)
        out = np.zeros((n, n, n))
        for j, i, k in itertools.product(range(n), repeat=3):
            a, b = x[i] - x[j], x[k] - x[j]
            na, nb = np.linalg.norm(a), np.linalg.norm(b)
            if na > 0 and nb > 0:
                out[j, i, k] = a @ b / (na * nb)
        return out

    return smooth_l1(distances(student), distances(teacher)), smooth_l1(angles(student), angles(teacher))


def test_rkd_on_triangles() -> None:
    equilateral = np.array([[0.0, 0.0], [1.0, 0.0], [0.5, math.sqrt(3) / 2]])
    right = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    d_expected, a_expected = numpy_rkd(equilateral, right)
    # hand value of the distance term: normalised teacher distances 1/m and sqrt2/m, m = (2 + sqrt2) / 3
    m = (2 + math.sqrt(2)) / 3
    hand = (4 * 0.5 * (1 - 1 / m) ** 2 + 2 * 0.5 * (1 - math.sqrt(2) / m) ** 2) / 9
    assert d_expected == pytest.approx(hand, rel=1e-9)
    s, t = torch.tensor(equilateral), torch.tensor(right)
    assert rkd_distance_loss(s, t).item() == pytest.approx(d_expected, rel=1e-5)
    assert rkd_angle_loss(s, t).item() == pytest.approx(a_expected, rel=1e-5)
    distance, angle = rkd_loss(s, t)
    assert distance.item() == pytest.approx(25 * d_expected, rel=1e-5)
    assert angle.item() == pytest.approx(50 * a_expected, rel=1e-5)


def test_rkd_random_matches_loops_and_is_scale_invariant() -> None:
    g = torch.Generator().manual_seed(3)
    s, t = torch.randn(5, 7, generator=g, dtype=torch.float64), torch.randn(5, 11, generator=g, dtype=torch.float64)
    d_expected, a_expected = numpy_rkd(s.numpy(), t.numpy())
    assert rkd_distance_loss(s, t).item() == pytest.approx(d_expected, rel=1e-5)
    assert rkd_angle_loss(s, t).item() == pytest.approx(a_expected, rel=1e-5)
    # a scaled and shifted copy has the same relations: zero loss
    distance, angle = rkd_loss(s, 3 * s + 1)
    assert distance.item() == pytest.approx(0, abs=1e-6) and angle.item() == pytest.approx(0, abs=1e-6)


def test_rkd_loss_module_features_and_gradients() -> None:
    student, teacher = hidden_out(4, 6, seed=4, grad=True), hidden_out(4, 10, seed=5)
    labels = torch.tensor([1.0, 0.0, 0.0, 1.0])
    pooled = build_loss("rkd")
    total = pooled(student, teacher, labels)
    distance, angle = rkd_loss(student.pooled, teacher.pooled)
    assert pooled.terms["rkd/distance"].item() == pytest.approx(distance.item(), rel=1e-6)
    assert total.item() == pytest.approx(pooled.terms["bce"].item() + (distance + angle).item(), rel=1e-6)
    total.backward()
    assert student.pooled.grad.abs().sum() > 0 and teacher.pooled.grad is None
    fusion = build_loss("rkd", features="fusion")
    fusion(student, teacher, labels)
    flat = rkd_loss(student.hidden["fusion"][-1].flatten(1), teacher.hidden["fusion"][-1].flatten(1))
    assert fusion.terms["rkd/angle"].item() == pytest.approx(flat[1].item(), rel=1e-6)
    one = build_loss("rkd")(hidden_out(1, 6, seed=6), hidden_out(1, 10, seed=7), torch.ones(1))
    assert torch.isfinite(one)
    with pytest.raises(UserError, match="pooled"):
        build_loss("rkd", features="cnn")


# ---------------------------------------------------------------- FitNets


def test_fitnets_released_direction_shapes_value_and_grad() -> None:
    assert build_loss("fitnets").regressor.weight.shape == (200, 512)  # Linear(512 -> 200) on the teacher
    student, teacher = hidden_out(3, 8, seed=8, grad=True), hidden_out(3, 12, seed=9)
    labels = torch.tensor([1.0, 0.0, 1.0])
    loss = build_loss("fitnets", teacher_dim=12, student_dim=8)
    total = loss(student, teacher, labels)
    s, t = student.hidden["fusion"][-1], teacher.hidden["fusion"][-1]
    mapped = t @ loss.regressor.weight.T + loss.regressor.bias
    hint = 100 * ((s - mapped) ** 2).mean()
    assert loss.terms["fitnets/fusion"].item() == pytest.approx(hint.item(), rel=1e-5)
    assert total.item() == pytest.approx(loss.terms["bce"].item() + hint.item(), rel=1e-5)
    total.backward()
    assert loss.regressor.weight.grad.abs().sum() > 0
    assert s.grad.abs().sum() > 0 and t.grad is None


def test_fitnets_classic_direction_and_embeddings() -> None:
    student, teacher = hidden_out(2, 8, seed=10), hidden_out(2, 12, seed=11)
    labels = torch.tensor([1.0, 0.0])
    classic = build_loss("fitnets", teacher_dim=12, student_dim=8, quirks=Quirks(fitnets_teacher_to_student=False))
    assert classic.regressor.weight.shape == (12, 8) and classic.direction == "student_to_teacher"
    classic(student, teacher, labels)
    cross = build_loss("fitnets", teacher_dim=12, student_dim=8, emb="cross")
    cross(student, teacher, labels)
    assert set(cross.terms) == {"bce", "fitnets/av", "fitnets/va", "total"}
    both = build_loss("fitnets", teacher_dim=12, student_dim=8, emb="both")
    both.load_state_dict(cross.state_dict())
    total = both(student, teacher, labels)
    parts = sum(both.terms[f"fitnets/{b}"] for b in ("fusion", "av", "va"))
    assert total.item() == pytest.approx((both.terms["bce"] + parts).item(), rel=1e-6)
    assert both.terms["fitnets/av"].item() == pytest.approx(cross.terms["fitnets/av"].item(), rel=1e-6)
    with pytest.raises(UserError, match="teacher_dim: 12"):
        build_loss("fitnets", student_dim=8)(student, teacher, labels)
    with pytest.raises(UserError):
        build_loss("fitnets", emb="middle")
    with pytest.raises(UserError, match="direction"):  # the direction is quirks.fitnets_teacher_to_student
        build_loss("fitnets", direction="student_to_teacher")
