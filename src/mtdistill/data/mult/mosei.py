"""Reader for MulT's CMU-MOSEI pickles (``mosei_senti_data_noalign.pkl`` and the synthetic look-alike).

Layout (design.md §M2.1): a dict with "train" / "valid" / "test", each a dict holding
``text`` (N, 50, 300), ``audio`` (N, 500, 74), ``vision`` (N, 500, 35), ``labels`` (N, 1, 1) and optionally ``id``.
Audio -inf values are replaced by 0 at load time (as MulT does); the sample index is returned with every item
because CRD's memory bank is addressed by it.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from mtdistill.core.errors import UserError
from mtdistill.core.inputs import file_or_folder
from mtdistill.metrics.mult import sentiment_to_class7

SPLITS = ("train", "valid", "test")
MODALITIES = ("text", "audio", "vision")
MULT_FILE = "mosei_senti_data_noalign.pkl"


@dataclass(frozen=True)
class MoseiSplit:
    """One split as float32 arrays: text (N, Tl, Dl), audio (N, Ta, Da), vision (N, Tv, Dv), labels (N,)."""

    text: np.ndarray
    audio: np.ndarray
    vision: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def classes(self) -> np.ndarray:
        return sentiment_to_class7(self.labels)

    @property
    def dims(self) -> tuple[int, int, int]:
        """Feature sizes (L, A, V), the ``orig_dims`` of a MulT model for this data."""
        return (self.text.shape[2], self.audio.shape[2], self.vision.shape[2])

    @property
    def lengths(self) -> tuple[int, int, int]:
        """Sequence lengths (L, A, V)."""
        return (self.text.shape[1], self.audio.shape[1], self.vision.shape[1])


def resolve_pickle(path: str | Path) -> Path:
    """Accept the pickle itself or a folder holding ``mosei_senti_data_noalign.pkl``."""
    missing = f"MOSEI pickle not found at {{path}}; pass MulT's {MULT_FILE} or run `mtdistill mult synth OUT`"
    return file_or_folder(path, MULT_FILE, missing)


_NUMPY_GLOBALS = {
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("collections", "OrderedDict"),
    ("_codecs", "encode"),  # protocol-2 pickles store array bytes as latin-1 text
}


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles dicts, lists, strings and NumPy arrays only: a feature pickle has no reason to run code."""

    def find_class(self, module: str, name: str) -> object:
        if (module, name) in _NUMPY_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def _split_from_dict(name: str, raw: object) -> MoseiSplit:
    if not isinstance(raw, dict):
        raise UserError(f"split {name!r} is a {type(raw).__name__}, not a dict; is this a MulT MOSEI pickle?")
    missing = [k for k in (*MODALITIES, "labels") if k not in raw]
    if missing:
        raise UserError(f"split {name!r} lacks {', '.join(missing)}; expected MulT keys text/audio/vision/labels")
    arrays = {}
    for k in MODALITIES:
        a = np.asarray(raw[k], dtype=np.float32)
        if a.ndim != 3:
            raise UserError(f"{name}/{k} has shape {a.shape}; expected (N, T, D)")
        # COVAREP audio holds -inf (and occasionally NaN); MulT zeroes -inf, we zero every non-finite value
        arrays[k] = np.where(np.isfinite(a), a, 0.0).astype(np.float32)
    labels = np.asarray(raw["labels"], dtype=np.float32).reshape(len(arrays["text"]), -1)[:, 0]
    n = {k: len(v) for k, v in arrays.items()} | {"labels": len(labels)}
    if len(set(n.values())) != 1:
        raise UserError(f"split {name!r} has inconsistent sample counts {n}; the pickle is damaged")
    return MoseiSplit(arrays["text"], arrays["audio"], arrays["vision"], labels)


def load_mosei(path: str | Path) -> dict[str, MoseiSplit]:
    """Load every split of a MulT-layout pickle."""
    p = resolve_pickle(path)
    try:
        with p.open("rb") as fh:
            raw = _NumpyOnlyUnpickler(fh).load()
    except (pickle.UnpicklingError, EOFError, AttributeError, ModuleNotFoundError) as exc:
        raise UserError(f"cannot read {p} as a pickle ({exc}); re-download or regenerate it") from None
    if not isinstance(raw, dict) or not all(s in raw for s in SPLITS):
        raise UserError(f"{p} does not hold the splits {SPLITS}; expected MulT's {MULT_FILE} layout")
    return {s: _split_from_dict(s, raw[s]) for s in SPLITS}


class MoseiDataset(Dataset):
    """Items: {"index", "text", "audio", "vision", "label" (float), "class7" (long)}; batch-first tensors."""

    def __init__(self, split: MoseiSplit, limit: int | None = None) -> None:
        self.split = split
        self.n = len(split) if limit is None else min(limit, len(split))

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        s = self.split
        y = float(s.labels[i])
        return {
            "index": torch.tensor(i, dtype=torch.long),
            "text": torch.from_numpy(s.text[i]),
            "audio": torch.from_numpy(s.audio[i]),
            "vision": torch.from_numpy(s.vision[i]),
            "label": torch.tensor(y, dtype=torch.float32),
            "class7": torch.tensor(int(sentiment_to_class7(y)), dtype=torch.long),
        }
