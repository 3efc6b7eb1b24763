"""PNG of a sync result: the window-averaged score curve per track, and a timeline of the offsets (each scored
window as a dot, each segment as a bar at its sub-frame offset with its interval shaded)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from mtdistill.core.outputs import check_output_file
from mtdistill.core.safeio import atomic_path
from mtdistill.core.timing import FRAME_MS


def plot_sync(result, path: str | os.PathLike) -> Path:
    """Two panels: score vs candidate offset (best marked), and offset of each scored window vs time."""
    path = check_output_file(path, "--plot")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_curve, ax_time) = plt.subplots(1, 2, figsize=(11, 3.8))
    offsets = np.arange(result.vshift, -result.vshift - 1, -1)  # curve index j -> offset vshift - j
    syncnet = any(t.lse_d is not None for t in result.tracks)
    for t in result.tracks:
        p = "-" if t.p_value is None else f"{t.p_value:.2g}"
        label = f"track {t.track}: {t.offset_ms:+.0f} ms, p {p} ({t.verdict})"
        ax_curve.plot(offsets, t.curve, marker=".", label=label)
        ax_curve.axvline(t.offset_frames, color="grey", lw=0.6, ls=":")
        times = (np.asarray(t.window_starts) + 2.5) / result.fps
        dots = ax_time.plot(times, t.window_offsets, ".", ms=3, label=f"track {t.track}")
        ax_time.axhline(t.offset_frames, color="grey", lw=0.6, ls=":")
        draw_timeline(ax_time, getattr(t, "segments", None) or [], color=dots[0].get_color())
    ax_curve.set_xlabel("offset (frames; + = audio leads video)")
    ax_curve.set_ylabel("mean distance (lower = better)" if syncnet else "mean logit (higher = better)")
    ax_curve.set_title(Path(result.video).name, fontsize=9)
    ax_curve.legend(fontsize=7)
    ax_time.set_xlabel("time (s)")
    ax_time.set_ylabel("offset (frames; + = sound ahead)")
    ax_time.set_ylim(-result.vshift - 1, result.vshift + 1)
    ax_time.set_title(f"timeline: windows (dots, stride {result.stride}) and segments (bars)", fontsize=9)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return path


def _field(seg, name: str):
    return seg[name] if isinstance(seg, dict) else getattr(seg, name)


def draw_timeline(ax, segments, color: str | None = None) -> None:
    """The offset over time of one track on a (time s, offset frames) axis: each segment (a dict with
    start_s / end_s / offset_ms, or an `inference.segments.Segment`) as a thick line at its sub-frame offset,
    with its interval shaded when it has one (offset_low_ms / offset_high_ms, or low_ms / high_ms)."""
    for seg in segments:
        start, end, off = float(_field(seg, "start_s")), float(_field(seg, "end_s")), float(_field(seg, "offset_ms"))
        ax.plot([start, end], [off / FRAME_MS] * 2, color=color, lw=2.5, solid_capstyle="butt")
        low = seg.get("offset_low_ms") if isinstance(seg, dict) else getattr(seg, "low_ms", None)
        high = seg.get("offset_high_ms") if isinstance(seg, dict) else getattr(seg, "high_ms", None)
        if low is not None and high is not None:
            ax.fill_between([start, end], [low / FRAME_MS] * 2, [high / FRAME_MS] * 2, color=color, alpha=0.2, lw=0)
