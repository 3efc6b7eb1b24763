"""ONNX export of VocaLiST-family models: the full model and, optionally, the three factorised graphs.

Graphs (all with a dynamic batch axis B, fixed 5-frame window):

* ``model.onnx``          video (B, 15, 48, 96), mel (B, 1, 80, 16) -> logits (B,)
* ``model_video.onnx``    video (B, 15, 48, 96) -> video_tokens (5, B, d)
* ``model_audio.onnx``    mel (B, 1, 80, 16) -> audio_tokens (16, B, d)
* ``model_backend.onnx``  video_tokens (5, B, d), audio_tokens (16, B, d) -> logits (B,)

The split graphs let the sync tool encode every window once and run only the backend on the 31 candidate pairs
(the same factorisation as the evaluation fast path). Each file carries the preset and config as metadata
(``mtdistill.preset``, ``mtdistill.config``) so that `mtdistill sync --onnx` knows how to prepare input.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mtdistill.core.errors import UserError
from mtdistill.core.outputs import check_output_file
from mtdistill.core.safeio import atomic_path

SPLIT_SUFFIXES = ("_video", "_audio", "_backend")
DEFAULT_OPSET = 17
MIN_OPSET = 14
"""Lowest opset the VocaLiST graphs export with (scaled_dot_product / layer norm need 14 with this exporter)."""
QUANT_OP_TYPES = ("MatMul", "Gemm")
"""Ops that int8 dynamic quantisation touches by default: the transformer and head matmuls. The conv front-ends
stay fp32 because the sync logit is a small difference between large activations (see docs/sync.md, int8)."""


class _Full(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.eval()  # a new wrapper is in training mode; the exporter would restore that onto the model

    def forward(self, video: torch.Tensor, mel: torch.Tensor) -> torch.Tensor:
        return self.model(video, mel)


class _Video(_Full):
    def forward(self, video: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return self.model.encode_video(video)


class _Audio(_Full):
    def forward(self, mel: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return self.model.encode_audio(mel)


class _Backend(_Full):
    def forward(self, video_tokens: torch.Tensor, audio_tokens: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return self.model.backend(video_tokens, audio_tokens)


def split_paths(path: str | Path) -> dict[str, Path]:
    """model.onnx -> {"video": model_video.onnx, "audio": model_audio.onnx, "backend": model_backend.onnx}."""
    path = Path(path)
    return {s.lstrip("_"): path.with_name(f"{path.stem}{s}{path.suffix}") for s in SPLIT_SUFFIXES}


def _metadata(model: nn.Module, graph: str, int8: bool) -> dict[str, str]:
    config = getattr(model, "config", None)
    return {
        "mtdistill.format": "mtdistill-vocalist-onnx/1",
        "mtdistill.graph": graph,
        "mtdistill.preset": str(getattr(model, "preset", None) or ""),
        "mtdistill.config": json.dumps(asdict(config)) if config is not None else "{}",
        "mtdistill.int8": "1" if int8 else "0",
    }


BATCH_AXES = {"video": 0, "mel": 0, "logits": 0, "video_tokens": 1, "audio_tokens": 1}
"""The dynamic batch axis of every graph input and output (the tokens are sequence-first)."""
EXPORT_OPTIONS: dict[str, Any] = {"dynamo": False, "do_constant_folding": True}
"""The TorchScript exporter: exact parity on this model and no onnxscript dependency."""


def _export_one(
    module: nn.Module, inputs: dict[str, torch.Tensor], outputs: list[str], path: Path, opset: int, meta: dict[str, str]
) -> Path:
    import onnx

    names = [*inputs, *outputs]
    with atomic_path(path) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation and tracer warnings
        torch.onnx.export(
            module,
            tuple(inputs.values()),
            str(tmp),
            input_names=list(inputs),
            output_names=outputs,
            dynamic_axes={name: {BATCH_AXES[name]: "batch"} for name in names},
            opset_version=opset,
            **EXPORT_OPTIONS,
        )
        proto = onnx.load(str(tmp))
        for key, value in meta.items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, value
        onnx.save(proto, str(tmp))
    return path


def supported_opsets() -> range:
    """Opsets the installed torch (TorchScript exporter) and onnx can both write for these models."""
    import onnx

    try:
        from torch.onnx import _constants

        top = int(getattr(_constants, "ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET", _constants.ONNX_MAX_OPSET))
    except (ImportError, AttributeError):  # a torch without the private table: trust the default only
        top = DEFAULT_OPSET
    return range(MIN_OPSET, min(top, onnx.defs.onnx_opset_version()) + 1)


def check_export(path: str | Path, opset: int) -> Path:
    """Refuse, before the model is even loaded, an output path or opset that `export_onnx` cannot write."""
    path = Path(path)
    if path.suffix != ".onnx":
        raise UserError(f"output {path} must end in .onnx; e.g. -o model.onnx")
    check_output_file(path, "-o")
    ok = supported_opsets()
    if opset not in ok:
        raise UserError(
            f"--opset {opset} is not supported here: torch {torch.__version__} with this onnx exports these models "
            f"at opsets {ok.start}..{ok.stop - 1} (default {DEFAULT_OPSET})"
        )
    return path


@torch.inference_mode()
def export_onnx(
    model: nn.Module,
    path: str | Path,
    opset: int = DEFAULT_OPSET,
    split: bool = True,
    int8: bool = False,
    quant_op_types: tuple[str, ...] = QUANT_OP_TYPES,
) -> list[Path]:
    """Export ``model`` to ``path`` (+ the split graphs when ``split``); with ``int8`` also write ``*_int8.onnx``.

    Returns every written path. The model is put in eval mode (BatchNorm running stats, no dropout).
    """
    path = check_export(path, opset)
    was_training = model.training
    model = model.eval().cpu()
    try:
        written = _export_all(model, path, opset, split)
    finally:
        model.train(was_training)
    if int8:
        written += [quantize_int8(p, quant_op_types=quant_op_types) for p in list(written)]
    return written


def _export_all(model: nn.Module, path: Path, opset: int, split: bool) -> list[Path]:
    gen = torch.Generator().manual_seed(0)  # example inputs for tracing; leave the caller's RNG alone
    video = torch.rand(2, 15, 48, 96, generator=gen) * 255.0
    mel = torch.rand(2, 1, 80, 16, generator=gen) * 8.0 - 4.0
    # graph name, module, example inputs by name, output names, file
    graphs = [("full", _Full(model), {"video": video, "mel": mel}, ["logits"], path)]
    if split:
        parts = split_paths(path)
        tokens = {"video_tokens": model.encode_video(video), "audio_tokens": model.encode_audio(mel)}
        graphs += [
            ("video", _Video(model), {"video": video}, ["video_tokens"], parts["video"]),
            ("audio", _Audio(model), {"mel": mel}, ["audio_tokens"], parts["audio"]),
            ("backend", _Backend(model), tokens, ["logits"], parts["backend"]),
        ]
    return [
        _export_one(module, inputs, outputs, target, opset, _metadata(model, graph, False))
        for graph, module, inputs, outputs, target in graphs
    ]


def int8_path(path: str | Path) -> Path:
    """model.onnx -> model_int8.onnx; model_video.onnx -> model_int8_video.onnx (so split lookup still works)."""
    path = Path(path)
    stem = path.stem
    for s in SPLIT_SUFFIXES:
        if stem.endswith(s):
            return path.with_name(f"{stem[: -len(s)]}_int8{s}{path.suffix}")
    return path.with_name(f"{stem}_int8{path.suffix}")


def quantize_int8(
    path: str | Path, out: str | Path | None = None, quant_op_types: tuple[str, ...] = QUANT_OP_TYPES
) -> Path:
    """Dynamic int8 quantisation (weights int8, activations quantised on the fly) of the listed op types.

    ``quant_op_types=("MatMul", "Gemm", "Conv")`` also quantises the conv front-ends (measured: see docs/sync.md).
    """
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    path = Path(path)
    out = Path(out) if out is not None else int8_path(path)
    with atomic_path(out) as tmp:
        quantize_dynamic(str(path), str(tmp), weight_type=QuantType.QInt8, op_types_to_quantize=list(quant_op_types))
        proto = onnx.load(str(tmp))
        for entry in proto.metadata_props:
            if entry.key == "mtdistill.int8":
                entry.value = "1"
        onnx.save(proto, str(tmp))
    return out
