"""Bad input and faults give one clear line and exit code 2, never a traceback (issue 14: sync, fix, evaluate,
export, damaged media, output modes, fix's frame unit). Real files throughout: mp4s written with PyAV, a store
made by `mtdistill prepare`, shards truncated or corrupted on disk, folders a non-root user cannot write, a full
tmpfs."""

from __future__ import annotations

import contextlib
import csv
import importlib
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import traceback
from pathlib import Path

import av
import numpy as np
import pytest

from mtdistill.cli import main
from mtdistill.core.safeio import atomic_write_text
from mtdistill.data.synthetic import make_talking_video
from mtdistill.inference.fix import fix_video
from mtdistill.media.testmedia import tone, write_video

TINY = Path(__file__).parent / "data" / "trained_tiny.safetensors"
NOBODY = 65534
FAST = ("--stride", "5")  # sync runs score every 5th window (detection every 5th frame): same checks, less work
PRELOAD = ("mtdistill.evaluation.store_eval", "mtdistill.inference.fix", "mtdistill.inference.onnx_export",
           "mtdistill.inference.sync", "mtdistill.models.vocalist", "onnx")  # fmt: skip


# ---------------------------------------------------------------------------------------------- helpers


def assert_one_line_error(code: int, err: str, *needles: str) -> str:
    """Exit code 2, exactly one line on stderr starting with 'error:', no traceback, and the needles in it."""
    assert code == 2, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ")
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def cli_error(capsys, argv: list[str], *needles: str) -> str:
    capsys.readouterr()
    code = main(argv)
    return assert_one_line_error(code, capsys.readouterr().err, *needles)


def damage(src: Path, dst: Path, at: float = 0.5, n_bytes: int = 2000) -> Path:
    """A copy of ``src`` with ``n_bytes`` random bytes written over the middle (at ``at`` of its size)."""
    data = bytearray(src.read_bytes())
    start = int(len(data) * at)
    data[start : start + n_bytes] = np.random.default_rng(0).integers(0, 256, n_bytes, dtype=np.uint8).tobytes()
    dst.write_bytes(bytes(data))
    return dst


def decoded_audio(path) -> np.ndarray:
    with av.open(str(path)) as c:
        return np.concatenate([f.to_ndarray()[0] for f in c.decode(c.streams.audio[0])])


def lag(moved: np.ndarray, original: np.ndarray, max_lag: int) -> tuple[int, float]:
    """Lag (samples) that best aligns ``moved`` with ``original``, and the normalised correlation there."""
    n = min(len(moved), len(original)) - 2 * max_lag
    ref = original[max_lag : max_lag + n]
    best, best_c = 0, -1.0
    for d in range(-max_lag, max_lag + 1):
        seg = moved[max_lag + d : max_lag + d + n]
        c = float(np.dot(seg, ref) / (np.linalg.norm(seg) * np.linalg.norm(ref) + 1e-12))
        if c > best_c:
            best, best_c = d, c
    return best, best_c


@contextlib.contextmanager
def umask(mask: int):
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> dict[str, Path]:
    """A talking clip (25 fps), the same clip damaged in the middle, and a clip with no face."""
    d = tmp_path_factory.mktemp("media")
    talk = d / "talk.mp4"
    make_talking_video(talk, seed=1, duration_s=4.0)
    faceless = d / "noface.mp4"
    write_video(faceless, 50, 25, (160, 120), frame_fn=lambda i: np.zeros((120, 160, 3), np.uint8),
                audio=tone(2 * 16000, 16000))  # fmt: skip
    return {"talk": talk, "damaged": damage(talk, d / "damaged.mp4"), "noface": faceless}


# ---------------------------------------------------------------------------------------------- non-root runs


@pytest.fixture
def shared_dir():
    """A folder every user can enter (pytest's tmp folders are 0700 to root); removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix="mtdistill-hardening-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def read_only_folder(base: Path) -> Path:
    ro = base / "read_only"
    ro.mkdir()
    ro.chmod(0o555)
    return ro


def run_unprivileged(argv: list[str]) -> tuple[int, str]:
    """`mtdistill ARGV` in a forked child process that runs as user nobody when this runs as root (root ignores
    file permissions; the fork keeps the loaded interpreter, which nobody may not be allowed to exec), else as
    the current, already unprivileged, user. Returns (exit code, stderr)."""
    for module in PRELOAD:  # nobody may not read the interpreter's own library folder (e.g. under /root)
        importlib.import_module(module)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never return into pytest
        code = 99
        try:
            os.close(read_end)
            sys.stderr = os.fdopen(write_end, "w")
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - the child exits right after
            if os.geteuid() == 0:
                os.setgroups([])
                os.setgid(NOBODY)
                os.setuid(NOBODY)
            code = main(argv)
        except BaseException:  # noqa: BLE001 - report anything to the parent as a traceback
            traceback.print_exc()
        finally:
            sys.stderr.flush()
            os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end) as fh:
        err = fh.read()
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), err


@pytest.fixture
def unprivileged(shared_dir):
    """(run, shared_dir, read-only folder) for permission tests; skips where no unprivileged user can be had."""
    if os.geteuid() == 0:
        pid = os.fork()
        if pid == 0:
            try:
                os.setgroups([])
                os.setgid(NOBODY)
                os.setuid(NOBODY)
            finally:
                os._exit(0 if os.geteuid() == NOBODY else 1)
        _, status = os.waitpid(pid, 0)
        if os.waitstatus_to_exitcode(status) != 0:
            pytest.skip("running as root and cannot switch to user nobody here: root ignores file permissions")
    return run_unprivileged, shared_dir, read_only_folder(shared_dir)


def readable_copy(src: Path, folder: Path) -> Path:
    dst = folder / src.name
    shutil.copyfile(src, dst)
    dst.chmod(0o644)
    return dst


# ---------------------------------------------------------------------------------------------- sync


def test_sync_device_bogus_is_one_line_in_a_real_process(media) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "mtdistill", "sync", str(media["talk"]), "--checkpoint", str(TINY), "--device", "bogus"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert_one_line_error(proc.returncode, proc.stderr, "unknown --device 'bogus'")


def test_sync_device_cuda_without_cuda(media, capsys) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA; the case is a machine without it")
    cli_error(capsys, ["sync", str(media["talk"]), "--checkpoint", str(TINY), "--device", "cuda"], "no CUDA GPU")
    cli_error(capsys, ["sync", str(media["talk"]), "--checkpoint", str(TINY), "--device", "cuda:1"], "no CUDA GPU")


def test_sync_detector_that_is_not_a_detector_is_never_called(media, capsys, tmp_path, monkeypatch) -> None:
    marker = tmp_path / "called"
    (tmp_path / "evil_plugin.py").write_text(
        "from pathlib import Path\n"
        f"MARKER = Path({str(marker)!r})\n"
        "def make_marker():\n"
        "    MARKER.write_text('called')\n"
        "class NoDetect:\n"
        "    def __init__(self):\n"
        "        MARKER.write_text('built')\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    video = str(media["talk"])
    cli_error(capsys, ["sync", video, "--checkpoint", str(TINY), "--detector", "os:system"], "not a detector class")
    cli_error(capsys, ["sync", video, "--detector", "evil_plugin:make_marker"], "not a detector class")
    cli_error(capsys, ["sync", video, "--detector", "evil_plugin:NoDetect"], "no detect(rgb) method")
    cli_error(capsys, ["sync", video, "--detector", "no_such_module_xyz:Det"], "cannot import detector")
    cli_error(capsys, ["sync", video, "--detector", "bogus"], "unknown detector 'bogus'")
    assert not marker.exists()  # nothing the spec named was called or built


def test_sync_plot_is_checked_before_the_analysis(media, capsys, tmp_path) -> None:
    # the faceless video would fail the analysis ("no face found"): the plot error coming first shows the order
    video = str(media["noface"])
    cli_error(capsys, ["sync", video, "--checkpoint", str(TINY), "--plot", str(tmp_path)], "--plot", "is a folder")
    not_a_folder = tmp_path / "file.txt"
    not_a_folder.write_text("keep me")
    cli_error(capsys, ["sync", video, "--checkpoint", str(TINY), "--plot", str(not_a_folder / "p.png")], "not a folder")
    assert not_a_folder.read_text() == "keep me"
    cli_error(capsys, ["sync", video, "--checkpoint", str(TINY)], "no face found")  # the file is what it claims


def test_sync_plot_unwritable(media, unprivileged) -> None:
    run, base, ro = unprivileged
    video = readable_copy(media["noface"], base)
    code, err = run(["sync", str(video), "--checkpoint", str(TINY), "--plot", str(ro / "plot.png")])
    assert_one_line_error(code, err, "--plot", "cannot write there")
    assert os.listdir(ro) == []


@pytest.mark.parametrize(
    ("option", "value", "needle"),
    [
        ("--min-confidence", "nan", "--min-confidence must be a finite number"),
        ("--min-confidence", "inf", "--min-confidence must be a finite number"),
        ("--detect-every", "0", "--detect-every must be >= 1"),
        ("--detect-every", "-2", "--detect-every must be >= 1"),
        ("--stride", "0", "--stride must be >= 1"),
        ("--rescan-every", "-1", "--rescan-every must be >= 0"),
    ],
)
def test_bad_model_values_are_refused_by_sync_and_fix(media, capsys, tmp_path, option, value, needle) -> None:
    video = str(media["talk"])
    cli_error(capsys, ["sync", video, "--checkpoint", str(TINY), option, value], needle)
    cli_error(capsys, ["fix", video, "-o", str(tmp_path / "o.mp4"), "--checkpoint", str(TINY), option, value], needle)
    assert not (tmp_path / "o.mp4").exists()


# ---------------------------------------------------------------------------------------------- fix


def test_fix_bad_outputs(media, capsys, tmp_path) -> None:
    video = str(media["talk"])
    cli_error(capsys, ["fix", video, "-o", str(tmp_path), "--offset", "2"], "-o", "is a folder")
    cli_error(capsys, ["fix", video, "-o", str(tmp_path / "out.wav"), "--offset", "2"], "cannot hold the copied h264")
    cli_error(capsys, ["fix", video, "-o", str(tmp_path / "out.xyz"), "--offset", "2"], "unknown output format")
    cli_error(
        capsys,
        ["fix", video, "-o", str(tmp_path / "o.mp4"), "--offset", "2", "--audio-codec", "bogus"],
        "unknown --audio-codec 'bogus'",
    )
    cli_error(
        capsys,
        ["fix", video, "-o", str(tmp_path / "o.mp4"), "--offset", "2", "--audio-codec", "libx264"],
        "is a video encoder",
    )
    cli_error(capsys, ["fix", video, "-o", video, "--offset", "2"], "is the input")
    assert sorted(os.listdir(tmp_path)) == []


def test_fix_output_unwritable(media, unprivileged) -> None:
    run, base, ro = unprivileged
    video = readable_copy(media["talk"], base)
    code, err = run(["fix", str(video), "-o", str(ro / "fixed.mp4"), "--offset", "2"])
    assert_one_line_error(code, err, "-o", "cannot write there")
    assert os.listdir(ro) == []


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--offset", "2", "--fps", "0"], "--fps must be a positive number"),
        (["--offset", "2", "--fps", "-25"], "--fps must be a positive number"),
        (["--offset", "2", "--fps", "nan"], "--fps must be a positive number"),
        (["--offset", "1000"], "beyond the audio's length"),
        (["--offset", "-1000"], "beyond the audio's length"),
        (["--offset-ms", "60000"], "beyond the audio's length"),
        (["--offset-ms", "nan"], "--offset-ms must be a finite number"),
        (["--offset", "3", "--offset-ms", "120"], "not both"),
        (["--offset-ms", "120", "--fps", "30"], "does not apply to --offset-ms"),
        (["--offset", "two"], "--offset must be an integer"),
    ],
)
def test_fix_bad_values(media, capsys, tmp_path, extra, needle) -> None:
    cli_error(capsys, ["fix", str(media["talk"]), "-o", str(tmp_path / "o.mp4"), *extra], needle)
    assert not (tmp_path / "o.mp4").exists()


def test_fix_full_disk_leaves_no_partial_file(media, capsys, tmp_path) -> None:
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    mnt = tmp_path / "small_disk"
    mnt.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()[:200]}")
    try:
        st = os.statvfs(mnt)
        (mnt / "filler").write_bytes(b"\0" * (st.f_bavail * st.f_frsize - 8192))  # ~8 KB left; the output is ~40 KB
        cli_error(capsys, ["fix", str(media["talk"]), "-o", str(mnt / "fixed.mp4"), "--offset", "2"],
                  "No space left on device", "nothing was written")  # fmt: skip
        assert sorted(os.listdir(mnt)) == ["filler"]  # neither the output nor a hidden temporary file
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


def test_fix_refuses_damaged_files(media, capsys, tmp_path) -> None:
    out = tmp_path / "o.mp4"
    cli_error(capsys, ["fix", str(media["damaged"]), "-o", str(out), "--offset", "2"], "decoding failed")
    cli_error(capsys, ["fix", str(media["damaged"]), "-o", str(out), "--checkpoint", str(TINY), *FAST], "is damaged")
    assert not out.exists()


# ---------------------------------------------------------------------------------------------- fix's frame unit


@pytest.fixture(scope="module")
def clip30(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("fps30") / "talk30.mp4"
    make_talking_video(path, seed=5, duration_s=2.0, fps=30.0)
    return path


@pytest.mark.parametrize(
    ("extra", "shift"),
    [
        (["--offset", "3"], 1920),  # 3 analysis frames of 40 ms = 120 ms at 16 kHz, not 100 ms (30 fps frames)
        (["--offset-ms", "120"], 1920),
        (["--offset-ms", "-37.5"], -600),
        (["--offset", "3", "--fps", "30"], 1600),  # the video's own frames, when asked for
    ],
)
def test_fix_offset_counts_40_ms_frames_on_a_30fps_clip(clip30, capsys, tmp_path, extra, shift) -> None:
    out = tmp_path / "fixed.mp4"
    capsys.readouterr()
    assert main(["fix", str(clip30), "-o", str(out), *extra]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["shift_samples"] == shift and report["sample_rate"] == 16000
    assert report["offset_ms"] == pytest.approx(shift / 16.0)
    d, corr = lag(decoded_audio(out), decoded_audio(clip30), max_lag=2400)
    assert d == shift and corr > 0.9  # measured on the written file


# ---------------------------------------------------------------------------------------------- files as expected


@pytest.mark.parametrize(("mask", "mode"), [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_outputs_honour_the_umask(media, tmp_path, mask, mode) -> None:
    with umask(mask):
        atomic_write_text(tmp_path / "a.txt", "x")
        fix_video(media["talk"], tmp_path / "fixed.mp4", 2)
    assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == mode
    assert stat.S_IMODE((tmp_path / "fixed.mp4").stat().st_mode) == mode


# ---------------------------------------------------------------------------------------------- damaged media


def test_sync_reports_damage_in_the_middle(media, capsys) -> None:
    capsys.readouterr()
    assert main(["sync", str(media["damaged"]), "--checkpoint", str(TINY), "--json", *FAST]) == 0
    captured = capsys.readouterr()
    result = json.loads(captured.out)
    assert result["warnings"], result
    assert any(w.startswith("video: ") and "could not be decoded" in w for w in result["warnings"])
    assert "Traceback" not in captured.err
    warned = [line for line in captured.err.splitlines() if line.startswith("warning: ")]
    assert [line.removeprefix("warning: ") for line in warned] == result["warnings"]
    # the clean file has none
    assert main(["sync", str(media["talk"]), "--checkpoint", str(TINY), "--json", *FAST]) == 0
    clean = capsys.readouterr()
    assert json.loads(clean.out)["warnings"] == [] and "warning:" not in clean.err


def test_sync_says_when_the_decoded_span_is_much_shorter(media, tmp_path, capsys) -> None:
    mkv = tmp_path / "talk.mkv"
    with av.open(str(media["talk"])) as inp, av.open(str(mkv), "w", format="matroska") as out:
        streams = {s.index: out.add_stream_from_template(s) for s in (inp.streams.video[0], inp.streams.audio[0])}
        for packet in inp.demux(*[inp.streams.video[0], inp.streams.audio[0]]):
            if packet.dts is None:
                continue
            packet.stream = streams[packet.stream.index]
            out.mux(packet)
    cut = tmp_path / "cut.mkv"
    cut.write_bytes(mkv.read_bytes()[: int(mkv.stat().st_size * 0.5)])
    capsys.readouterr()
    assert main(["sync", str(cut), "--checkpoint", str(TINY), "--json", *FAST]) == 0
    warnings = json.loads(capsys.readouterr().out)["warnings"]
    assert any(w.startswith("video: ") and ("only" in w or "stopped" in w) for w in warnings), warnings


def test_score_csv_has_a_warnings_column(media, tmp_path) -> None:
    from mtdistill.inference.score import COLUMNS, ModelSpec, score_folder

    folder = tmp_path / "videos"
    folder.mkdir()
    shutil.copyfile(media["damaged"], folder / "damaged.mp4")
    shutil.copyfile(media["talk"], folder / "clean.mp4")
    score_folder(folder, tmp_path / "scores.csv", ModelSpec(checkpoint=str(TINY), stride=5), workers=1, progress=False)
    assert "warnings" in COLUMNS
    with open(tmp_path / "scores.csv", newline="") as fh:
        rows = {Path(r["video"]).name: r for r in csv.DictReader(fh)}
    assert "could not be decoded" in rows["damaged.mp4"]["warnings"]
    assert rows["clean.mp4"]["warnings"] == "" and rows["clean.mp4"]["error"] == ""


# ---------------------------------------------------------------------------------------------- evaluate


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    """A real store: `mtdistill synth` (2 short utterances) -> `mtdistill prepare`."""
    root = tmp_path_factory.mktemp("store")
    assert main(["synth", str(root / "videos"), "--n-speakers", "1", "--n-utterances", "2", "--duration", "1.2",
                 "--splits", "test=1", "--workers", "1", "--quiet"]) == 0  # fmt: skip
    assert main(["prepare", str(root / "videos"), str(root / "store"), "--workers", "1", "--quiet"]) == 0
    assert list((root / "store" / "shards").glob("shard-*.h5"))
    return root / "store"


def damaged_store(store: Path, dst: Path, how: str) -> tuple[Path, Path]:
    shutil.copytree(store, dst)
    shard = sorted((dst / "shards").glob("shard-*.h5"))[0]
    data = shard.read_bytes()
    if how == "truncated":
        shard.write_bytes(data[: len(data) // 2])
    else:  # the HDF5 superblock overwritten
        shard.write_bytes(b"\x13" * 512 + data[512:])
    return dst, shard


@pytest.mark.parametrize("how", ["truncated", "corrupt"])
def test_evaluate_names_a_damaged_shard(store, capsys, tmp_path, how) -> None:
    root, shard = damaged_store(store, tmp_path / "store", how)
    line = cli_error(capsys, ["evaluate", str(TINY), str(root), "--out", str(tmp_path / "eval")], "is damaged")
    assert str(shard) in line
    assert not (tmp_path / "eval").exists()


def test_evaluate_bad_out_and_max_utterances(store, capsys, tmp_path) -> None:
    existing = tmp_path / "results.txt"
    existing.write_text("the user's notes")
    cli_error(capsys, ["evaluate", str(TINY), str(store), "--out", str(existing)], "--out", "is an existing file")
    assert existing.read_text() == "the user's notes"
    cli_error(capsys, ["evaluate", str(TINY), str(store), "--max-utterances", "0"], "--max-utterances must be >= 1")
    cli_error(capsys, ["evaluate", str(TINY), str(store), "--max-utterances", "-3"], "--max-utterances must be >= 1")


def test_evaluate_out_unwritable(store, unprivileged) -> None:
    run, base, ro = unprivileged
    readable = base / "store"
    shutil.copytree(store, readable)
    for p in [readable, *readable.rglob("*")]:
        p.chmod(0o755 if p.is_dir() else 0o644)
    code, err = run(["evaluate", str(TINY), str(readable), "--out", str(ro / "eval")])
    assert_one_line_error(code, err, "--out", "cannot write there")
    assert os.listdir(ro) == []


# ---------------------------------------------------------------------------------------------- export


@pytest.mark.parametrize("opset", ["9", "13", "99"])
def test_export_unsupported_opset(capsys, tmp_path, opset) -> None:
    out = tmp_path / "m.onnx"
    cli_error(capsys, ["export", str(TINY), "-o", str(out), "--opset", opset], f"--opset {opset} is not supported")
    assert not out.exists()


def test_export_output_unwritable(unprivileged) -> None:
    run, _, ro = unprivileged
    code, err = run(["export", str(TINY), "-o", str(ro / "m.onnx")])
    assert_one_line_error(code, err, "-o", "cannot write there")
    assert os.listdir(ro) == []


def test_export_output_is_a_folder(capsys, tmp_path) -> None:
    folder = tmp_path / "m.onnx"
    folder.mkdir()
    cli_error(capsys, ["export", str(TINY), "-o", str(folder)], "is a folder")
