"""MulT teacher and video-only students: parameter counts, shapes, pairings, masks, options."""

from __future__ import annotations

import pytest
import torch

from mtdistill.core.errors import UserError
from mtdistill.models.mult import MulT, MulTConfig, load_mult_checkpoint
from mtdistill.models.mult.students import CONFIGURATIONS, StudentConfig, VideoStudent, student_for

DIMS = (12, 6, 5)
LENGTHS = (6, 24, 24)
SMALL = dict(d=8, layers=2, heads=2)


@pytest.fixture(autouse=True)
def one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def inputs(b: int = 3, lengths: tuple[int, int, int] = LENGTHS) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "text": torch.randn(b, lengths[0], DIMS[0], generator=g),
        "audio": torch.randn(b, lengths[1], DIMS[1], generator=g),
        "vision": torch.randn(b, lengths[2], DIMS[2], generator=g),
    }


def test_mult_repository_default_has_1073731_parameters():
    model = MulT(orig_dims=(300, 74, 35), d=30, layers=5, heads=5, kernel_sizes=(1, 1, 1), output_dim=1)
    assert model.num_parameters() == 1_073_731
    assert MulT().num_parameters() == 1_073_731


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        (dict(d=40, layers=4, heads=8, kernel_sizes=(1, 3, 3), output_dim=1), 1_549_321),  # MulT paper Table 5
        (dict(d=40, layers=4, heads=8, kernel_sizes=(3, 3, 3), output_dim=7), 1_574_767),  # seed-like teacher
        (dict(d=40, layers=5, heads=8, kernel_sizes=(3, 3, 3), output_dim=7), 1_926_607),
    ],
)
def test_parameter_counts_match_the_analytic_table(kwargs, expected):
    assert MulT(**kwargs).num_parameters() == expected


def test_memory_depth_is_max_layers_3_and_attention_dropout_follows_the_source():
    model = MulT(orig_dims=DIMS, d=8, layers=1, heads=2)
    assert len(model.transformers["l_mem"].layers) == 3
    assert len(model.transformers["la"].layers) == 1
    drop = {n: model.transformers[n].layers[0].self_attn.dropout for n in ("al", "vl", "la", "va", "lv", "av")}
    assert drop == {"al": 0.1, "vl": 0.1, "la": 0.0, "va": 0.0, "lv": 0.0, "av": 0.0}


@pytest.mark.parametrize("mode", ["full", "l", "a", "v"])
def test_teacher_modes_shapes_and_head_width(mode):
    model = MulT(orig_dims=DIMS, mode=mode, output_dim=7, kernel_sizes=(3, 3, 3), **SMALL).eval()
    out = model(**inputs(), capture=True)
    assert out.logits.shape == (3, 7)
    width = 6 * 8 if mode == "full" else 2 * 8
    assert out.last_hs.shape == out.penultimate.shape == (3, width)
    names = {"full": 9, "l": 3, "a": 3, "v": 3}[mode]
    assert len(out.attention_logits) == names
    for name, maps in out.attention_logits.items():
        assert tuple(maps[0].shape[-2:]) == model.map_shapes(LENGTHS)[name]
        assert out.post_attention[name][0].shape[-1] == (16 if name.endswith("_mem") else 8)
    # capture does not change the numbers in eval mode
    assert torch.allclose(model(**inputs()), out.logits, atol=1e-5)


def test_padding_zero_is_mult_faithful_and_shortens_sequences():
    model = MulT(orig_dims=DIMS, kernel_sizes=(3, 3, 3), padding=0, output_dim=7, **SMALL).eval()
    out = model(**inputs(), capture=True)
    assert tuple(out.attention_logits["lv"][0].shape[-2:]) == (LENGTHS[0] - 2, LENGTHS[2] - 2)
    assert model.map_shapes(LENGTHS)["lv"] == (4, 22)


def test_post_attention_matches_a_manual_out_proj():
    model = MulT(orig_dims=DIMS, output_dim=7, **SMALL).eval()
    out = model(**inputs(), capture=True)
    logits = out.attention_logits["vl"][1]
    enc = model.transformers["vl"]
    # values are not exposed in MulTOutput, so rebuild them through the encoder's own capture
    _, rec = enc(model.project(**inputs())["v"], model.project(**inputs())["l"], capture=True)
    ctx = torch.softmax(logits, -1) @ rec.values[1]
    manual = enc.layers[1].self_attn.out_proj(ctx.permute(0, 2, 1, 3).reshape(3, LENGTHS[2], 8))
    assert torch.allclose(manual, out.post_attention["vl"][1], atol=1e-5)


@pytest.mark.parametrize("number", sorted(CONFIGURATIONS))
def test_every_configuration_pairs_maps_of_equal_shape_and_identical_masks(number):
    conf = CONFIGURATIONS[number]
    teacher = MulT(orig_dims=DIMS, mode=conf.teacher_mode, kernel_sizes=(3, 3, 3), output_dim=7, **SMALL).eval()
    student = student_for(number, teacher, lengths=LENGTHS, vision_dim=DIMS[2], **SMALL).eval()
    t_out = teacher(**inputs(), capture=True)
    s_out = student(inputs()["vision"], capture=True)
    assert s_out.logits.shape == (3, 7)
    assert len(conf.pairs) == (9 if number == 1 else 2)
    for s_name, t_name in conf.pairs:
        s_maps, t_maps = s_out.attention_logits[s_name], t_out.attention_logits[t_name]
        assert len(s_maps) == len(t_maps)
        for zs, zt in zip(s_maps, t_maps, strict=True):
            assert zs.shape == zt.shape
            assert torch.equal(torch.isneginf(zs), torch.isneginf(zt))  # same MulT offset mask


def test_configuration_5_is_the_papers_figure_1_student():
    conf = CONFIGURATIONS[5]
    assert conf.student_transformers == ("vv", "lv", "av") and conf.teacher_mode == "full"
    teacher = MulT(orig_dims=DIMS, output_dim=7, **SMALL)
    s = student_for(5, teacher, lengths=LENGTHS, vision_dim=DIMS[2], **SMALL)
    assert s.map_shapes() == {"vv": (24, 24), "lv": (6, 24), "av": (24, 24)}
    # L^ <- V^ query L^ has 6 steps while the video is 24 steps long: a 4:1 strided adapter
    conv = s.adapters["l"]
    assert conv.stride == (4,) and conv.kernel_size == (4,)


@pytest.mark.parametrize(("adapter", "kernel"), [("strided", 10), ("unpadded", 451)])
def test_edam_s_adapters_for_mosei_lengths(adapter, kernel):
    cfg = StudentConfig(adapter=adapter, vision_length=500, proxy_lengths=(50, 500, 500), d=8, layers=1, heads=2)
    student = VideoStudent(cfg)
    assert student.adapters["l"].kernel_size == (kernel,)
    assert student.proxies(torch.zeros(1, 500, 35))["l"].shape == (50, 1, 8)


def test_native_lengths_and_pool_adapter():
    s = VideoStudent(StudentConfig(proxy_lengths=None, vision_length=24, vision_dim=5, **SMALL))
    assert s.map_shapes() == {"vv": (24, 24), "lv": (24, 24), "av": (24, 24)}
    p = VideoStudent(StudentConfig(adapter="pool", vision_length=24, vision_dim=5, proxy_lengths=(6, 24, 24), **SMALL))
    assert p.proxies(torch.randn(2, 24, 5))["l"].shape == (6, 2, 8)


def test_student_9_topology_has_nine_transformers_and_no_projection():
    s = student_for(1, None, lengths=LENGTHS, vision_dim=DIMS[2], **SMALL)
    assert set(s.transformer_names) == {"la", "lv", "l_mem", "al", "av", "a_mem", "vl", "va", "v_mem"}
    assert len(s.core.proj) == 0


def test_checkpoint_round_trip(tmp_path):
    teacher = MulT(orig_dims=DIMS, output_dim=7, **SMALL).eval()
    student = student_for(5, teacher, lengths=LENGTHS, vision_dim=DIMS[2], **SMALL).eval()
    for model in (teacher, student):
        path = model.save_checkpoint(tmp_path / "m.safetensors", extra={"epoch": 1})
        loaded = load_mult_checkpoint(path)
        assert type(loaded) is type(model) and loaded.config == model.config
        x = inputs()
        assert torch.equal(loaded.forward_batch(x), model.forward_batch(x))


def test_bad_inputs_raise_user_errors(tmp_path):
    with pytest.raises(UserError, match="mode"):
        MulTConfig(mode="x")
    with pytest.raises(UserError, match="divisible"):
        MulT(d=30, heads=8)
    model = MulT(orig_dims=DIMS, **SMALL)
    with pytest.raises(UserError, match="expected \\(B, T, 12\\)"):
        model(torch.zeros(1, 4, 7), torch.zeros(1, 4, 6), torch.zeros(1, 4, 5))
    with pytest.raises(UserError, match="1..5"):
        student_for(6)
    with pytest.raises(UserError, match="not found"):
        load_mult_checkpoint(tmp_path / "missing.safetensors")


def test_capture_of_named_transformers_only():
    model = MulT(orig_dims=DIMS, output_dim=7, **SMALL).eval()
    full = model(**inputs(), capture=True)
    part = model(**inputs(), capture={"lv", "av"})
    assert set(part.attention_logits) == {"lv", "av"} and "la" not in part.post_attention
    assert torch.allclose(part.logits, full.logits, atol=1e-5)
    assert torch.allclose(part.penultimate, full.penultimate, atol=1e-5)
    assert torch.allclose(part.attention_logits["lv"][1], full.attention_logits["lv"][1], atol=1e-5)
    assert torch.allclose(part.post_attention["av"][0], full.post_attention["av"][0], atol=1e-5)
    head_only = model(**inputs(), capture=set())
    assert head_only.attention_logits == {} and torch.allclose(head_only.logits, full.logits, atol=1e-5)
