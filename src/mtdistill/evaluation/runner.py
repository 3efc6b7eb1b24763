"""Run the protocol over a store split: macro-averaged accuracies (design.md §4.4) and validation F1 (§4.5)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from mtdistill.core.errors import UserError
from mtdistill.core.quirks import Quirks, resolve_quirks, switched_off
from mtdistill.core.timing import SAMPLES_PER_FRAME, WINDOW_FRAMES
from mtdistill.data.pairs import PairDataset
from mtdistill.evaluation.protocol import (
    DEFAULT_LENGTHS,
    check_lengths,
    is_vocalist_family,
    macro_average,
    score_utterance,
)
from mtdistill.media.audio import utterance_mel
from mtdistill.metrics.f1 import batch_f1_stats, epoch_f1_from_stats
from mtdistill.models.presets import check_preset, frames_to_input

MIN_VAL_PAIRS = 256


@dataclass
class StoreEvaluation:
    """Macro-averaged accuracy per K (fractions), per-utterance rows and what was skipped and why."""

    accuracy: dict[int, float]
    rows: list[dict] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)
    n_windows: int = 0
    seconds: float = 0.0
    fast: bool = False

    @property
    def n_utterances(self) -> int:
        return len(self.rows)

    @property
    def windows_per_s(self) -> float:
        return self.n_windows / self.seconds if self.seconds > 0 else float("nan")


def skip_reason(n_frames: int, n_samples: int, valid: np.ndarray | None, exclude_last: bool = True) -> str | None:
    """Why an utterance cannot be evaluated, or None.

    The official loader hangs on a missing frame (design.md §4.1), so utterances with detection gaps are skipped; so are
    utterances too short for one window.
    """
    min_length = min(n_frames, n_samples // SAMPLES_PER_FRAME)
    n = min_length - WINDOW_FRAMES + (0 if exclude_last else 1)
    if n < 1:
        return f"too short: {n_frames} frames, {n_samples} samples give {max(n, 0)} windows"
    if valid is not None and not bool(np.all(valid)):
        gaps = np.flatnonzero(~np.asarray(valid, dtype=bool))
        return f"{gaps.size} frame(s) without a face (first at {int(gaps[0])}); the official loader would hang"
    return None


def evaluate_store(
    model: nn.Module,
    store,
    split: str | None = "test",
    lengths: Sequence[int] = DEFAULT_LENGTHS,
    official_edges: bool = True,
    max_utterances: int | None = None,
    *,
    device: str | torch.device | None = None,
    fast: bool | None = None,
    quirks: Quirks | None = None,
    progress: bool = True,
) -> StoreEvaluation:
    """Evaluate every utterance of a store split with the official protocol; macro average over utterances.

    ``quirks`` (default: faithful) gives the protocol's flags; ``official_edges=False`` is a shortcut for
    ``quirks.replace(eval_ifelif_edges=False)``.
    """
    from tqdm import tqdm

    quirks = switched_off(quirks, eval_ifelif_edges=official_edges)
    lengths = check_lengths(lengths)
    preset = check_preset(getattr(model, "preset", None))
    uids = store.ids(split)
    if not uids:
        have = sorted({store.meta(u)["split"] for u in store.ids()})
        where = f"splits present: {', '.join(have)}" if have else "the store is empty"
        raise UserError(f"no utterances in split {split!r} of {store.root} ({where}); pass --split or prepare data")
    if max_utterances is not None:
        uids = uids[: int(max_utterances)]
    fast = is_vocalist_family(model) if fast is None else fast
    result = StoreEvaluation(accuracy={}, fast=fast)
    per_utt: list[dict[int, float]] = []
    start = time.perf_counter()
    for uid in tqdm(uids, desc=f"evaluate {split}", unit="utt", disable=not progress, dynamic_ncols=True):
        meta = store.meta(uid)
        audio = store.audio(uid)
        valid = store.valid(uid)
        n_frames = int(meta.get("n_frames", len(valid)))
        reason = skip_reason(n_frames, audio.shape[0], valid, quirks.eval_exclude_last_window)
        if reason is not None:
            result.skipped.append({"uid": uid, "reason": reason})
            continue
        frames = frames_to_input(store.frames(uid), preset)
        scored = score_utterance(
            model, frames, utterance_mel(audio), lengths, n_samples=audio.shape[0],
            device=device, fast=fast, quirks=quirks,
        )  # fmt: skip
        per_utt.append(scored.accuracy)
        result.n_windows += scored.n_windows
        result.rows.append(
            {"uid": uid, "n_frames": n_frames, "n_samples": int(audio.shape[0]), "n_windows": scored.n_windows,
             **{f"acc_{k}": 100.0 * scored.accuracy[k] for k in lengths},
             "offset_frames_true": meta.get("offset_frames"),
             "median_offset_5": float(np.median(scored.offsets[lengths[0]]))}
        )  # fmt: skip
    result.seconds = time.perf_counter() - start
    if not per_utt:
        first = result.skipped[0]["reason"] if result.skipped else "none"
        raise UserError(f"all {len(uids)} utterances of split {split!r} were skipped (first reason: {first})")
    result.accuracy = macro_average(per_utt)
    return result


@torch.inference_mode()
def validation_f1(
    model: nn.Module,
    store,
    split: str = "val",
    seed: int = 0,
    length: int | None = None,
    batch_size: int = 128,
    device: str | torch.device | None = None,
    quirks: Quirks | None = None,
) -> float:
    """Validation weighted F1 on a seeded, fixed pair set of the split, as the training script computes it.

    Released (``quirks`` default): the mean of per-batch weighted F1s at logit > 0.5; ``Quirks.f1_logit_threshold``
    and ``Quirks.f1_mean_of_batches`` switch to probability > 0.5 and to one F1 over every pair.

    length: number of pairs; default one per utterance (the official 1,082 for LRS2 val), at least MIN_VAL_PAIRS so
    that small stores still give a meaningful number.
    """
    from torch.utils.data import DataLoader

    if length is None:
        length = max(len(store.ids(split)), MIN_VAL_PAIRS)
    quirks = resolve_quirks(quirks)
    pairs = PairDataset(store, split=split, preset=model.preset, seed=seed, length=length, fixed=True,
                        quirks=quirks)  # fmt: skip
    dev = torch.device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    model.to(dev).eval()
    try:
        stats = []
        for batch in DataLoader(pairs, batch_size=batch_size, shuffle=False, num_workers=0):
            logits = model(batch["video"].to(dev), batch["mel"].to(dev))
            stats.append(batch_f1_stats(logits, batch["label"], quirks))
    finally:
        model.train(was_training)
    return epoch_f1_from_stats(stats, quirks)
