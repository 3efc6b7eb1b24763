"""EDAM / EDAM-S / EDAM-T, CRD (memory, sampling, NCE), KD and the eq. (1) objective."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from mtdistill.core.errors import UserError
from mtdistill.distill import build_loss
from mtdistill.distill.mult.crd import ContrastMemory, NegativeSampler, nce_loss
from mtdistill.distill.mult.edam import edam_cross_entropy, edam_pair_loss, interpolation_matrix, temp_log_softmax
from mtdistill.distill.mult.objective import hinton_kd
from mtdistill.models.mult.students import CONFIGURATIONS, student_for
from mtdistill.models.mult.teacher import MulT, MulTOutput
from mtdistill.nn.crossmodal import offset_future_mask


@pytest.fixture(autouse=True)
def one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def masked_logits(b=2, h=3, tq=5, tk=7, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, h, tq, tk, generator=g) + offset_future_mask(tq, tk)


@pytest.mark.parametrize("tau", [1.0, 2.0])
def test_edam_equals_kl_plus_teacher_entropy(tau):
    zs, zt = masked_logits(seed=1, tq=7), masked_logits(seed=2, tq=7)  # square: causal mask with -inf entries
    assert torch.isneginf(zs).any()
    loss = edam_pair_loss([zs], [zt], [(0, 0)], tau=tau)
    p_t = torch.softmax(zt / tau, -1)
    log_ps = torch.log_softmax(zs / tau, -1)
    log_pt = torch.log_softmax(zt / tau, -1)
    live = p_t > 0
    kl = torch.where(live, p_t * (log_pt - log_ps), torch.zeros(())).sum(-1)
    entropy = torch.where(live, -p_t * log_pt, torch.zeros(())).sum(-1)
    assert torch.isfinite(loss)
    assert torch.allclose(loss, (kl + entropy).mean(), atol=1e-5)
    # identical maps: the loss is the teacher entropy alone (KL = 0)
    assert torch.allclose(edam_pair_loss([zt], [zt], [(0, 0)], tau=tau), entropy.mean(), atol=1e-5)


def test_edam_gradient_equals_kl_gradient():
    zs = masked_logits(seed=3, tq=7).requires_grad_(True)
    zt = masked_logits(seed=4, tq=7)
    edam_pair_loss([zs], [zt], [(0, 0)]).backward()
    g_edam = zs.grad.clone()
    zs.grad = None
    p_t = torch.softmax(zt, -1)
    log_ps = torch.log_softmax(zs, -1)
    kl = torch.where(p_t > 0, p_t * (torch.log(p_t.clamp_min(1e-30)) - log_ps), torch.zeros(())).sum(-1).mean()
    kl.backward()
    assert torch.allclose(g_edam.nan_to_num(), zs.grad.nan_to_num(), atol=1e-6)


def test_temperature_softmax_is_eq_11_and_masked_entries_contribute_zero():
    z = torch.tensor([[1.0, 2.0, float("-inf")]])
    assert torch.allclose(
        temp_log_softmax(z, 2.0).exp(),
        torch.tensor([[math.exp(0.5), math.exp(1.0), 0.0]]) / (math.exp(0.5) + math.exp(1.0)),
    )
    p = torch.tensor([[0.5, 0.5, 0.0]])
    assert torch.allclose(
        edam_cross_entropy(p, temp_log_softmax(z, 1.0)),
        torch.tensor(
            [-0.5 * (math.log(math.exp(1) / (math.e + math.e**2)) + math.log(math.e**2 / (math.e + math.e**2)))]
        ),
    )


def test_edam_refuses_mismatched_maps_and_masks():
    with pytest.raises(UserError, match="edam_t"):
        edam_pair_loss([masked_logits(tq=5)], [masked_logits(tq=6)], [(0, 0)])
    zs = masked_logits(tq=7)
    zt = torch.randn_like(zs)  # the teacher attends where the student is masked
    with pytest.raises(UserError, match="identical masks"):
        edam_pair_loss([zs], [zt], [(0, 0)])
    with pytest.raises(UserError, match="heads: mean"):
        edam_pair_loss([masked_logits(h=2)], [masked_logits(h=3)], [(0, 0)])
    zs, zt = masked_logits(h=2, seed=5), masked_logits(h=3, seed=6)
    head_mean = edam_pair_loss([zs], [zt], [(0, 0)], heads="mean")
    p_s, p_t = torch.softmax(zs, -1).mean(1), torch.softmax(zt, -1).mean(1)
    manual = torch.where(p_t > 0, -p_t * torch.log(p_s), torch.zeros(())).sum(-1).mean()
    assert torch.allclose(head_mean, manual, atol=1e-5)


def test_interpolation_matrix_resamples_linearly():
    w = interpolation_matrix(5, 3)
    assert torch.allclose(w.sum(1), torch.ones(5))
    assert torch.allclose(w @ torch.tensor([0.0, 1.0, 2.0]), torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0]))


def _models(number=5, edam_s=True):
    dims, lengths = (12, 6, 5), (6, 24, 24)
    conf = CONFIGURATIONS[number]
    teacher = MulT(orig_dims=dims, mode=conf.teacher_mode, output_dim=7, d=8, layers=2, heads=2).eval()
    student = student_for(number, teacher, lengths=lengths, vision_dim=5, edam_s=edam_s, d=8, layers=2, heads=2)
    g = torch.Generator().manual_seed(0)
    batch = {
        "text": torch.randn(6, 6, 12, generator=g),
        "audio": torch.randn(6, 24, 6, generator=g),
        "vision": torch.randn(6, 24, 5, generator=g),
        "index": torch.arange(6),
        "class7": torch.tensor([0, 1, 2, 3, 4, 5]),
    }
    return conf, teacher, student, batch


def test_edam_s_and_edam_t_losses_train_their_parameters():
    conf, teacher, student, batch = _models()
    with torch.no_grad():
        t_out = teacher.forward_batch(batch, capture=True)
    loss = build_loss("edam_s", pairs=[list(p) for p in conf.pairs])
    total = loss(student.forward_batch(batch, capture=True), t_out, batch["class7"])
    assert set(loss.terms) >= {"ce", "kd", "total", "edam/lv__lv", "edam/av__av"}
    assert torch.allclose(total, loss.terms["ce"] + loss.terms["kd"])
    total.backward()
    assert student.adapters["l"].weight.grad.abs().sum() > 0

    _, _, native, _ = _models(edam_s=False)
    s_out = native.forward_batch(batch, capture=True)
    assert s_out.attention_logits["lv"][0].shape[-2:] == (24, 24) != t_out.attention_logits["lv"][0].shape[-2:]
    edam_t = build_loss("edam_t", pairs=[list(p) for p in conf.pairs])
    with pytest.raises(UserError, match="set up"):
        edam_t(s_out, t_out, batch["class7"])
    edam_t.setup(s_out, t_out)
    assert len(edam_t.resamplers) == 4  # 2 pairs x 2 layers
    edam_t(s_out, t_out, batch["class7"]).backward()
    res = edam_t.resamplers["lv__lv__0_0"]
    assert res.query.weight.shape == (24, 6) and torch.isfinite(res.query.weight.grad).all()
    assert res.key.weight.grad.abs().sum() > 0
    assert all(torch.isfinite(p.grad).all() for p in native.parameters() if p.grad is not None)
    assert all(p.grad is None for p in teacher.parameters())


def test_crd_memory_update_uses_momentum_and_renormalises():
    mem = ContrastMemory(feat_dim=4, n_data=10, nce_k=3, nce_m=0.5)
    before = mem.memory_v1.clone()
    v1 = F.normalize(torch.randn(2, 4), dim=1)
    v2 = F.normalize(torch.randn(2, 4), dim=1)
    index = torch.tensor([3, 7])
    idx = torch.tensor([[3, 0, 1, 2], [7, 4, 5, 6]])
    out_v1, out_v2 = mem(v1, v2, index, idx)
    assert out_v1.shape == out_v2.shape == (2, 4)
    expected = F.normalize(0.5 * before[index] + 0.5 * v1, dim=1)
    assert torch.allclose(mem.memory_v1[index], expected, atol=1e-6)
    untouched = [i for i in range(10) if i not in (3, 7)]
    assert torch.equal(mem.memory_v1[untouched], before[untouched])
    z = float(mem.z_v1)
    assert z > 0
    mem(v1, v2, index, idx)
    assert float(mem.z_v1) == z  # Z is fixed on the first batch


def test_nce_loss_formula():
    scores = torch.tensor([[0.5, 0.1, 0.2]])
    n, k = 4, 2
    pn = k / n
    expected = -(
        math.log(0.5 / (0.5 + pn + 1e-7)) + math.log(pn / (0.1 + pn + 1e-7)) + math.log(pn / (0.2 + pn + 1e-7))
    )
    assert math.isclose(float(nce_loss(scores, n)), expected, rel_tol=1e-6)


def test_class_aware_negatives_never_share_the_anchor_class():
    classes = torch.tensor([0, 0, 1, 1, 1, 2, 3, 3, 0, 2])
    sampler = NegativeSampler(10, classes)
    index = torch.tensor([0, 2, 5, 6])
    idx = sampler(index, 200)
    assert torch.equal(idx[:, 0], index)
    for row, i in zip(idx, index, strict=True):
        assert (classes[row[1:]] != classes[i]).all()
        assert set(row[1:].tolist()) == {j for j in range(10) if classes[j] != classes[i]}  # all reachable
    uniform = NegativeSampler(10)(index, 50)
    assert uniform.min() >= 0 and uniform.max() < 10


@pytest.mark.parametrize("level", ["final", "penultimate", "post_attention", "attention"])
def test_crd_loss_at_every_level_decreases_on_tiny_data(level):
    torch.manual_seed(0)
    conf, teacher, student, batch = _models()
    with torch.no_grad():
        t_out = teacher.forward_batch(batch, capture=True)
    loss = build_loss("crd", level=level, n_data=6, pairs=[list(p) for p in conf.pairs], nce_k=4, feat_dim=8)
    loss.setup(student.forward_batch(batch, capture=True), t_out)
    n_points = {"final": 1, "penultimate": 1, "post_attention": 4, "attention": 4}[level]
    assert len(loss.criteria) == n_points
    opt = torch.optim.Adam(list(student.parameters()) + list(loss.parameters()), lr=1e-2)
    values = []
    for _ in range(15):
        opt.zero_grad()
        total = loss(student.forward_batch(batch, capture=True), t_out, batch["class7"], batch["index"])
        total.backward()
        opt.step()
        values.append(float(loss.terms["kd"]))
    assert all(math.isfinite(v) for v in values)
    assert sum(values[-3:]) < sum(values[:3])
    with pytest.raises(UserError, match="index"):
        loss(student.forward_batch(batch, capture=True), t_out, batch["class7"])


def test_kd_and_objective_weights():
    s, t = torch.randn(4, 7), torch.randn(4, 7)
    kd = hinton_kd(s, t, 4.0)
    manual = 16 * (F.softmax(t / 4, 1) * (F.log_softmax(t / 4, 1) - F.log_softmax(s / 4, 1))).sum(1).mean()
    assert torch.allclose(kd, manual, atol=1e-6)
    labels = torch.tensor([0, 1, 2, 3])
    loss = build_loss("mult_kd", alpha=0.1, beta=0.9, temperature=4.0)
    total = loss(MulTOutput(s, s, s), MulTOutput(t, t, t), labels)
    assert torch.allclose(total, 0.1 * F.cross_entropy(s, labels) + 0.9 * kd, atol=1e-6)
    assert not build_loss("mult_ce").needs_teacher
    with pytest.raises(UserError, match="unknown option"):
        build_loss("edam", temperature=2)
    with pytest.raises(UserError, match="n_data"):
        build_loss("crd", level="final")
