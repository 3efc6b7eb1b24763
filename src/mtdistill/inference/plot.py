"""PNG of a sync result: the window-averaged score curve per track, and the offsets over time (a timeline: the
per-window offsets and, when a track has segments, each segment's offset drawn over its time span)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from mtdistill.core.safeio import atomic_path


def plot_sync(result, path: str | os.PathLike) -> Path:
    """Two panels: score vs candidate offset (best marked), and the timeline: offset of each scored window and of
    each segment (a bar over its span, solid when confident, dashed when undetermined) vs time, in ms."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_curve, ax_time) = plt.subplots(1, 2, figsize=(11, 3.8))
    offsets = np.arange(result.vshift, -result.vshift - 1, -1)  # curve index j -> offset vshift - j
    syncnet = any(t.lse_d is not None for t in result.tracks)
    frame_ms = 1000.0 / result.fps
    for t in result.tracks:
        p = "-" if t.p_value is None else f"{t.p_value:.2g}"
        label = f"track {t.track}: {t.offset_ms:+.0f} ms, p {p} ({t.verdict})"
        line = ax_curve.plot(offsets, t.curve, marker=".", label=label)[0]
        ax_curve.axvline(t.offset_frames, color="grey", lw=0.6, ls=":")
        times = (np.asarray(t.window_starts) + 2.5) / result.fps
        ax_time.plot(times, np.asarray(t.window_offsets) * frame_ms, ".", ms=3, color=line.get_color(), alpha=0.5)
        for seg in t.segments:
            ls = "-" if seg.get("verdict") != "undetermined" else "--"
            ax_time.plot([seg["start_s"], seg["end_s"]], [seg["offset_ms"]] * 2, ls=ls, lw=2.5, color=line.get_color())
        if not t.segments:
            ax_time.axhline(t.offset_ms, color=line.get_color(), lw=0.8, ls=":")
    ax_curve.set_xlabel("offset (frames; + = audio leads video)")
    ax_curve.set_ylabel("mean distance (lower = better)" if syncnet else "mean logit (higher = better)")
    ax_curve.set_title(Path(result.video).name, fontsize=9)
    ax_curve.legend(fontsize=7)
    ax_time.set_xlabel("time (s)")
    ax_time.set_ylabel("offset (ms; + = sound ahead of picture)")
    ax_time.set_ylim((-result.vshift - 1) * frame_ms, (result.vshift + 1) * frame_ms)
    ax_time.set_title(f"timeline: windows (dots, stride {result.stride}) and segments (bars)", fontsize=9)
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return path
