"""Sync estimation on videos, batch scoring, fixing, ONNX export and runtime, official weights.

    from mtdistill.inference import sync_video, load_model
    result = sync_video("talk.mp4", load_model("ckpt.safetensors"), stride=5)

Names are imported on first use so that `import mtdistill.inference` stays light.
"""

from __future__ import annotations

_EXPORTS = {
    "sync_video": "mtdistill.inference.sync",
    "load_model": "mtdistill.inference.sync",
    "SyncResult": "mtdistill.inference.readout",
    "TrackResult": "mtdistill.inference.readout",
    "score_folder": "mtdistill.inference.score",
    "fix_video": "mtdistill.inference.fix",
    "export_onnx": "mtdistill.inference.onnx_export",
    "quantize_int8": "mtdistill.inference.onnx_export",
    "load_onnx_model": "mtdistill.inference.onnx_runtime",
    "fetch_official": "mtdistill.inference.weights",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(name)
