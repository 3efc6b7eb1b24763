"""Official-weights download: clear one-line errors offline or on a silent server, size and strict-load checks."""

from __future__ import annotations

import dataclasses
import socket
import subprocess
import sys

import pytest

from mtdistill.cli import main
from mtdistill.core.errors import UserError
from mtdistill.inference.weights import MTD_STUDENT, NO_CHECKPOINT_MESSAGE, fetch_official, verify
from mtdistill.models import VocaLiST

UNREACHABLE = "http://127.0.0.1:9/pure_MTDVocaLiST.pth"  # discard port: connection refused at once


def test_offline_download_is_a_one_line_error_naming_the_url_and_the_refusal(tmp_path) -> None:
    with pytest.raises(UserError, match="cannot download") as info:
        fetch_official(tmp_path, url=UNREACHABLE, timeout=2.0)
    message = str(info.value)
    assert UNREACHABLE in message and "refused" in message.lower()
    assert "--checkpoint" in message  # and says what to do instead
    assert "\n" not in message
    assert not list(tmp_path.iterdir())  # no partial file left behind


def test_a_server_that_never_answers_ends_in_the_timeout_error(tmp_path) -> None:
    # the socket listens (the kernel accepts the connection) but nothing ever answers the request; a hang would
    # fail through subprocess.run's hard timeout, well above the 1 s network timeout asked for
    with socket.create_server(("127.0.0.1", 0)) as silent:
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/pure_MTDVocaLiST.pth"
        args = ["weights", "--dest", str(tmp_path / "w"), "--url", url, "--timeout", "1"]
        done = subprocess.run([sys.executable, "-m", "mtdistill", *args], capture_output=True, text=True, timeout=180)
    assert done.returncode == 2, done.stderr[-2000:]
    err = done.stderr.strip()
    assert err.startswith("error: cannot download") and url in err and "timed out" in err
    assert "\n" not in err
    assert not (tmp_path / "w").exists() or not list((tmp_path / "w").iterdir())


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
