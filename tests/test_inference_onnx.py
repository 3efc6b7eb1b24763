"""ONNX export of VocaLiST.tiny(): parity with PyTorch (max abs diff < 1e-4 on logits), dynamic batch, split
graphs, metadata, int8 copies, and the onnxruntime module inside the evaluation protocol."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mtdistill.cli import main
from mtdistill.core.errors import UserError
from mtdistill.evaluation import utterance_accuracy
from mtdistill.inference.onnx_export import export_onnx, int8_path, split_paths
from mtdistill.inference.onnx_runtime import OnnxFactorisedModel, OnnxSyncModel, load_onnx_model
from mtdistill.models import VocaLiST

TOL = 1e-4


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    torch.manual_seed(0)
    model = VocaLiST.tiny(preset="mtd").eval()
    path = tmp_path_factory.mktemp("onnx") / "tiny.onnx"
    written = export_onnx(model, path, int8=True)
    return model, path, written


def inputs(b: int, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 15, 48, 96, generator=g) * 255, torch.rand(b, 1, 80, 16, generator=g) * 8 - 4


def test_written_files_and_metadata(exported) -> None:
    model, path, written = exported
    names = sorted(p.name for p in written)
    assert names == sorted(
        [
            "tiny.onnx",
            "tiny_video.onnx",
            "tiny_audio.onnx",
            "tiny_backend.onnx",
            "tiny_int8.onnx",
            "tiny_int8_video.onnx",
            "tiny_int8_audio.onnx",
            "tiny_int8_backend.onnx",
        ]
    )
    assert split_paths(int8_path(path))["video"].name == "tiny_int8_video.onnx"
    onnx_model = load_onnx_model(path)
    assert isinstance(onnx_model, OnnxFactorisedModel)
    assert onnx_model.preset == "mtd" and not onnx_model.int8
    assert onnx_model.config_dict["d_model"] == 32
    assert load_onnx_model(int8_path(path)).int8
    assert model.training is False  # export must not flip the model into training mode


@pytest.mark.parametrize("batch", [1, 7])
def test_parity_full_and_factorised(exported, batch: int) -> None:
    model, path, _ = exported
    video, mel = inputs(batch)
    with torch.no_grad():
        ref = model(video, mel)
    onnx_model = load_onnx_model(path)
    full = onnx_model(video, mel)
    fact = onnx_model.backend(onnx_model.encode_video(video), onnx_model.encode_audio(mel))
    assert full.shape == ref.shape == (batch,)
    assert (full - ref).abs().max().item() < TOL
    assert (fact - ref).abs().max().item() < TOL


def test_full_graph_only_model_has_no_fast_path(exported) -> None:
    _, path, _ = exported
    plain = OnnxSyncModel(path)
    assert not hasattr(plain, "encode_video")
    video, mel = inputs(2)
    assert plain(video, mel).shape == (2,)


def test_onnx_module_in_the_protocol_matches_pytorch(exported) -> None:
    model, path, _ = exported
    g = torch.Generator().manual_seed(3)
    frames = torch.rand(20, 3, 48, 96, generator=g) * 255
    mel = np.random.default_rng(3).uniform(-4, 4, (80, 20 * 640 // 200 + 1)).astype(np.float32)
    lengths = (5, 7)
    acc_torch = utterance_accuracy(model, frames, mel, lengths=lengths)
    acc_onnx = utterance_accuracy(load_onnx_model(path), frames, mel, lengths=lengths)
    acc_plain = utterance_accuracy(OnnxSyncModel(path), frames, mel, lengths=lengths)
    assert acc_onnx == acc_torch == acc_plain


def test_sync_through_onnxruntime_matches_pytorch(exported, tmp_path) -> None:
    from mtdistill.data.synthetic import make_talking_video
    from mtdistill.inference.sync import sync_video

    model, path, _ = exported
    clip = tmp_path / "talk.mp4"
    make_talking_video(clip, seed=5, duration_s=1.6, offset_frames=2)
    ref = sync_video(clip, model, stride=5).tracks[0]
    for onnx_model in (load_onnx_model(path), OnnxSyncModel(path)):  # split graphs, full graph
        got = sync_video(clip, onnx_model, stride=5).tracks[0]
        assert got.offset_frames == ref.offset_frames and got.n_windows == ref.n_windows
        assert np.allclose(got.curve, ref.curve, atol=1e-4)


def test_int8_runs_and_stays_close(exported) -> None:
    model, path, _ = exported
    video, mel = inputs(4)
    with torch.no_grad():
        ref = model(video, mel)
    q = load_onnx_model(int8_path(path))
    out = q(video, mel)
    assert out.shape == (4,)
    assert torch.isfinite(out).all()
    # only the matmuls are int8: the logits move, but by much less than their spread
    assert (out - ref).abs().max().item() < 0.1 * max(ref.abs().max().item(), 1.0)


def test_export_errors(tmp_path) -> None:
    with pytest.raises(UserError, match="must end in .onnx"):
        export_onnx(VocaLiST.tiny(), tmp_path / "model.bin", split=False)
    with pytest.raises(UserError, match="not found"):
        load_onnx_model(tmp_path / "none.onnx")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not onnx")
    with pytest.raises(UserError, match="not a loadable ONNX model"):
        load_onnx_model(bad)
    assert main(["export", str(tmp_path / "missing.safetensors"), "-o", str(tmp_path / "m.onnx")]) == 2
