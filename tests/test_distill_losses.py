"""CAD / VR (Eq. 1-2), the weightings (Eq. 3-4), MTDLoss term order, layer subsets, quirks and the registry."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import pytest
import torch

from mtdistill.core.errors import UserError
from mtdistill.core.quirks import Quirks
from mtdistill.distill import (
    LOSSES,
    MTDLoss,
    automatic_weighting,
    build_loss,
    cad_loss,
    cross_attention_distribution,
    kl_teacher_student,
    masked_kl_teacher_student,
    register,
    uncertainty_weighting,
    uniform_weighting,
    value_relation,
    vr_loss,
)

BLOCK_ORDER = ("fusion", "av", "va")  # the official index order of design.md §2.4, written out independently
SHAPES = {"av": (16, 5), "va": (5, 16), "fusion": (16, 5)}  # (Tq, Tk) per block for a 5-frame input


@dataclass
class FakeOut:
    """A SyncOutput look-alike built from plain tensors."""

    logits: torch.Tensor
    attention_logits: dict = field(default_factory=dict)
    values: dict = field(default_factory=dict)
    hidden: dict = field(default_factory=dict)
    pooled: torch.Tensor | None = None


def va_mask(tq: int = 5, tk: int = 16) -> torch.Tensor:
    """The VA leftover future mask (design.md §1.7): True where j - i >= 1 + |Tk - Tq|."""
    i = torch.arange(tq)[:, None]
    j = torch.arange(tk)[None, :]
    return (j - i) >= 1 + abs(tk - tq)


def fake_out(batch: int = 3, head_dim: int = 4, d: int = 8, seed: int = 0, grad: bool = False) -> FakeOut:
    g = torch.Generator().manual_seed(seed)
    out = FakeOut(logits=torch.randn(batch, generator=g))
    for block, (tq, tk) in SHAPES.items():
        logits, values, hidden = [], [], []
        for _ in range(4):
            a = torch.randn(batch, 8, tq, tk, generator=g)
            if block == "va":
                a = a.masked_fill(va_mask(), float("-inf"))
            logits.append(a)
            values.append(torch.randn(batch, 8, tk, head_dim, generator=g))
            hidden.append(torch.randn(batch, tq, d, generator=g))
        out.attention_logits[block], out.values[block], out.hidden[block] = logits, values, hidden
    out.pooled = torch.randn(batch, d, generator=g)
    if grad:
        for tensors in (out.attention_logits, out.values, out.hidden):
            for block in tensors:
                tensors[block] = [t.requires_grad_() for t in tensors[block]]
        out.logits.requires_grad_()
        out.pooled.requires_grad_()
    return out


LABELS = torch.tensor([1.0, 0.0, 1.0])


# ---------------------------------------------------------------- Eq. 1 and Eq. 2


def test_cad_is_softmax_over_keys_and_clamp_acts_on_logits() -> None:
    logits = torch.tensor([[-1.0, 2.0, float("-inf")]])
    assert torch.allclose(
        cross_attention_distribution(logits),
        torch.tensor([[math.exp(-3) / (1 + math.exp(-3)), 1 / (1 + math.exp(-3)), 0.0]]),
    )
    clamped = cross_attention_distribution(logits, clamp_min=1e-5)
    expected = torch.softmax(torch.tensor([1e-5, 2.0, 1e-5]), dim=0)  # -1 and -inf both become 1e-5
    assert torch.allclose(clamped[0], expected)
    assert torch.allclose(
        cross_attention_distribution(torch.tensor([0.0, 2.0]), tau=2.0), torch.softmax(torch.tensor([0.0, 1.0]), 0)
    )


def test_value_relation_uses_own_head_dim() -> None:
    v = torch.tensor([[1.0, 1.0, 1.0, 1.0], [2.0, 0.0, 0.0, 0.0]])  # two keys, head_dim 4 -> divide by 2
    rel = value_relation(v)
    vvt = torch.tensor([[4.0, 2.0], [2.0, 4.0]]) / 2.0
    assert torch.allclose(rel, torch.softmax(vvt, dim=-1))


@pytest.mark.filterwarnings("ignore:reduction. 'mean' divides")
def test_kl_direction_is_teacher_to_student() -> None:
    teacher = torch.tensor([[[[0.5, 0.5]]]])
    student = torch.tensor([[[[0.9, 0.1]]]])
    kl_ts = 0.5 * math.log(0.5 / 0.9) + 0.5 * math.log(0.5 / 0.1)  # 0.5108, KL(t || s)
    kl_st = 0.9 * math.log(0.9 / 0.5) + 0.1 * math.log(0.1 / 0.5)  # 0.3681, the other direction
    got = kl_teacher_student(student, teacher, reduction="batchmean")
    assert got.item() == pytest.approx(kl_ts, rel=1e-5)
    assert got.item() != pytest.approx(kl_st, rel=1e-2)
    # the same through cad_loss on logits: log-probs are valid logits
    assert cad_loss(student.log(), teacher.log(), reduction="batchmean").item() == pytest.approx(kl_ts, rel=1e-5)
    # 'mean' divides by every element (B*H*Tq*Tk = 2 here), as nn.KLDivLoss(reduction='mean')
    assert kl_teacher_student(student, teacher, reduction="mean").item() == pytest.approx(kl_ts / 2, rel=1e-5)
    assert torch.allclose(
        kl_teacher_student(student, teacher), torch.nn.KLDivLoss(reduction="mean")(student.log(), teacher)
    )


@pytest.mark.parametrize("tk", [5, 16])
def test_mean_vs_batchmean_factor_is_tk(tk: int) -> None:
    g = torch.Generator().manual_seed(1)
    s, t = torch.randn(2, 8, 3, tk, generator=g), torch.randn(2, 8, 3, tk, generator=g)
    mean = cad_loss(s, t, reduction="mean")
    batchmean = cad_loss(s, t, reduction="batchmean")
    assert (batchmean / mean).item() == pytest.approx(tk, rel=1e-5)
    with pytest.raises(UserError, match="reduction"):
        cad_loss(s, t, reduction="sum")


def test_tau_scales_by_tau_squared() -> None:
    g = torch.Generator().manual_seed(2)
    s, t = torch.randn(1, 8, 4, 5, generator=g), torch.randn(1, 8, 4, 5, generator=g)
    manual = kl_teacher_student(torch.softmax(s / 2, -1), torch.softmax(t / 2, -1)) * 4
    assert torch.allclose(cad_loss(s, t, tau=2.0), manual)


def test_va_clamp_nan_without_it_finite_with_it_and_masked_kl() -> None:
    inf = float("-inf")
    teacher = torch.tensor([[[[0.0, math.log(3.0), inf]]]])  # probs .25 .75 0
    student = torch.tensor([[[[0.0, 0.0, inf]]]])  # probs .5 .5 0
    assert torch.isnan(cad_loss(student, teacher))  # released formula: 0 * log 0 -> NaN
    assert torch.isfinite(cad_loss(student, teacher, clamp=True))
    clamped = cad_loss(student, teacher, clamp=True)
    manual = kl_teacher_student(
        torch.softmax(torch.tensor([1e-5, 1e-5, 1e-5]), 0), torch.softmax(torch.tensor([1e-5, math.log(3.0), 1e-5]), 0)
    )
    assert clamped.item() == pytest.approx(manual.item(), rel=1e-5)
    # masked KL: only the two finite entries, KL = .25 ln(.5) + .75 ln(1.5)
    kl = 0.25 * math.log(0.25 / 0.5) + 0.75 * math.log(0.75 / 0.5)
    assert cad_loss(student, teacher, masked=True, reduction="batchmean").item() == pytest.approx(kl, rel=1e-5)
    assert masked_kl_teacher_student(student, teacher, reduction="mean").item() == pytest.approx(kl / 2, rel=1e-5)
    with pytest.raises(UserError):
        cad_loss(student, teacher, clamp=True, masked=True)


def test_masked_kl_gradient_is_finite_and_ignores_masked_entries() -> None:
    out_s, out_t = fake_out(seed=3, grad=True), fake_out(seed=4)
    s, t = out_s.attention_logits["va"][0], out_t.attention_logits["va"][0]
    loss = cad_loss(s, t, masked=True)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(s.grad).all()
    assert (s.grad[..., va_mask()] == 0).all() and s.grad[..., ~va_mask()].abs().sum() > 0
    # on an unmasked block the masked KL equals the released formula
    a, b = fake_out(seed=5).attention_logits["av"][1], out_t.attention_logits["av"][1]
    assert torch.allclose(cad_loss(a, b, masked=True), cad_loss(a, b), rtol=1e-5)


def test_shape_mismatch_is_a_user_error() -> None:
    with pytest.raises(UserError, match="heads"):
        cad_loss(torch.randn(1, 4, 16, 5), torch.randn(1, 8, 16, 5))
    with pytest.raises(UserError, match="heads"):
        vr_loss(torch.randn(1, 4, 5, 3), torch.randn(1, 8, 5, 7))
    # different head_dim is fine (teacher 64, student 25): VR compares (Tk, Tk) relations
    assert torch.isfinite(vr_loss(torch.randn(1, 8, 5, 3), torch.randn(1, 8, 5, 7)))


# ---------------------------------------------------------------- Eq. 3 and Eq. 4


def test_uncertainty_weighting_formula() -> None:
    losses = torch.tensor([1.0, 2.0])
    total, weights = uncertainty_weighting(losses, torch.tensor([1.0, 2.0]))
    expected = 0.5 * 1 + math.log(2) + 0.5 / 4 * 2 + math.log(5)  # 3.0526
    assert total.item() == pytest.approx(expected, rel=1e-6)
    assert weights.tolist() == pytest.approx([0.5, 0.125])


def test_automatic_weighting_formula() -> None:
    total, weights = automatic_weighting(torch.tensor([1.0, 2.0]), torch.tensor([0.0, math.log(3.0)]))
    assert weights.tolist() == pytest.approx([0.25, 0.75])
    assert total.item() == pytest.approx(1.75)


def test_uniform_weighting_bce_weight_one_alpha_for_the_rest() -> None:
    total, weights = uniform_weighting(torch.tensor([1.0, 2.0, 3.0]), alpha=2.0)
    assert total.item() == pytest.approx(1 + 2 * 5)
    assert weights.tolist() == [1.0, 2.0, 2.0]


def expected_terms(student: FakeOut, teacher: FakeOut, va_clamp: bool = True) -> dict[str, torch.Tensor]:
    """Every term computed directly with the Eq. 2 functions, independent of MTDLoss's bookkeeping."""
    terms = {}
    for block in BLOCK_ORDER:
        for layer in range(4):
            s, t = student.attention_logits[block][layer], teacher.attention_logits[block][layer]
            clamp = block == "va" and va_clamp
            terms[f"cad/{block}/{layer}"] = cad_loss(s, t, clamp=clamp, masked=block == "va" and not va_clamp)
            terms[f"vr/{block}/{layer}"] = vr_loss(student.values[block][layer], teacher.values[block][layer])
    return terms


def recovered_task_losses(loss: MTDLoss, total: torch.Tensor) -> torch.Tensor:
    """Invert d total / d p_i = -L_i / p_i^3 + 2 p_i / (1 + p_i^2) to find the loss each weight multiplies."""
    (grad,) = torch.autograd.grad(total, loss.params)
    p = loss.params.detach()
    return (2 * p / (1 + p**2) - grad) * p**3


def test_uw25_term_order_matches_the_release() -> None:
    student, teacher = fake_out(seed=10), fake_out(seed=11)
    loss = MTDLoss(weighting="uw", n_weights=25)
    assert loss.params.shape == (25,) and torch.equal(loss.params.detach(), torch.ones(25))
    assert list(loss.state_dict()) == ["params"]
    with torch.no_grad():
        loss.params.copy_(torch.linspace(0.5, 3.0, 25))  # distinct weights
    total = loss(student, teacher, LABELS)
    terms = expected_terms(student, teacher)
    order = ["bce"] + [f"cad/{b}/{i}" for b in BLOCK_ORDER for i in range(4)]
    order += [f"vr/{b}/{i}" for b in BLOCK_ORDER for i in range(4)]
    bce = torch.nn.functional.binary_cross_entropy_with_logits(student.logits, LABELS)
    expected = torch.stack([bce] + [terms[name] for name in order[1:]])
    assert torch.allclose(recovered_task_losses(loss, total), expected, rtol=1e-3, atol=1e-6)
    p = loss.params.detach()
    assert total.item() == pytest.approx((0.5 / p**2 * expected + torch.log(1 + p**2)).sum().item(), rel=1e-5)
    assert loss.task_names == order
    assert set(terms) | {"bce", "total", "distill"} <= set(loss.terms)
    assert loss.terms["w/24"].item() == pytest.approx(0.5 / 9.0)


def test_uw13_cad_and_vr_share_a_weight() -> None:
    student, teacher = fake_out(seed=12), fake_out(seed=13)
    loss = build_loss("mtd", n_weights=13)
    assert loss.params.shape == (13,)
    with torch.no_grad():
        loss.params.copy_(torch.linspace(0.7, 2.0, 13))
    total = loss(student, teacher, LABELS)
    terms = expected_terms(student, teacher)
    per_layer = [terms[f"cad/{b}/{i}"] + terms[f"vr/{b}/{i}"] for b in BLOCK_ORDER for i in range(4)]
    recovered = recovered_task_losses(loss, total)
    assert torch.allclose(recovered[1:], torch.stack(per_layer), rtol=1e-3, atol=1e-6)


def test_aw_softmax_weights_on_25_terms() -> None:
    student, teacher = fake_out(seed=14), fake_out(seed=15)
    loss = build_loss("aw", n_weights=25)
    with torch.no_grad():
        loss.params.copy_(torch.linspace(-1.0, 1.0, 25))
    total = loss(student, teacher, LABELS)
    w = torch.softmax(loss.params.detach(), 0)
    terms = expected_terms(student, teacher)
    vector = [loss.terms["bce"]] + [terms[n] for n in loss.task_names[1:]]
    assert total.item() == pytest.approx((w * torch.stack(vector)).sum().item(), rel=1e-5)
    assert loss.task_names[13] == "vr/fusion/0"
    assert build_loss("aw", n_weights=13).params.shape == (13,)


def test_uniform_is_bce_plus_plain_sum() -> None:
    student, teacher = fake_out(seed=16), fake_out(seed=17)
    loss = build_loss("nmtd")
    assert loss.params is None and list(loss.state_dict()) == []
    total = loss(student, teacher, LABELS)
    terms = expected_terms(student, teacher)
    assert total.item() == pytest.approx(loss.terms["bce"].item() + sum(t.item() for t in terms.values()), rel=1e-5)
    assert MTDLoss(weighting="uniform")(student, teacher, LABELS).item() == pytest.approx(total.item(), rel=1e-6)


def test_layer_subsets_and_fig3_names() -> None:
    loss = MTDLoss(layers=["AV1", "F4"])  # given out of order: the official order is kept
    assert loss.task_names == ["bce", "cad/fusion/3", "cad/av/0", "vr/fusion/3", "vr/av/0"]
    assert loss.params.shape == (5,)
    assert MTDLoss(layers=[("fusion", 3), ("av", 0)]).task_names == loss.task_names
    assert MTDLoss(layers=["fusion/3", ["av", 0]]).task_names == loss.task_names
    assert MTDLoss(layers=["F4", "AV1"], n_weights=13).task_names == [
        "bce",
        "cad/fusion/3+vr/fusion/3",
        "cad/av/0+vr/av/0",
    ]
    student, teacher = fake_out(seed=18), fake_out(seed=19)
    loss(student, teacher, LABELS)
    assert not any(name.startswith(("cad/va", "vr/va")) for name in loss.terms)
    for bad in (["F5"], ["XY1"], [("va", 4)], ["F1", "F1"], []):
        with pytest.raises(UserError):
            MTDLoss(layers=bad)


def test_cad_only_and_vr_only_table2() -> None:
    student, teacher = fake_out(seed=20), fake_out(seed=21)
    cad_only = build_loss("minilm", terms=["cad"])
    cad_only(student, teacher, LABELS)
    assert cad_only.task_names == ["bce", "cad/fusion/3"]
    vr_only = build_loss("minilm", terms=("vr",))
    total = vr_only(student, teacher, LABELS)
    expected = vr_loss(student.values["fusion"][3], teacher.values["fusion"][3]) + vr_only.terms["bce"]
    assert total.item() == pytest.approx(expected.item(), rel=1e-5)
    assert MTDLoss(terms=("cad",), n_weights=25).params.shape == (13,)
    with pytest.raises(UserError):
        MTDLoss(terms=("qk",))


def test_quirk_flags_change_reduction_and_va_treatment() -> None:
    student, teacher = fake_out(seed=22), fake_out(seed=23)
    mean = MTDLoss(weighting="uniform")
    batchmean = MTDLoss(weighting="uniform", quirks=Quirks(kl_reduction="batchmean"))
    mean(student, teacher, LABELS)
    batchmean(student, teacher, LABELS)
    for name, tk in (("cad/fusion/2", 5), ("vr/fusion/2", 5), ("vr/va/1", 16), ("cad/av/0", 5)):
        assert (batchmean.terms[name] / mean.terms[name]).item() == pytest.approx(tk, rel=1e-4)
    masked = MTDLoss(weighting="uniform", va_clamp=False)
    masked_by_quirk = MTDLoss(weighting="uniform", quirks={"va_cad_clamp": False})
    masked(student, teacher, LABELS)
    masked_by_quirk(student, teacher, LABELS)
    clean = expected_terms(student, teacher, va_clamp=False)
    for layer in range(4):
        name = f"cad/va/{layer}"
        assert masked.terms[name].item() == pytest.approx(clean[name].item(), rel=1e-5)
        assert masked_by_quirk.terms[name].item() == pytest.approx(clean[name].item(), rel=1e-5)
        assert masked.terms[name].item() != pytest.approx(mean.terms[name].item(), rel=1e-3)
    with pytest.raises(UserError, match="kl_reduction"):
        MTDLoss(quirks=Quirks(kl_reduction="sum"))


def test_gradients_reach_student_and_params_not_teacher() -> None:
    student = fake_out(seed=24, grad=True)
    teacher = fake_out(seed=25, grad=True)  # even a teacher that requires grad receives none
    loss = MTDLoss()
    total = loss(student, teacher, LABELS)
    total.backward()
    assert torch.isfinite(total)
    for block in BLOCK_ORDER:
        for layer in range(4):
            assert student.attention_logits[block][layer].grad.abs().sum() > 0
            assert student.values[block][layer].grad.abs().sum() > 0
            assert teacher.attention_logits[block][layer].grad is None
            assert teacher.values[block][layer].grad is None
    assert student.logits.grad.abs().sum() > 0 and teacher.logits.grad is None
    assert loss.params.grad is not None and (loss.params.grad != 0).all()
    # and it works with a teacher that never required grad (no_grad capture)
    MTDLoss()(fake_out(seed=26, grad=True), fake_out(seed=27), LABELS).backward()


def test_state_dict_round_trip_and_grad_clip_hook() -> None:
    loss = MTDLoss(grad_clip=0.5)
    with torch.no_grad():
        loss.params.mul_(3.0)
    other = MTDLoss()
    other.load_state_dict(loss.state_dict())
    assert torch.equal(other.params, loss.params)
    assert other.max_grad_norm is None and other.clip_grad_norm_() is None
    total = loss(fake_out(seed=28, grad=True), fake_out(seed=29), LABELS) * 1000
    total.backward()
    before = loss.clip_grad_norm_()
    assert before > 0.5
    assert loss.params.grad.norm().item() == pytest.approx(0.5, rel=1e-4)
    with pytest.raises(UserError):
        MTDLoss(grad_clip=-1.0)


def test_input_errors() -> None:
    with pytest.raises(UserError, match="teacher"):
        MTDLoss()(fake_out(), None, LABELS)
    with pytest.raises(UserError, match="labels"):
        MTDLoss()(fake_out(), fake_out(), torch.ones(2))
    with pytest.raises(UserError, match="student's captured behaviour has no layer fusion/0"):
        MTDLoss()(FakeOut(logits=torch.zeros(3)), fake_out(), LABELS)  # student run without capture
    with pytest.raises(UserError, match="weighting"):
        MTDLoss(weighting="gradnorm")
    with pytest.raises(UserError, match="n_weights"):
        MTDLoss(n_weights=12)
    with pytest.raises(UserError, match="alpha"):
        MTDLoss(weighting="uw", alpha=2.0)
    # BCE needs no teacher
    bce = build_loss("bce")
    assert not bce.needs_teacher and MTDLoss.needs_teacher
    logits = torch.tensor([0.0, 2.0, -1.0])
    got = bce(FakeOut(logits=logits), None, LABELS)
    manual = -(math.log(0.5) + math.log(1 - 1 / (1 + math.exp(-2.0))) + math.log(1 / (1 + math.exp(1.0)))) / 3
    assert got.item() == pytest.approx(manual, rel=1e-6)
    assert set(bce.terms) == {"bce", "total"}


# ---------------------------------------------------------------- registry


def test_registry_names_and_errors() -> None:
    build_loss("bce")  # makes sure every built-in module is imported
    assert {"bce", "kd", "rkd", "minilm", "fitnets", "nmtd", "aw", "mtd"} <= set(LOSSES)
    assert LOSSES["mtd"] is MTDLoss
    with pytest.raises(UserError, match=r"unknown loss 'mdt'; known losses: .*mtd"):
        build_loss("mdt")
    with pytest.raises(UserError, match=r"unknown option\(s\) weighting.*accepts: layers"):
        build_loss("nmtd", weighting="uw")
    with pytest.raises(UserError, match="n_weight"):
        build_loss("mtd", n_weight=13)


def test_register_decorator_adds_a_loss() -> None:
    @register("test-only-double-bce", family="vocalist")
    class DoubleBCE(torch.nn.Module):
        needs_teacher = False

        def __init__(self, factor: float = 2.0) -> None:
            super().__init__()
            self.factor = factor

        def forward(self, student_out, teacher_out, labels):
            return self.factor * torch.nn.functional.binary_cross_entropy_with_logits(student_out.logits, labels)

    try:
        loss = build_loss("test-only-double-bce", factor=3.0)
        assert loss.factor == 3.0 and loss.registry_name == "test-only-double-bce"
        with pytest.raises(UserError, match="factor"):
            build_loss("test-only-double-bce", scale=1.0)
        with pytest.raises(ValueError, match="already registered"):
            register("test-only-double-bce", family="vocalist")(type("Other", (torch.nn.Module,), {}))
    finally:
        LOSSES.pop("test-only-double-bce", None)
