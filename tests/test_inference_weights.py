"""Official-weights download: clear one-line errors offline (never a hang), size and strict-load checks."""

from __future__ import annotations

import dataclasses
import time

import pytest

from mtdistill.cli import main
from mtdistill.core.errors import UserError
from mtdistill.inference.weights import MTD_STUDENT, NO_CHECKPOINT_MESSAGE, fetch_official, verify
from mtdistill.models import VocaLiST

UNREACHABLE = "http://127.0.0.1:9/pure_MTDVocaLiST.pth"  # discard port: connection refused at once


def test_offline_download_is_a_quick_one_line_error(tmp_path) -> None:
    t0 = time.monotonic()
    with pytest.raises(UserError, match="cannot download") as info:
        fetch_official(tmp_path, url=UNREACHABLE, timeout=2.0)
    assert time.monotonic() - t0 < 30  # bounded by the timeout, not a hang
    assert "\n" not in str(info.value)
    assert not list(tmp_path.iterdir())  # no partial file left behind


def test_weights_cli_exit_code_offline(tmp_path, capsys) -> None:
    code = main(["weights", "--dest", str(tmp_path), "--url", UNREACHABLE, "--timeout", "2"])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: cannot download") and "\n" not in err


def test_verify_checks_size_then_loads_strictly(tmp_path) -> None:
    ckpt = VocaLiST.tiny().save_checkpoint(tmp_path / "tiny.safetensors")
    with pytest.raises(UserError, match="expected 45,000,000"):
        verify(ckpt, MTD_STUDENT)  # far too small for the 13.28M student
    relaxed = dataclasses.replace(MTD_STUDENT, min_bytes=0)
    info = verify(ckpt, relaxed)
    assert info["params"] == sum(p.numel() for p in VocaLiST.tiny().parameters())
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"<html>not a checkpoint</html>")
    with pytest.raises(UserError):
        verify(junk, relaxed)


def test_no_checkpoint_message_names_the_official_urls() -> None:
    assert MTD_STUDENT.url in NO_CHECKPOINT_MESSAGE
    assert "drive.google.com" in NO_CHECKPOINT_MESSAGE
    assert "\n" not in NO_CHECKPOINT_MESSAGE
