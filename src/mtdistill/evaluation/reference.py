"""The published numbers we compare against (MTDVocaLiST paper, its poster, and the MTD repository's logs).

Accuracies in %, LRS2 test set, per context length K (frames). Sources: ../shared/papers/001 (Table 1, Fig. 2, the
text of section 4), 000 (poster: Table 2 ablation with validation F1) and design.md §4.4 (logs).
"""

from __future__ import annotations

import re

LENGTHS = (5, 7, 9, 11, 13, 15)


def _row(*values: float) -> dict[int, float]:
    return dict(zip(LENGTHS, values, strict=True))


TABLE1: dict[str, dict[int, float]] = {
    "L_BCE": _row(71.36, 81.44, 88.84, 93.41, 96.19, 97.69),
    "KD": _row(80.87, 88.62, 93.48, 96.32, 97.90, 98.82),
    "RKD": _row(86.06, 92.42, 95.95, 97.80, 98.75, 99.29),
    "MiniLM*": _row(85.60, 92.03, 95.91, 97.72, 98.72, 99.25),
    "FitNets": _row(90.81, 95.48, 97.77, 98.81, 99.42, 99.66),
    "MTD": _row(91.45, 95.75, 97.99, 98.95, 99.46, 99.68),
}
"""Paper Table 1: distillation methods into the MTDVocaLiST student."""

TABLE2: dict[str, dict[str, float]] = {
    "L_BCE": {"val_f1": 87.91, "acc5": 71.36},
    "NMTD w/o L_VR": {"val_f1": 91.78, "acc5": 83.55},
    "NMTD w/o L_CAD": {"val_f1": 91.97, "acc5": 83.53},
    "NMTD": {"val_f1": 92.81, "acc5": 85.60},
}
"""Poster Table ("Ablation study of NMTD loss", fusion layer 4, uniform weighting): validation F1 and K=5 accuracy."""

SOTA: dict[str, dict] = {
    "SyncNet": {"params_m": None, "acc": _row(75.8, 82.3, 87.6, 91.8, 94.5, 96.1)},
    "PM": {"params_m": None, "acc": _row(88.1, 93.8, 96.4, 97.9, 98.7, 99.1)},
    # the paper gives no count, only "MTDVocaLiST has 31.13 % of AVST's size": 13.2 M / 0.3113
    "AVST": {
        "params_m": round(13.2 / 0.3113, 1),
        "params_note": "derived from the paper's 31.13 % ratio",
        "acc": _row(92.0, 95.5, 97.7, 98.8, 99.3, 99.6),
    },  # fmt: skip
    "VocaLiST": {"params_m": 80.1, "acc": _row(92.8, 96.7, 98.4, 99.3, 99.6, 99.8)},
    "MTDVocaLiST": {"params_m": 13.280961, "acc": TABLE1["MTD"]},
}
"""Fig. 2 reference points (design.md §4.4 table). SyncNet and PM sizes are not given in the paper (params_m None)."""

REPRO_LOGS: dict[str, dict[int, float]] = {
    "repro VocaLiST (teacher, 80,106,561)": _row(92.44, 96.52, 98.27, 99.13, 99.53, 99.76),
    "pure_MTDVocaLiST (13,280,961)": _row(91.46, 95.74, 97.99, 98.95, 99.46, 99.68),
}
"""Evaluation logs shipped in the MTD repository (design.md §4.4)."""

FIG3_ORDER = ("BCE", "F1", "F2", "F3", "F4", "AV1", "AV2", "AV3", "AV4", "VA1", "VA2", "VA3", "VA4", "Uniform",
              "AW-13D", "AW-25D", "UW-13D", "UW-25D")  # fmt: skip
"""The bars of Fig. 3, left to right."""

FIG3_KNOWN: dict[str, float] = {"BCE": 71.36, "UW-25D": 91.45}
"""The only Fig. 3 bar values stated in the text (K = 5); the text also says AW-13D = Uniform + 0.15 and
AW-25D = Uniform - 0.06, but not Uniform itself."""


def _norm(name: str) -> str:
    name = re.sub(r"\(demo\)|demo", "", name, flags=re.IGNORECASE)
    return re.sub(r"[^a-z0-9+]", "", name.lower())


_TABLE1_ALIASES = {
    "bce": "L_BCE", "lbce": "L_BCE", "kd": "KD", "rkd": "RKD", "minilm": "MiniLM*", "minilm*": "MiniLM*",
    "fitnets": "FitNets", "mtd": "MTD", "mtduw25d": "MTD", "uw25d": "MTD",
}  # fmt: skip


def table1_row(method: str) -> str | None:
    """The paper's Table 1 row for one of our method names ("MTD (UW-25D)" -> "MTD"), or None."""
    return _TABLE1_ALIASES.get(_norm(method).replace("*", ""))


def table2_row(method: str) -> str | None:
    """The poster's ablation row for a method name: 'NMTD F4 CAD' -> 'NMTD w/o L_VR', ... or None."""
    n = _norm(method)
    if n in ("bce", "lbce"):
        return "L_BCE"
    has_cad, has_vr = "cad" in n, "vr" in n
    if has_cad and has_vr:
        return "NMTD"
    if has_cad:
        return "NMTD w/o L_VR"
    if has_vr:
        return "NMTD w/o L_CAD"
    return None


_FIG3 = re.compile(r"^(bce|f[1-4]|av[1-4]|va[1-4]|uniform|aw13d|aw25d|uw13d|uw25d|mtduw25d)$")


def is_fig3_method(method: str) -> bool:
    """Fig. 3 bars: BCE, single layers F1..F4 / AV1..AV4 / VA1..VA4, and the weighting variants."""
    return bool(_FIG3.match(_norm(method)))


def fig3_label(method: str) -> str:
    """Bar label: 'MTD (UW-25D)' -> 'UW-25D'; others unchanged."""
    m = re.search(r"\(([^)]*)\)", method)
    return m.group(1) if m and is_fig3_method(m.group(1)) else method.replace("(demo)", "").strip()
