"""Broadcast tolerances (inference.standards): windows, sign, interval rule and errors on hand-made offsets."""

from __future__ import annotations

import pytest

from mtdistill.core.errors import UserError
from mtdistill.inference.standards import FAIL, PASS, STANDARDS, UNDETERMINED, check_standards, judge_all

WINDOWS = {  # name: (sound may lead by, sound may lag by), in ms
    "itu-bt1359-detect": (45, 125),
    "itu-bt1359-accept": (90, 185),
    "ebu-r37": (40, 60),
    "atsc-is191": (15, 45),
    "frame": (40, 40),
}


def test_windows_are_the_published_numbers() -> None:
    assert set(WINDOWS) <= set(STANDARDS)
    for name, (lead, lag) in WINDOWS.items():
        s = STANDARDS[name]
        assert (s.lead_ms, s.lag_ms) == (lead, lag), name
        assert s.source


@pytest.mark.parametrize("name", list(WINDOWS))
def test_sign_positive_means_sound_ahead(name: str) -> None:
    """The windows are asymmetric: a lead (positive offset, audio first) is tolerated less than a lag."""
    lead, lag = WINDOWS[name]
    s = STANDARDS[name]
    assert s.judge([lead - 1, lead - 1]) == PASS and s.judge([lead + 1, lead + 1]) == FAIL
    assert s.judge([-lag + 1, -lag + 1]) == PASS and s.judge([-lag - 1, -lag - 1]) == FAIL
    if lead != lag:  # e.g. EBU R37: +50 ms (sound 50 ms early) fails, -50 ms (50 ms late) passes
        mid = (lead + lag) / 2
        assert s.judge([mid, mid]) == FAIL and s.judge([-mid, -mid]) == PASS


def test_interval_rule() -> None:
    ebu = STANDARDS["ebu-r37"]
    assert ebu.judge([-60, 40]) == PASS  # edges included
    assert ebu.judge([-20, 20]) == PASS
    assert ebu.judge([20, 60]) == UNDETERMINED  # straddles +40: the point value alone would pass
    assert ebu.judge([-80, -50]) == UNDETERMINED
    assert ebu.judge([41, 90]) == FAIL and ebu.judge([-200, -61]) == FAIL
    assert ebu.judge([90, 41]) == FAIL  # order does not matter
    assert ebu.judge([-20, 20], significant=False) == UNDETERMINED  # p_value > alpha
    assert ebu.judge(None) == UNDETERMINED
    assert STANDARDS["atsc-is191"].judge([20, 40]) == FAIL and STANDARDS["itu-bt1359-accept"].judge([20, 40]) == PASS


def test_judge_all_and_names() -> None:
    names = check_standards(["EBU-R37", "frame", "ebu-r37"])
    assert names == ("ebu-r37", "frame")
    assert judge_all(names, [-50, -45], True) == {"ebu-r37": PASS, "frame": FAIL}
    with pytest.raises(UserError, match="unknown --standard 'r37'.*ebu-r37"):
        check_standards(["r37"])
