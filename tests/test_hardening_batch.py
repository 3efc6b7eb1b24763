"""Hostile input and faults for the batch commands `score`, `prepare` and `synth` (issue 14).

Real files, real processes: a user's files given as outputs are refused and left byte-for-byte untouched, bad
option values stop the run before any row is written, a full disk (a real 2 MB tmpfs) stops `prepare` with one
line and no index.json, and the workers of a driver killed with SIGKILL exit.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from mtdistill.cli import main
from mtdistill.data.synthetic import make_talking_video, synth_corpus
from mtdistill.inference.score import COLUMNS

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "tests" / "data" / "trained_tiny.safetensors"
ENV = {**os.environ, "PYTHONPATH": str(REPO / "src")}


# ------------------------------------------------------------------------------------------- helpers


def one_error_line(capsys) -> str:
    """The CLI's stderr: exactly one line, `error: ...`, no traceback."""
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    return err


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _mount_tmpfs(path: Path, options: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or not shutil.which("mount"):
        return False
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True)
    return done.returncode == 0


def _umount(path: Path) -> None:
    subprocess.run(["umount", "-l", str(path)], capture_output=True)


@pytest.fixture
def unwritable_dir(tmp_path) -> Iterator[Path]:
    """A folder nobody can write: read-only tmpfs as root (root ignores permission bits), else mode 0555."""
    path = tmp_path / "readonly"
    if os.geteuid() == 0:
        if not _mount_tmpfs(path, "ro,size=64k"):
            pytest.skip("running as root and cannot mount a read-only tmpfs (no CAP_SYS_ADMIN): no unwritable folder")
        yield path
        _umount(path)
    else:
        path.mkdir()
        path.chmod(0o555)
        yield path
        path.chmod(0o755)


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> Path:
    """A folder with one short talking clip."""
    root = tmp_path_factory.mktemp("clips")
    make_talking_video(root / "a.mp4", seed=31, duration_s=1.2, offset_frames=0)
    return root


def score(folder: Path, csv_path: Path, *extra: str) -> int:
    return main(["score", str(folder), "--csv", str(csv_path), "--checkpoint", str(TINY), "--stride", "5", *extra])


# ------------------------------------------------------------------------------------------- score --csv


def test_score_refuses_a_users_files_and_leaves_them_untouched(clips, tmp_path, capsys):
    text = tmp_path / "notes.txt"
    text.write_bytes(b"my notes\nline two\n")
    other = tmp_path / "budget.csv"
    other.write_bytes(b"item,amount\r\nrent,900\r\nfood,300\r\n")
    video = clips / "a.mp4"
    cases = {
        text: "is not a score CSV",
        other: "is not a score CSV",
        video: "ends in .mp4",
        tmp_path / "scores.json": "ends in .json",
    }
    before = {p: p.read_bytes() for p in (text, other, video)}
    for path, message in cases.items():
        assert score(clips, path) == 2
        assert message in one_error_line(capsys)
    assert score(clips, tmp_path) == 2  # a folder
    assert "is a folder" in one_error_line(capsys)
    # one of the videos, even under a name without a video extension (a symlink to it)
    alias = tmp_path / "alias.csv"
    alias.symlink_to(video)
    assert score(clips, alias) == 2
    assert "one of the videos" in one_error_line(capsys)
    assert {p: p.read_bytes() for p in before} == before
    assert not (tmp_path / "notes.json").exists() and not (tmp_path / "budget.json").exists()
    # a summary path that holds a user's JSON: refused too, nothing written
    (tmp_path / "new.json").write_text('{"mine": 1}\n')
    assert score(clips, tmp_path / "new.csv") == 2
    assert "not a score summary" in one_error_line(capsys)
    assert not (tmp_path / "new.csv").exists() and (tmp_path / "new.json").read_text() == '{"mine": 1}\n'


def test_score_refuses_an_unwritable_csv(clips, unwritable_dir, capsys):
    assert score(clips, unwritable_dir / "scores.csv") == 2
    assert "cannot write" in one_error_line(capsys)
    assert score(clips, unwritable_dir / "sub" / "scores.csv") == 2
    assert "cannot write" in one_error_line(capsys)


def test_score_option_errors_stop_before_any_row(clips, tmp_path, capsys):
    out = tmp_path / "scores.csv"
    bad_ckpt = tmp_path / "bad.safetensors"
    bad_ckpt.write_bytes(b"not a checkpoint")
    cases = [
        (["--workers", "0"], "--workers"),
        (["--workers", "-2"], "--workers"),
        (["--stride", "0"], "--stride"),
        (["--min-confidence", "nan"], "--min-confidence"),
        (["--detect-every", "0"], "--detect-every"),
        (["--detector", "no_such_detector"], "detector"),
        (["--detector", "os:system"], "detector"),
    ]
    for extra, message in cases:
        assert score(clips, out, *extra) == 2, extra
        assert message in one_error_line(capsys)
        assert not out.exists(), f"{extra} wrote {out}"
    assert main(["score", str(clips), "--csv", str(out), "--checkpoint", str(bad_ckpt)]) == 2
    one_error_line(capsys)
    assert not out.exists()
    # a good run, then a rerun with a bad option: the CSV is not touched
    assert score(clips, out) == 0
    capsys.readouterr()
    rows = list(csv.DictReader(out.open(newline="")))
    assert [r["error"] for r in rows] == [""] * len(rows) and rows
    before = out.read_bytes()
    assert score(clips, out, "--detector", "no_such_detector") == 2
    one_error_line(capsys)
    assert out.read_bytes() == before


def test_score_resume_drops_a_half_written_row(clips, tmp_path, capsys):
    out = tmp_path / "scores.csv"
    header = ",".join(COLUMNS)
    done = {"video": str(clips / "gone.mp4"), "track": 0, "start_frame": 0, "end_frame": 10, "n_windows": 2,
            "offset_frames": 0, "offset_ms": 0.0, "confidence": 1.0, "verdict": "in_sync", "duration_s": 0.4,
            "model": "m"}  # fmt: skip
    row = ",".join(str(done.get(c, "")) for c in COLUMNS)
    out.write_bytes(f"{header}\r\n{row}\r\n{clips}/a.m".encode())
    assert score(clips, out) == 0
    capsys.readouterr()
    rows = list(csv.DictReader(out.open(newline="")))
    assert [Path(r["video"]).name for r in rows][0] == "gone.mp4"
    assert {Path(r["video"]).name for r in rows[1:]} == {"a.mp4"}
    assert all(r["error"] == "" for r in rows)
    summary = json.loads(out.with_suffix(".json").read_text())
    assert summary["videos"] == 2 and oct(out.with_suffix(".json").stat().st_mode & 0o777) != "0o600"


# ------------------------------------------------------------------------------------------- prepare OUT


def test_prepare_refuses_bad_out(clips, tmp_path, unwritable_dir, capsys):
    user_file = tmp_path / "store"
    user_file.write_bytes(b"a user's file\n")
    assert main(["prepare", str(clips), str(user_file), "--split", "test", "--quiet"]) == 2
    assert "existing file" in one_error_line(capsys)
    assert user_file.read_bytes() == b"a user's file\n"
    assert main(["prepare", str(clips), str(unwritable_dir / "store"), "--split", "test", "--quiet"]) == 2
    assert "cannot write" in one_error_line(capsys)
    assert main(["prepare", str(clips), str(tmp_path / "s"), "--workers", "0", "--quiet"]) == 2
    assert "--workers" in one_error_line(capsys)
    # a user's folder with an index.json of something else
    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "index.json").write_text('{"pages": [1, 2]}\n')
    before = snapshot(folder)
    assert main(["prepare", str(clips), str(folder), "--split", "test", "--quiet"]) == 2
    assert "not the index of a store" in one_error_line(capsys)
    assert snapshot(folder) == before


@pytest.mark.parametrize("workers", ["1", "2"])
def test_prepare_full_disk_is_one_line_and_no_finished_index(tmp_path, capsys, workers):
    """A real 2 MB tmpfs as OUT: the store (~2.7 MB) does not fit; then it grows and the rerun resumes."""
    mnt = tmp_path / "small"
    if not _mount_tmpfs(mnt, "size=2m"):
        pytest.skip("needs root with CAP_SYS_ADMIN to mount a small tmpfs (a full disk)")
    try:
        src = tmp_path / "corpus"
        synth_corpus(src, n_speakers=2, n_utterances=3, seed=4, duration=(1.2, 1.2), progress=False)
        out = mnt / "store"
        cmd = ["prepare", str(src), str(out), "--workers", workers, "--shard-size", "1", "--quiet"]
        assert main(cmd) == 2
        assert "no space left" in one_error_line(capsys)
        assert not (out / "index.json").exists()  # no index that looks finished
        assert not [p for p in out.rglob(".*")]  # no temporary files left
        finished = sorted(p.name for p in (out / "shards").glob("shard-*.json"))
        assert 1 <= len(finished) < 6
        remount = subprocess.run(["mount", "-o", "remount,size=16m", str(mnt)], capture_output=True)
        assert remount.returncode == 0, remount.stderr
        assert main([*cmd, "--json"]) == 0
        summary = json.loads(capsys.readouterr().out)
        assert summary["stored"] == 6 and summary["done_before"] >= len(finished)
        index = json.loads((out / "index.json").read_text())
        assert index["complete"] and len(index["utterances"]) == 6
    finally:
        _umount(mnt)


def test_synth_refuses_bad_out_and_workers(tmp_path, unwritable_dir, capsys):
    user_file = tmp_path / "corpus"
    user_file.write_bytes(b"a user's file\n")
    assert main(["synth", str(user_file), "--n-speakers", "1", "--n-utterances", "1", "--quiet"]) == 2
    assert "existing file" in one_error_line(capsys)
    assert user_file.read_bytes() == b"a user's file\n"
    assert main(["synth", str(unwritable_dir / "c"), "--n-speakers", "1", "--n-utterances", "1", "--quiet"]) == 2
    assert "cannot write" in one_error_line(capsys)
    assert main(["synth", str(tmp_path / "c"), "--workers", "0", "--quiet"]) == 2
    assert "--workers" in one_error_line(capsys)
    assert not (tmp_path / "c").exists()


# ------------------------------------------------------------------------------------------- no orphans


def _children(pid: int) -> set[int]:
    """Processes whose parent is ``pid`` (from /proc/*/stat)."""
    out = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == pid:
            out.add(int(stat.parent.name))
    return out


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")  # a zombie has exited (it only waits for its new parent to reap it)


def kill_driver_and_watch_workers(args: list[str], mid_run: Callable[[], bool], n_workers: int = 2) -> None:
    """Start `mtdistill ARGS`, wait until ``mid_run()`` with its workers up, SIGKILL it; its workers must exit."""
    if not Path("/proc/self/stat").exists():
        pytest.skip("needs /proc to find the worker processes")
    proc = subprocess.Popen(
        [sys.executable, "-m", "mtdistill", *args], env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    workers: set[int] = set()
    try:
        deadline = time.time() + 240
        while time.time() < deadline and proc.poll() is None:
            workers = _children(proc.pid)
            if len(workers) >= n_workers and mid_run():
                break
            time.sleep(0.05)
        assert proc.poll() is None, f"the run ended before the kill: {proc.stderr.read().decode()[-2000:]}"
        workers = _children(proc.pid)
        assert len(workers) >= n_workers
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        deadline = time.time() + 30  # a bound for a loaded machine; the workers normally exit within a second
        while time.time() < deadline and any(_running(p) for p in workers):
            time.sleep(0.1)
        left = [p for p in workers if _running(p)]
        assert not left, f"worker processes {left} outlived their killed driver"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pid in workers:  # never leave strays behind, even when the test fails
            if _running(pid):
                os.kill(pid, signal.SIGKILL)
        proc.stderr.close()


@pytest.fixture(scope="module")
def many_clips(tmp_path_factory) -> Path:
    """Eight copies of a 3 s talking clip: enough work to kill a 2-worker run in the middle."""
    root = tmp_path_factory.mktemp("many")
    make_talking_video(root / "v0.mp4", seed=41, duration_s=3.0, offset_frames=0)
    for i in range(1, 8):
        shutil.copy(root / "v0.mp4", root / f"v{i}.mp4")
    return root


@pytest.mark.slow
def test_score_workers_die_with_a_killed_driver(many_clips, tmp_path):
    out = tmp_path / "scores.csv"

    def one_row_written() -> bool:
        return out.is_file() and len(out.read_bytes().splitlines()) >= 2

    args = ["score", str(many_clips), "--csv", str(out), "--checkpoint", str(TINY), "--workers", "2"]
    kill_driver_and_watch_workers(args, one_row_written)
    rows = list(csv.DictReader(out.open(newline="")))
    assert 1 <= len(rows) < 8 and all(r["error"] == "" for r in rows)


@pytest.mark.slow
def test_prepare_workers_die_with_a_killed_driver(many_clips, tmp_path):
    out = tmp_path / "store"

    def one_shard_done() -> bool:
        return len(list((out / "shards").glob("shard-*.json"))) >= 1

    args = ["prepare", str(many_clips), str(out), "--workers", "2", "--shard-size", "1", "--split", "test", "--quiet"]
    kill_driver_and_watch_workers(args, one_shard_done)
    assert not (out / "index.json").exists()


@pytest.mark.slow
def test_synth_workers_die_with_a_killed_driver(tmp_path):
    out = tmp_path / "corpus"

    def one_video_done() -> bool:
        return any(out.rglob("*.mp4"))

    args = ["synth", str(out), "--n-speakers", "2", "--n-utterances", "6", "--duration", "3", "--workers", "2"]
    kill_driver_and_watch_workers(args, one_video_done)
    assert not (out / "ground_truth.csv").exists()
