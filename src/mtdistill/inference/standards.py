"""Broadcast and delivery tolerances for audio-visual timing, and the pass / fail / undetermined readout.

Every window is given in our sign convention, which is also the standards' own: **positive = the sound is ahead
of the picture** (the audio leads; ``offset_ms > 0``), negative = the sound lags behind the picture. A window
allows offsets in [-lag_ms, +lead_ms]. Sources (docs/sync.md, "Standards"):

* ``itu-bt1359-detect``: ITU-R BT.1359-1 (1998), threshold of detectability, +45 / -125 ms.
* ``itu-bt1359-accept``: ITU-R BT.1359-1 (1998), threshold of acceptability, +90 / -185 ms.
* ``ebu-r37``: EBU Technical Recommendation R37 (2007), end-to-end tolerance, +40 / -60 ms.
* ``atsc-is191``: ATSC Implementation Subcommittee Finding IS-191 (2003), +15 / -45 ms.
* ``frame``: one frame of the 25 fps analysis rate either way, +40 / -40 ms (the evaluation protocol's
  tolerance; our own, not a published standard).

The decision uses the offset's interval, not only its point value: pass when the whole interval lies inside the
window, fail when it lies wholly outside, undetermined when it straddles an edge or when the estimate itself is
not significant (p_value > alpha).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from mtdistill.core.errors import UserError
from mtdistill.core.timing import FRAME_MS

PASS, FAIL, UNDETERMINED = "pass", "fail", "undetermined"


@dataclass(frozen=True)
class Standard:
    """A tolerance window: the sound may lead the picture by up to ``lead_ms`` and lag it by up to ``lag_ms``."""

    name: str
    lead_ms: float
    lag_ms: float
    source: str

    def judge(self, interval_ms: Sequence[float] | None, significant: bool = True) -> str:
        """pass / fail / undetermined for an offset interval [lo, hi] in ms (positive = sound ahead)."""
        if not significant or interval_ms is None:
            return UNDETERMINED
        lo, hi = float(min(interval_ms)), float(max(interval_ms))
        if lo >= -self.lag_ms and hi <= self.lead_ms:
            return PASS
        if hi < -self.lag_ms or lo > self.lead_ms:
            return FAIL
        return UNDETERMINED

    def describe(self) -> dict:
        return {"lead_ms": self.lead_ms, "lag_ms": self.lag_ms, "source": self.source}


STANDARDS: dict[str, Standard] = {
    s.name: s
    for s in (
        Standard("itu-bt1359-detect", 45.0, 125.0, "ITU-R BT.1359-1 (1998), threshold of detectability"),
        Standard("itu-bt1359-accept", 90.0, 185.0, "ITU-R BT.1359-1 (1998), threshold of acceptability"),
        Standard("ebu-r37", 40.0, 60.0, "EBU Technical Recommendation R37 (2007)"),
        Standard("atsc-is191", 15.0, 45.0, "ATSC Implementation Subcommittee Finding IS-191 (2003)"),
        Standard("frame", FRAME_MS, FRAME_MS, "one frame at the 25 fps analysis rate (mtdistill's tolerance)"),
    )
}
STANDARD_SIGN = "standards: positive = sound ahead of picture (audio leads), as in offset_ms"


def check_standards(names: Iterable[str] | None) -> tuple[str, ...]:
    """The requested standard names in order, without repeats; a one-line error for an unknown name."""
    out: list[str] = []
    for name in names or ():
        key = str(name).strip().lower()
        if key not in STANDARDS:
            raise UserError(f"unknown --standard {name!r}; choose from {', '.join(STANDARDS)}")
        if key not in out:
            out.append(key)
    return tuple(out)


def judge_all(names: Sequence[str], interval_ms: Sequence[float] | None, significant: bool) -> dict[str, str]:
    """{name: pass | fail | undetermined} for the (already checked) standard names."""
    return {n: STANDARDS[n].judge(interval_ms, significant) for n in names}
