"""The model core against the official spec: counts, keys, shapes, masks, PE, heads, capture, checkpoints."""

from __future__ import annotations

import json
import math
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mtdistill.core.errors import UserError
from mtdistill.core.quirks import Quirks
from mtdistill.models import VocaLiST, VocaLiSTConfig
from mtdistill.models.presets import frames_to_input, windows_to_video
from mtdistill.nn.crossmodal import CrossModalEncoder, offset_future_mask, sinusoid_table

REF = Path(__file__).parent / "data" / "reference"


def _reference(name: str) -> list[dict]:
    return json.loads((REF / name).read_text())["state_dict"]


@pytest.fixture(scope="module")
def student() -> VocaLiST:
    torch.manual_seed(0)
    return VocaLiST.student().eval()


@pytest.fixture(scope="module")
def tiny() -> VocaLiST:
    torch.manual_seed(0)
    return VocaLiST.tiny().eval()


def _inputs(b: int = 2, frames: int = 5, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    video = torch.rand(b, 3 * frames, 48, 96, generator=g) * 255
    mel = torch.rand(b, 1, 80, 16 * frames // 5, generator=g) * 8 - 4
    return video, mel


@pytest.mark.parametrize(
    ("factory", "ref", "count_key"),
    [
        (VocaLiST.teacher, "vocalist_state_dict.json", "vocalist_teacher"),
        (VocaLiST.student, "mtdvocalist_student_state_dict.json", "mtdvocalist_student"),
    ],
)
def test_keys_shapes_counts_match_official(factory, ref, count_key):
    model = factory()
    counts = json.loads((REF / "param_counts.json").read_text())[count_key]
    assert model.num_parameters() == counts["trainable_params"]
    for module, n in counts["per_module"].items():
        assert sum(p.numel() for p in getattr(model, module).parameters()) == n, module
    sd = model.state_dict()
    expected = _reference(ref)
    assert [e["key"] for e in expected] == list(sd)  # same keys, same order
    for e in expected:
        assert list(sd[e["key"]].shape) == e["shape"], e["key"]
        assert str(sd[e["key"]].dtype) == f"torch.{e['dtype']}", e["key"]
    assert sum(t.numel() for t in sd.values()) == counts["state_dict_numel_incl_buffers"]


def test_official_numbers_exact():
    assert VocaLiST.teacher().num_parameters() == 80_106_561
    assert VocaLiST.student().num_parameters() == 13_280_961


def test_va_mask_has_ten_entries_and_others_none(tiny):
    video, mel = _inputs()
    with torch.no_grad():
        out = tiny(video, mel, capture=True)
    for layer in range(4):
        va = out.attention_logits["va"][layer]
        assert va.shape == (2, 8, 5, 16)
        masked = torch.isinf(va[0, 0])
        assert int(masked.sum()) == 10
        # query i cannot see keys j >= 12 + i
        for i in range(5):
            assert masked[i].tolist() == [j >= 12 + i for j in range(16)]
        for block in ("av", "fusion"):
            assert torch.isfinite(out.attention_logits[block][layer]).all()


def test_offset_mask_formula():
    m = offset_future_mask(5, 16)
    assert int(torch.isinf(m).sum()) == 10
    assert int(torch.isinf(offset_future_mask(16, 5)).sum()) == 0
    causal = offset_future_mask(4, 4)
    assert torch.isinf(causal).tolist() == [[j > i for j in range(4)] for i in range(4)]


def test_pe_rule_channel0_zero_gives_zero_pe():
    enc = CrossModalEncoder(8, 2, 1)
    x = torch.zeros(5, 1, 8)
    x[:, 0, 0] = torch.tensor([0.5, 0.0, 0.3, 0.0, 0.2])
    assert enc.embed_positions.positions(x)[:, 0].tolist() == [1, 0, 3, 0, 5]
    pe = enc.embed_positions(x)
    table = sinusoid_table(6, 8)
    assert torch.equal(pe[1, 0], torch.zeros(8)) and torch.equal(pe[2, 0], table[3])
    # row p = [sin(p w), cos(p w)] concatenated, w_i = exp(-i ln(1e4)/(h-1))
    w = torch.exp(-torch.arange(4) * math.log(10000) / 3)
    assert torch.allclose(table[3], torch.cat([torch.sin(3 * w), torch.cos(3 * w)]), atol=1e-6)
    clean = CrossModalEncoder(8, 2, 1, data_dependent_pe=False)
    assert clean.embed_positions.positions(x)[:, 0].tolist() == [1, 2, 3, 4, 5]


def test_random_init_video_tokens_get_no_pe(student):
    """At random init the video prenet's channel 0 is ReLU-zero for most tokens (design.md §1.6)."""
    video, _ = _inputs()
    with torch.no_grad():
        tokens = student.encode_video(video)
    pos = student.av_transformer.embed_positions.positions(tokens)
    assert tokens.shape == (5, 2, 200)
    assert (pos == 0).float().mean() > 0.5


def test_head_ordering_is_fairseq(tiny):
    """Capture head h of sample b equals fairseq's flattened index b*H + h of (T, B*H, hd) views."""
    enc = tiny.va_transformer
    attn = enc.layers[0].self_attn
    torch.manual_seed(1)
    xq, xk = torch.randn(5, 2, 32), torch.randn(16, 2, 32)
    with torch.no_grad():
        _, cap = enc(xq, xk, capture=True)
        q_in = enc.layers[0].layer_norms[0](enc.embed(xq))
        k_in = enc.layers[0].layer_norms[0](enc.embed(xk))
        d, h, hd = 32, 8, 4
        q = F.linear(q_in, attn.in_proj_weight[:d], attn.in_proj_bias[:d]) * hd**-0.5
        k = F.linear(k_in, attn.in_proj_weight[d : 2 * d], attn.in_proj_bias[d : 2 * d])
        qf = q.contiguous().view(5, 2 * h, hd).transpose(0, 1)
        kf = k.contiguous().view(16, 2 * h, hd).transpose(0, 1)
        logits = torch.bmm(qf, kf.transpose(1, 2)) + offset_future_mask(5, 16)
    for b in range(2):
        for head in range(h):
            assert torch.allclose(cap.attention_logits[0][b, head], logits[b * h + head], atol=1e-5)


def test_kv_embedded_once_and_shared_by_layers(tiny):
    enc = tiny.av_transformer
    torch.manual_seed(2)
    xq, xk = torch.randn(16, 3, 32), torch.randn(5, 3, 32)
    with torch.no_grad():
        _, cap = enc(xq, xk, capture=True)
        emb = enc.embed(xk)
        for l, layer in enumerate(enc.layers):
            a = layer.self_attn
            v = F.linear(layer.layer_norms[0](emb), a.in_proj_weight[64:], a.in_proj_bias[64:])
            assert torch.allclose(cap.values[l], v.view(5, 3, 8, 4).permute(1, 2, 0, 3), atol=1e-5)


def test_capture_shapes_and_fast_path_equal(student):
    video, mel = _inputs(3)
    with torch.no_grad():
        fast = student(video, mel)
        out = student(video, mel, capture=True)
    assert fast.shape == (3,) and out.logits.shape == (3,)
    assert torch.allclose(fast, out.logits, rtol=1e-5, atol=1e-6)
    expect = {"av": (16, 5), "va": (5, 16), "fusion": (16, 5)}
    for block, (tq, tk) in expect.items():
        assert len(out.attention_logits[block]) == 4
        for layer in range(4):
            assert out.attention_logits[block][layer].shape == (3, 8, tq, tk)
            assert out.values[block][layer].shape == (3, 8, tk, 25)
            assert out.hidden[block][layer].shape == (3, tq, 200)
    assert out.pooled.shape == (3, 200)
    assert out.tokens["video"].shape == (3, 5, 200) and out.tokens["audio"].shape == (3, 16, 200)


def test_any_number_of_frames(tiny):
    video, mel = _inputs(2, frames=10)
    with torch.no_grad():
        assert tiny.encode_video(video).shape == (10, 2, 32)
        assert tiny.encode_audio(mel).shape == (32, 2, 32)
        assert tiny(video, mel).shape == (2,)


def test_self_attention_mode_for_mult():
    enc = CrossModalEncoder(16, 4, 2).eval()
    x = torch.randn(7, 2, 16)
    with torch.no_grad():
        y, cap = enc(x, capture=True)
        assert torch.allclose(enc(x), y, atol=1e-5)
    assert cap.attention_logits[0].shape == (2, 4, 7, 7)
    assert int(torch.isinf(cap.attention_logits[0][0, 0]).sum()) == 21  # causal


def test_presets():
    frames = np.zeros((6, 48, 96, 3), np.uint8)
    frames[..., 0] = 200  # red
    v = frames_to_input(frames, "vocalist")
    m = frames_to_input(frames, "mtd")
    assert v.shape == (6, 3, 48, 96)
    assert torch.allclose(v[:, 2], torch.full((6, 48, 96), 200 / 255)) and v[:, 0].abs().max() == 0  # BGR, [0,1]
    assert torch.equal(m[:, 0], torch.full((6, 48, 96), 200.0))  # RGB, 0..255
    w = windows_to_video(m, [0, 1])
    assert w.shape == (2, 15, 48, 96) and torch.equal(w[1, 3:6], m[2])
    with pytest.raises(UserError, match="--preset"):
        frames_to_input(frames, None)


def _official_like(model: VocaLiST, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for k, v in model.state_dict().items():
        if v.dtype.is_floating_point:
            sd[k] = torch.randn(v.shape, generator=g) * 0.05 + (1.0 if "running_var" in k else 0.0)
        else:
            sd[k] = v.clone()
    return sd


def test_official_formats_load_strictly(tmp_path, student):
    sd = _official_like(student)
    ref = VocaLiST.student(preset=None)
    ref.load_state_dict(sd, strict=True)  # our module accepts the official key names
    ref.eval()
    video, mel = _inputs()
    with torch.no_grad():
        want = ref(video, mel)
    variants = {
        "vocalist.pth": {
            "state_dict": sd,
            "optimizer": {"state": {}, "param_groups": []},
            "global_step": 5,
            "global_epoch": 1,
        },
        "pure.pth": {"state_dict": sd},
        "ddp.pth": {"state_dict": {f"module.{k}": v for k, v in sd.items()}},
        "bare.pth": sd,
        "nobuffers.pth": {"state_dict": {k: v for k, v in sd.items() if "version" not in k and "_float" not in k}},
    }
    for name, obj in variants.items():
        torch.save(obj, tmp_path / name)
        model = VocaLiST.from_checkpoint(tmp_path / name)
        assert not model.training and model.preset is None and model.config.d_model == 200
        got = model.state_dict()
        fairseq_buffers = ("version", "_float_tensor")
        assert all(torch.equal(got[k], sd[k]) for k in sd if not k.endswith(fairseq_buffers)), name
    with torch.no_grad():
        assert torch.equal(model(video, mel), want)
    assert VocaLiST.from_checkpoint(tmp_path / "pure.pth", preset="mtd").preset == "mtd"


class _Scheduler:  # stands in for the StepLR pickled inside MTD training checkpoints
    def __init__(self) -> None:
        self.step_size, self.gamma = 20, 0.8


class _Evil:
    def __reduce__(self):
        import os

        return (os.system, ("touch /tmp/mtdistill_pwned_marker",))


def test_training_checkpoint_with_objects_loads_without_running_code(tmp_path):
    model = VocaLiST.tiny()
    marker = Path("/tmp/mtdistill_pwned_marker")
    marker.unlink(missing_ok=True)
    ckpt = {
        "state_dict": _official_like(model),
        "aw_loss": {"params": torch.ones(13)},
        "scheduler": {"after_scheduler": _Scheduler(), "evil": _Evil()},
        "lr": 5e-5,
    }
    torch.save(ckpt, tmp_path / "mtd_train.pth", pickle_protocol=pickle.HIGHEST_PROTOCOL)
    marker.unlink(missing_ok=True)  # torch.save does not run __reduce__'s callable, but be sure
    # tiny is not an official size, so loading must refuse it with one line - after reading it safely
    with pytest.raises(UserError, match="neither"):
        VocaLiST.from_checkpoint(tmp_path / "mtd_train.pth")
    assert not marker.exists()


def test_training_checkpoint_student_loads(tmp_path, student):
    sd = _official_like(student, seed=3)
    torch.save(
        {"state_dict": sd, "aw_loss": {"params": torch.ones(25)}, "scheduler": {"x": _Scheduler()}},
        tmp_path / "best.pth",
    )
    model = VocaLiST.from_checkpoint(tmp_path / "best.pth", preset="mtd")
    assert torch.equal(model.state_dict()["fc.weight"], sd["fc.weight"])


def test_round_trip_our_format(tmp_path, tiny):
    path = tiny.save_checkpoint(tmp_path / "m.safetensors", extra={"note": "test"})
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]  # no temporary left behind
    loaded = VocaLiST.from_checkpoint(path)
    assert loaded.preset == "mtd" and loaded.config == tiny.config and not loaded.training
    video, mel = _inputs()
    with torch.no_grad():
        assert torch.equal(loaded(video, mel), tiny(video, mel))
    clean = VocaLiST(VocaLiSTConfig(d_model=32, widths=(4, 8, 8, 16, 32)), "vocalist", quirks=Quirks.clean())
    p2 = clean.save_checkpoint(tmp_path / "clean.safetensors")
    back = VocaLiST.from_checkpoint(p2)
    assert back.quirks == Quirks.clean() and back.preset == "vocalist"
    assert not back.va_transformer.attn_mask


def test_checkpoint_errors(tmp_path, student):
    cases = {}
    (tmp_path / "empty.pth").write_bytes(b"")
    cases["empty.pth"] = "empty"
    (tmp_path / "notes.pth").write_text("hello, I am not a checkpoint\n")
    cases["notes.pth"] = "not a readable"
    torch.save({"state_dict": _official_like(student)}, tmp_path / "full.pth")
    data = (tmp_path / "full.pth").read_bytes()
    (tmp_path / "trunc.pth").write_bytes(data[: len(data) // 2])
    cases["trunc.pth"] = "truncated|not a readable"
    sd = _official_like(student)
    sd["fc.weight"] = torch.zeros(200, 100)
    torch.save({"state_dict": sd}, tmp_path / "shape.pth")
    cases["shape.pth"] = "neither"
    torch.save({"state_dict": {"foo": torch.zeros(3)}}, tmp_path / "other.pth")
    cases["other.pth"] = "not a VocaLiST"
    torch.save({"epoch": 3}, tmp_path / "noweights.pth")
    cases["noweights.pth"] = "no model weights"
    tiny_path = VocaLiST.tiny().save_checkpoint(tmp_path / "t.safetensors")
    (tmp_path / "trunc.safetensors").write_bytes(tiny_path.read_bytes()[:1000])
    cases["trunc.safetensors"] = "safetensors"
    cases["missing.pth"] = "not found"
    for name, pattern in cases.items():
        with pytest.raises(UserError, match=pattern) as info:
            VocaLiST.from_checkpoint(tmp_path / name)
        assert "\n" not in str(info.value), name


def test_copy_matching_weights_warm_starts_the_shared_front_end(tmp_path, tiny):
    """model.init_from: the d=32 tiny model's front-end convs up to width 16 go into a d=64 model; the rest stays."""
    src = tiny.save_checkpoint(tmp_path / "tiny.safetensors")
    wide = VocaLiST(VocaLiSTConfig(d_model=64, widths=(4, 8, 8, 16, 64), heads=4), "mtd")
    before = {k: v.clone() for k, v in wide.state_dict().items()}
    copied = set(wide.copy_matching_weights(src))
    theirs, mine = tiny.state_dict(), wide.state_dict()
    assert "vid_prenet.0.conv_block.0.weight" in copied and "aud_prenet.11.conv_block.1.running_var" in copied
    assert "vid_prenet.11.conv_block.0.weight" not in copied  # 16 -> 64 channels here, 16 -> 32 there
    weights = {k for k in copied if not k.endswith((".version", "._float_tensor"))}  # constant fairseq buffers
    assert not any(k.startswith(("av_transformer", "va_transformer", "mem_transformer", "fc.")) for k in weights)
    for k in mine:
        if k in copied:
            assert torch.equal(mine[k], theirs[k]), k
        else:
            assert torch.equal(mine[k], before[k]), k


def test_copy_matching_weights_refuses_a_checkpoint_with_nothing_in_common(tmp_path, tiny):
    from safetensors.torch import save_file

    save_file({"encoder.weight": torch.zeros(3, 3)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(UserError, match="no weight has the name and shape of this model's"):
        tiny.copy_matching_weights(tmp_path / "other.safetensors")
