"""Fig. 2-4 of the MTDVocaLiST paper as PNG files (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from pathlib import Path

from mtdistill.evaluation import reference

_COLORS = {"SyncNet": "tab:gray", "PM": "tab:olive", "AVST": "tab:purple", "VocaLiST": "tab:red",
           "MTDVocaLiST": "tab:blue"}  # fmt: skip
_OURS = ("tab:green", "tab:orange", "tab:cyan", "tab:pink", "tab:brown", "gold", "lime", "navy", "magenta", "teal")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def fig2_params_vs_accuracy(points: list[tuple[str, float, dict[int, float | None]]], path: Path) -> Path:
    """Fig. 2: parameters (M) vs accuracy (%), one subplot per K; paper models labelled, ours as stars.

    points: (run name, params in millions, {K: accuracy %}). Models whose size the paper does not give are drawn as
    horizontal lines, not placed on the x axis.
    """
    plt = _pyplot()
    fig, axes = plt.subplots(2, 3, figsize=(13, 7.5), sharex=True)
    for ax, k in zip(axes.flat, reference.LENGTHS, strict=True):
        for name, ref in reference.SOTA.items():
            acc = ref["acc"][k]
            color = _COLORS.get(name, "black")
            if ref["params_m"] is None:
                ax.axhline(acc, color=color, ls=":", lw=1.2, label=f"{name} (paper; size unknown)")
            else:
                ax.scatter([ref["params_m"]], [acc], color=color, s=50, zorder=3, label=f"{name} (paper)")
                ax.annotate(name, (ref["params_m"], acc), textcoords="offset points", xytext=(4, -10), fontsize=7)
        for i, (name, params_m, accs) in enumerate(points):
            if accs.get(k) is not None:
                color = _OURS[i % len(_OURS)]
                ax.scatter([params_m], [accs[k]], marker="*", s=130, zorder=4, color=color, edgecolors="black",
                           linewidths=0.5, label=f"{name} (ours)")  # fmt: skip
                ax.annotate(name, (params_m, accs[k]), textcoords="offset points", xytext=(4, 4), fontsize=7)
        ax.set_title(f"K = {k} ({k * 0.04:.2f} s)")
        ax.set_ylabel("accuracy (%)")
        ax.grid(alpha=0.3)
    for ax in axes[-1]:
        ax.set_xlabel("parameters (M)")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 5), fontsize=8, frameon=False)
    fig.suptitle("Model size vs accuracy (paper reference points and our runs)")
    fig.tight_layout(rect=(0, 0.08, 1, 0.96))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def fig3_layer_selection(bars: list[tuple[str, float]], path: Path) -> Path:
    """Fig. 3: K=5 accuracy per layer-selection strategy (bars), with the paper's stated BCE and UW-25D values."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(6.0, 0.55 * len(bars) + 2), 4))
    labels = [b[0] for b in bars]
    values = [b[1] for b in bars]
    ax.bar(range(len(bars)), values, color="tab:blue", alpha=0.8, label="ours")
    for i, v in enumerate(values):
        ax.text(i, v, f"{v:.1f}", ha="center", va="bottom", fontsize=7)
    for name, v in reference.FIG3_KNOWN.items():
        ax.axhline(v, ls="--", lw=1, color="tab:red" if name == "UW-25D" else "tab:gray", label=f"paper {name}: {v}")
    ax.set_xticks(range(len(bars)), labels, rotation=45, ha="right")
    ax.set_ylabel("accuracy at K = 5 (%)")
    ax.set_title("Layer selection strategies")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def fig4_loss_ratio(curves: dict[str, dict[str, tuple[list[int], list[float]]]], path: Path) -> Path:
    """Fig. 4: every validation loss of each run divided by its maximum over epochs, against the epoch."""
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    n = len(curves)
    cols = min(3, n)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.5 * cols, 4 * rows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    for ax, (run, terms) in zip(axes.flat, curves.items(), strict=False):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        for term, (epochs, ratios) in sorted(terms.items()):
            ax.plot(epochs, ratios, marker="o", ms=3, label=term)
        ax.set_title(run)
        ax.set_xlabel("epoch")
        ax.set_ylabel("loss ratio (loss / max)")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
