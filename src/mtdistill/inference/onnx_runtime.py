"""Run exported graphs with onnxruntime behind the same interface as a VocaLiST module.

`load_onnx_model(path)` returns a torch module mapping (video, mel) -> logits, so the evaluation protocol
(`utterance_accuracy`) and the sync tool accept it like the PyTorch model. When the split graphs
(``*_video.onnx``, ``*_audio.onnx``, ``*_backend.onnx``) sit beside the file, it also has ``encode_video``,
``encode_audio`` and ``backend``, and both callers take their factorised fast path.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from mtdistill.core.errors import UserError
from mtdistill.inference.onnx_export import split_paths


def _session(path: Path, threads: int | None):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads or torch.get_num_threads()
    # no busy-waiting between ops: on a shared or small CPU spinning threads starve everything else
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise UserError(f"{path}: not a loadable ONNX model ({first}); export one with `mtdistill export`") from None


def _np(x: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(x.detach().float().cpu().numpy())


class OnnxSyncModel(nn.Module):
    """The full graph: forward(video (B, 15, 48, 96), mel (B, 1, 80, 16)) -> logits (B,) as a torch tensor."""

    def __init__(self, path: str | os.PathLike, threads: int | None = None) -> None:
        super().__init__()
        self.path = Path(path)
        if not self.path.is_file():
            raise UserError(f"ONNX model {self.path} not found; export one with `mtdistill export CKPT -o model.onnx`")
        self.session = _session(self.path, threads)
        meta = self.session.get_modelmeta().custom_metadata_map
        self.preset = meta.get("mtdistill.preset") or None
        self.int8 = meta.get("mtdistill.int8") == "1"
        self.config_dict = json.loads(meta.get("mtdistill.config", "{}") or "{}")

    def forward(self, video: torch.Tensor, mel: torch.Tensor) -> torch.Tensor:
        out = self.session.run(None, {"video": _np(video), "mel": _np(mel)})[0]
        return torch.from_numpy(out).reshape(-1)


class OnnxFactorisedModel(OnnxSyncModel):
    """Full graph plus the three split graphs: exposes encode_video / encode_audio / backend."""

    def __init__(self, path: str | os.PathLike, threads: int | None = None) -> None:
        super().__init__(path, threads)
        parts = split_paths(self.path)
        self.sessions = {name: _session(p, threads) for name, p in parts.items()}

    def encode_video(self, video: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.sessions["video"].run(None, {"video": _np(video)})[0])

    def encode_audio(self, mel: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.sessions["audio"].run(None, {"mel": _np(mel)})[0])

    def backend(self, vid_tokens: torch.Tensor, aud_tokens: torch.Tensor, capture: bool = False) -> torch.Tensor:
        if capture:
            raise UserError("ONNX models give logits only; behaviour capture needs the PyTorch checkpoint")
        feeds = {"video_tokens": _np(vid_tokens), "audio_tokens": _np(aud_tokens)}
        return torch.from_numpy(self.sessions["backend"].run(None, feeds)[0]).reshape(-1)


def load_onnx_model(path: str | os.PathLike, threads: int | None = None) -> OnnxSyncModel:
    """The factorised model when all split graphs exist beside ``path``, else the full-graph model."""
    parts = split_paths(path)
    if all(p.is_file() for p in parts.values()):
        return OnnxFactorisedModel(path, threads)
    return OnnxSyncModel(path, threads)
