"""The losses on real captured behaviour: a tiny VocaLiST teacher and student (different widths, 8 heads each)."""

from __future__ import annotations

import pytest
import torch

from mtdistill.distill import LOSSES, MTDLoss, build_loss
from mtdistill.models import VocaLiST, VocaLiSTConfig

TEACHER_D = 48  # head_dim 6 vs the tiny student's 4: the losses must not care


@pytest.fixture(scope="module")
def pair() -> tuple[VocaLiST, VocaLiST, torch.Tensor, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    student = VocaLiST.tiny()
    teacher = VocaLiST(VocaLiSTConfig(d_model=TEACHER_D, widths=(4, 8, 8, 16, TEACHER_D)), preset="mtd").eval()
    video = torch.rand(2, 15, 48, 96) * 255
    mel = torch.randn(2, 1, 80, 16)
    labels = torch.tensor([1.0, 0.0])
    return student, teacher, video, mel, labels


@pytest.mark.slow  # ~8 s on an idle 2-core CPU (the first Conv3d backward dominates), 35 s on a loaded one
def test_mtd_uw25_lowers_the_loss_in_three_adam_steps(pair) -> None:
    student, teacher, video, mel, labels = pair
    student = VocaLiST.tiny()
    student.load_state_dict(pair[0].state_dict())
    student.eval()  # dropout off, BN frozen: a fixed objective, so three small steps must go down
    with torch.no_grad():
        teacher_out = teacher(video, mel, capture=True)
    assert torch.isinf(teacher_out.attention_logits["va"][0]).sum() == 2 * 8 * 10  # the VA mask is there
    loss_fn = MTDLoss(weighting="uw", n_weights=25)
    optimizer = torch.optim.Adam([{"params": student.parameters()}, {"params": loss_fn.parameters()}], lr=1e-3)
    history, student_part = [], []
    for _ in range(4):
        total = loss_fn(student(video, mel, capture=True), teacher_out, labels)
        history.append(total.item())
        student_part.append((loss_fn.terms["bce"] + loss_fn.terms["distill"]).item())
        optimizer.zero_grad()
        total.backward()
        assert loss_fn.params.grad is not None and torch.isfinite(loss_fn.params.grad).all()
        assert all(p.grad is None for p in teacher.parameters())
        optimizer.step()
    assert all(torch.isfinite(torch.tensor(history)))
    assert history[-1] < history[0], history
    assert student_part[-1] < student_part[0], student_part  # not only the weights: the student learns too
    assert len([k for k in loss_fn.terms if k.startswith(("cad/", "vr/"))]) == 24


def test_every_vocalist_loss_runs_on_real_outputs(pair) -> None:
    student, teacher, video, mel, labels = pair
    with torch.no_grad():
        teacher_out = teacher(video, mel, capture=True)
    student_out = student(video, mel, capture=True)
    options = {"fitnets": {"teacher_dim": TEACHER_D, "student_dim": 32}}
    for name in ("bce", "kd", "rkd", "minilm", "fitnets", "nmtd", "aw", "mtd"):
        loss = build_loss(name, **options.get(name, {}))
        total = loss(student_out, teacher_out if loss.needs_teacher else None, labels)
        assert total.ndim == 0 and torch.isfinite(total), name
        assert loss.terms["total"].item() == pytest.approx(total.item()), name
        assert LOSSES[name] is type(loss)
    # the clean VA variant (masked KL) is finite on real -inf logits; the released formula without clamp is not
    clean = MTDLoss(va_clamp=False)(student_out, teacher_out, labels)
    assert torch.isfinite(clean)
    from mtdistill.distill import cad_loss

    assert torch.isnan(cad_loss(student_out.attention_logits["va"][0], teacher_out.attention_logits["va"][0]))
