"""PNG of a sync result: the window-averaged score curve per track and the per-window offsets over time."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from mtdistill.core.outputs import check_output_file
from mtdistill.core.safeio import atomic_path


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
        label = f"track {t.track}: {t.offset_frames:+d} fr, conf {t.confidence:.2f} ({t.verdict})"
        ax_curve.plot(offsets, t.curve, marker=".", label=label)
        ax_curve.axvline(t.offset_frames, color="grey", lw=0.6, ls=":")
        times = (np.asarray(t.window_starts) + 2.5) / result.fps
        ax_time.plot(times, t.window_offsets, ".", ms=3, label=f"track {t.track}")
        ax_time.axhline(t.offset_frames, color="grey", lw=0.6, ls=":")
    ax_curve.set_xlabel("offset (frames; + = audio leads video)")
    ax_curve.set_ylabel("mean distance (lower = better)" if syncnet else "mean logit (higher = better)")
    ax_curve.set_title(Path(result.video).name, fontsize=9)
    ax_curve.legend(fontsize=7)
    ax_time.set_xlabel("time (s)")
    ax_time.set_ylabel("window offset (frames)")
    ax_time.set_ylim(-result.vshift - 1, result.vshift + 1)
    ax_time.set_title(f"per-window offsets (stride {result.stride})", fontsize=9)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return path
