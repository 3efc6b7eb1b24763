"""`--engine ray` for score and prepare on a real two-node Ray cluster (ray.cluster_utils.Cluster, one per module).

Same rows / same store as the local engine; a worker node removed mid-run loses and duplicates nothing; a rerun
after the driver is SIGKILLed resumes; a bad --ray-address is one line and exit 2 within seconds; without Ray
installed, --engine ray is one line that names the extra.
"""

from __future__ import annotations

import csv
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

# every Ray process of this module (head, worker node, CLI drivers) binds and talks to loopback only
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"

from mtdistill.cli import main  # noqa: E402
from mtdistill.data import prepare_ray  # noqa: E402
from mtdistill.engines import Engine  # noqa: E402
from mtdistill.inference import score_ray  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
MODEL = REPO / "tests" / "data" / "trained_tiny.safetensors"
HAVE_RAY = importlib.util.find_spec("ray") is not None
needs_ray = pytest.mark.skipif(not HAVE_RAY, reason='ray is not installed (pip install "mtdistill[ray]")')
NODE_MEMORY = 80 * 1024 * 1024  # object store per node: results are a few rows, shards go to disk
NUMERIC = ("confidence", "duration_s")


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO / "src"), "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}


def rows_by_video(path: Path) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    with open(path, newline="") as fh:
        for row in csv.DictReader(fh):
            out.setdefault(row["video"], []).append(row)
    return out


def assert_same_rows(got: dict, want: dict) -> None:
    assert sorted(got) == sorted(want)
    for video, rows in want.items():
        assert len(got[video]) == len(rows), video
        by_track = sorted(got[video], key=lambda r: r["track"]), sorted(rows, key=lambda r: r["track"])
        for a, b in zip(*by_track, strict=True):
            for key in b:
                if key in NUMERIC and b[key]:
                    assert float(a[key]) == pytest.approx(float(b[key]), abs=2e-3), (video, key)
                elif key == "error":
                    assert bool(a[key]) == bool(b[key]), (video, a[key], b[key])
                else:
                    assert a[key] == b[key], (video, key)


# ------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def cluster():
    """A head node and one worker node, 1 CPU each, no dashboard; this test process is a driver on it."""
    if not HAVE_RAY:
        pytest.skip('ray is not installed (pip install "mtdistill[ray]")')
    import ray
    from ray.cluster_utils import Cluster

    from mtdistill.engines.ray_engine import connect

    c = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 1, "include_dashboard": False, "object_store_memory": NODE_MEMORY},
    )
    c.worker = c.add_node(num_cpus=1, object_store_memory=NODE_MEMORY)
    c.wait_for_nodes()
    connect(Engine("ray", address=c.address))
    yield c
    ray.shutdown()
    c.shutdown()


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    """Six 1.2 s talking clips (offsets 0..5) and one broken file."""
    from mtdistill.data.synthetic import make_talking_video

    root = tmp_path_factory.mktemp("ray_videos")
    for i in range(6):
        make_talking_video(root / f"clip{i}.mp4", seed=60 + i, duration_s=1.2, offset_frames=i)
    (root / "broken.mp4").write_bytes(b"not a video" * 40)
    return root


@pytest.fixture(scope="module")
def local_rows(videos, tmp_path_factory) -> dict:
    """What the local engine writes for the clips (the reference)."""
    from mtdistill.inference.score import ModelSpec, score_folder

    out = tmp_path_factory.mktemp("ray_ref") / "local.csv"
    score_folder(videos, out, ModelSpec(checkpoint=str(MODEL), stride=5), workers=1, progress=False)
    return rows_by_video(out)


@pytest.fixture(scope="module")
def local_store(videos, tmp_path_factory) -> Path:
    """What the local engine packs from the clips (the reference store)."""
    from mtdistill.data.prepare import prepare

    out = tmp_path_factory.mktemp("ray_ref") / "store"
    prepare(videos, out, workers=1, split="test", progress=False)
    return out


def assert_same_store(path: Path, ref: Path) -> None:
    from mtdistill.data.store import Store

    a, b = Store.open(ref), Store.open(path)
    assert b.index["complete"] and sorted(a.ids()) == sorted(b.ids())
    for uid in a.ids():  # the same utterances with the same crops, masks and audio
        np.testing.assert_array_equal(a.frames(uid), b.frames(uid))
        np.testing.assert_array_equal(a.valid(uid), b.valid(uid))
        np.testing.assert_array_equal(a.audio(uid), b.audio(uid))
        assert a.meta(uid)["sha256"] == b.meta(uid)["sha256"]
    assert [s["uid"] for s in a.index["skipped"]] == [s["uid"] for s in b.index["skipped"]] == ["broken"]
    assert b.verify() == []
    uids = [e["uid"] for e in b.index["utterances"]]
    assert len(uids) == len(set(uids))  # nothing stored twice
    assert not [p for p in (path / "shards").iterdir() if p.name.startswith(".")]  # no temporary files left


SLOW_TASK_S = 1.5  # the traced tasks below last at least this long, so the removal lands inside one


def _traced(kind: str, marks: Path):
    """The engine's task function, wrapped to leave a marker per attempt (name|node|pid) and to last a while.

    A nested function: Ray pickles it by value, so the workers run it without importing this test module; there
    the engine's own task function is the original one."""

    def traced(*args):
        import os
        import time

        import ray

        from mtdistill.data import prepare_ray
        from mtdistill.inference import score_ray

        name = os.path.basename(args[2]) if kind == "score" else str(args[0].shard_id)
        node = ray.get_runtime_context().get_node_id()
        (marks / f"{name}|{node}|{os.getpid()}|{time.time():.3f}").touch()
        time.sleep(SLOW_TASK_S)
        fn = score_ray._score_task if kind == "score" else prepare_ray._prepare_task
        return fn(*args)

    return traced


def _remove_worker_node_mid_run(cluster, run, files: int, marks: Path, finished) -> None:
    """Run ``run()`` in a driver thread; kill the worker node while a task runs there; check that task ran again.

    ``finished()``: the names (video file names / shard ids) whose results the driver has written so far."""
    from collections import Counter

    from mtdistill.engines import ray_engine

    box: dict = {}

    def target() -> None:
        try:
            run()
        except BaseException as exc:  # noqa: BLE001 - re-raised below
            box["error"] = exc

    worker_node = cluster.worker.node_id
    ray_engine.LAST_STATS = None
    driver = threading.Thread(target=target)
    driver.start()
    deadline = time.time() + 120
    running: set[str] = set()
    while time.time() < deadline and driver.is_alive() and not running:
        on_worker = {m.name.split("|")[0] for m in marks.iterdir() if m.name.split("|")[1] == worker_node}
        running = on_worker - set(finished())
        time.sleep(0.02)
    cluster.remove_node(cluster.worker, allow_graceful=False)
    driver.join(240)
    cluster.worker = cluster.add_node(num_cpus=1, object_store_memory=NODE_MEMORY)  # for the tests after this one
    assert not driver.is_alive()
    if "error" in box:
        raise box["error"]
    assert running, "the node must be removed while it runs a task"
    attempts = Counter(m.name.split("|")[0] for m in marks.iterdir())
    assert all(attempts[name] >= 2 for name in running), (running, attempts)  # Ray ran it again elsewhere
    stats = ray_engine.LAST_STATS
    assert stats.done == files and not stats.lost and stats.duplicates == 0


def _ray_engine(cluster) -> Engine:
    return Engine("ray", address=cluster.address)


# ------------------------------------------------------------------------------------------ no cluster needed


def test_without_ray_the_extra_is_named(tmp_path, monkeypatch, capsys) -> None:
    (tmp_path / "v").mkdir()
    (tmp_path / "v" / "a.mp4").write_bytes(b"x")
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError, as when it is not installed
    args = ["score", str(tmp_path / "v"), "--csv", str(tmp_path / "s.csv"), "--checkpoint", str(MODEL)]
    assert main([*args, "--engine", "ray"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and 'pip install "mtdistill[ray]"' in err[0]
    assert main(["prepare", str(tmp_path / "v"), str(tmp_path / "store"), "--engine", "ray", "--quiet"]) == 2
    assert 'pip install "mtdistill[ray]"' in capsys.readouterr().err
    assert main([*args, "--ray-num-gpus", "0.25"]) == 2  # a Ray option without --engine ray
    assert "only apply with --engine ray" in capsys.readouterr().err


@needs_ray
def test_bad_address_is_one_line_and_exit_2_quickly(videos, tmp_path) -> None:
    with socket.socket() as s:  # a port where nothing listens
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for cmd in (
        ["score", str(videos), "--csv", str(tmp_path / "s.csv"), "--checkpoint", str(MODEL)],
        ["prepare", str(videos), str(tmp_path / "store"), "--quiet"],
    ):
        t0 = time.time()
        proc = subprocess.run(
            [sys.executable, "-m", "mtdistill", *cmd, "--engine", "ray", "--ray-address", f"127.0.0.1:{port}"],
            env=_env(),
            capture_output=True,
            text=True,
            timeout=120,
        )
        elapsed = time.time() - t0
        assert proc.returncode == 2, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"error: no Ray cluster at 127.0.0.1:{port}"), proc.stderr
        assert elapsed < 60, f"took {elapsed:.1f} s"  # imports included; the check itself is a refused connect
    assert not (tmp_path / "s.csv").exists() and not (tmp_path / "store").exists()


# ------------------------------------------------------------------------------------------ on the cluster


def test_score_on_ray_equals_local(cluster, videos, local_rows, tmp_path) -> None:
    from mtdistill.engines import ray_engine
    from mtdistill.inference.score import ModelSpec, aggregate, score_folder

    out = tmp_path / "ray.csv"
    summary = score_folder(
        videos,
        out,
        ModelSpec(checkpoint=str(MODEL), stride=5),
        progress=False,
        run_videos=score_ray.ray_runner(_ray_engine(cluster)),
    )
    assert_same_rows(rows_by_video(out), local_rows)
    assert summary == aggregate(out) and summary["videos"] == 7 and summary["videos_failed"] == 1
    stats = ray_engine.LAST_STATS
    assert stats.done == 7 and stats.failed == 1 and not stats.lost and stats.duplicates == 0
    assert stats.model_loads == len(stats.workers) < stats.done  # once per worker process, not once per file
    # a rerun finds everything done and asks the cluster for nothing
    again = score_folder(
        videos,
        out,
        ModelSpec(checkpoint=str(MODEL), stride=5),
        progress=False,
        run_videos=score_ray.ray_runner(_ray_engine(cluster)),
    )
    assert again == summary and rows_by_video(out).keys() == local_rows.keys()


def test_prepare_on_ray_makes_the_local_store(cluster, videos, local_store, tmp_path) -> None:
    from mtdistill.data.prepare import prepare

    remote = prepare(
        videos, tmp_path / "ray", split="test", progress=False, run_shards=prepare_ray.ray_runner(_ray_engine(cluster))
    )
    assert (remote["stored"], remote["skipped"]) == (6, 1)
    assert_same_store(tmp_path / "ray", local_store)


def test_worker_node_removed_mid_run_loses_and_duplicates_nothing(
    cluster, videos, local_rows, tmp_path, monkeypatch
) -> None:
    from mtdistill.inference.score import ModelSpec, score_folder

    out, marks = tmp_path / "removed.csv", tmp_path / "marks"
    marks.mkdir()
    monkeypatch.setattr(score_ray, "_score_task", _traced("score", marks))
    spec = ModelSpec(checkpoint=str(MODEL), stride=5)
    _remove_worker_node_mid_run(
        cluster,
        lambda: score_folder(videos, out, spec, progress=False, run_videos=score_ray.ray_runner(_ray_engine(cluster))),
        files=7,
        marks=marks,
        finished=lambda: {Path(v).name for v in rows_by_video(out)} if out.exists() else set(),
    )
    assert_same_rows(rows_by_video(out), local_rows)  # every video, each exactly once (one row per track)


def test_prepare_node_removed_mid_run_gives_the_same_store(cluster, videos, local_store, tmp_path, monkeypatch) -> None:
    from mtdistill.data.prepare import prepare

    out, marks = tmp_path / "removed", tmp_path / "marks"
    marks.mkdir()
    monkeypatch.setattr(prepare_ray, "_prepare_task", _traced("prepare", marks))
    engine = _ray_engine(cluster)
    _remove_worker_node_mid_run(
        cluster,
        lambda: prepare(
            videos, out, split="test", shard_size=1, progress=False, run_shards=prepare_ray.ray_runner(engine)
        ),
        files=7,
        marks=marks,
        finished=lambda: {str(int(p.stem.split("-")[1])) for p in (out / "shards").glob("shard-*.json")},
    )
    assert_same_store(out, local_store)


def test_rerun_after_the_driver_is_killed_resumes(cluster, videos, local_rows, tmp_path) -> None:
    out = tmp_path / "killed.csv"
    cmd = [
        sys.executable,
        "-m",
        "mtdistill",
        "score",
        str(videos),
        "--csv",
        str(out),
        "--checkpoint",
        str(MODEL),
        "--stride",
        "5",
        "--engine",
        "ray",
        "--ray-address",
        cluster.address,
    ]
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 180
        while time.time() < deadline and proc.poll() is None:
            if out.exists() and len(rows_by_video(out)) >= 1:
                break
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    before = rows_by_video(out)
    assert 1 <= len(before) < 7, "the kill must land in the middle of the run"
    rerun = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    after = rows_by_video(out)
    assert_same_rows(after, local_rows)  # nothing lost, nothing written twice
    for video, rows in before.items():
        assert after[video] == rows  # finished rows were kept as they were, not redone


def test_progress_bar_counts_done_failed_remaining(cluster, videos, tmp_path) -> None:
    """The Ray bar's postfix: failed and remaining, next to tqdm's done / total."""
    from io import StringIO

    from mtdistill.inference.score import ModelSpec

    src = tmp_path / "two"
    src.mkdir()
    shutil.copy(videos / "clip0.mp4", src / "clip0.mp4")
    shutil.copy(videos / "broken.mp4", src / "broken.mp4")
    err = StringIO()
    real = sys.stderr
    sys.stderr = err
    try:
        stats = score_ray.score_videos(
            [str(src / "broken.mp4"), str(src / "clip0.mp4")],
            ModelSpec(checkpoint=str(MODEL), stride=5),
            _ray_engine(cluster),
            tmp_path / "two.csv",
            progress=True,
        )
    finally:
        sys.stderr = real
    assert (stats.done, stats.failed) == (2, 1)
    text = err.getvalue()
    assert "2/2" in text and "failed=1" in text and "remaining=0" in text


def test_paths_missing_on_a_node_stop_the_run_with_one_line(cluster, tmp_path) -> None:
    """No shared storage (a path the driver lists is not on the worker's disk), or a model the workers cannot load:
    the run stops with one line instead of writing an error row for every file."""
    from mtdistill.core.errors import UserError
    from mtdistill.inference.score import ModelSpec

    engine = _ray_engine(cluster)
    spec = ModelSpec(checkpoint=str(MODEL), stride=5)
    with pytest.raises(UserError, match=r"not visible on node .*same path"):
        score_ray.score_videos([str(tmp_path / "gone.mp4")], spec, engine, tmp_path / "a.csv", progress=False)
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="could not load the model"):
        score_ray.score_videos([str(MODEL)], ModelSpec(checkpoint=str(bad)), engine, tmp_path / "b.csv", False)
    assert not (tmp_path / "a.csv").exists() and not (tmp_path / "b.csv").exists()


def _crash_on(kind: str, bad: str):
    """The engine's task, except that its worker process dies (os._exit) whenever the input named ``bad`` is in it."""

    def crashing(*args):
        import os

        from mtdistill.data import prepare_ray
        from mtdistill.inference import score_ray

        names = [os.path.basename(args[2])] if kind == "score" else [os.path.basename(i.path) for i in args[0].items]
        if bad in names:
            os._exit(1)
        fn = score_ray._score_task if kind == "score" else prepare_ray._prepare_task
        return fn(*args)

    return crashing


def test_a_file_that_kills_its_worker_is_one_error_row(cluster, videos, tmp_path, monkeypatch) -> None:
    from mtdistill.inference.score import ModelSpec

    monkeypatch.setattr(score_ray, "_score_task", _crash_on("score", "clip1.mp4"))
    engine = Engine("ray", address=cluster.address, max_retries=1)
    todo = [str(videos / f"clip{i}.mp4") for i in range(3)]
    stats = score_ray.score_videos(todo, ModelSpec(checkpoint=str(MODEL), stride=5), engine, tmp_path / "s.csv", False)
    assert (stats.done, stats.failed, stats.lost) == (3, 1, [])
    rows = rows_by_video(tmp_path / "s.csv")
    assert [r["error"] for r in rows[todo[1]]] == ["WorkerCrashedError: a worker died on this file 2 times"]
    assert not rows[todo[0]][0]["error"] and not rows[todo[2]][0]["error"]


def test_prepare_splits_a_shard_whose_worker_dies_and_skips_only_the_culprit(
    cluster, videos, tmp_path, monkeypatch
) -> None:
    from tqdm import tqdm

    from mtdistill.data import store as st
    from mtdistill.data.layouts import discover
    from mtdistill.data.prepare import ShardJob

    monkeypatch.setattr(prepare_ray, "_prepare_task", _crash_on("prepare", "clip1.mp4"))
    items = tuple(i for i in discover(videos, split="test").items if i.uid in ("clip0", "clip1", "clip2"))
    root = tmp_path / "store"
    (root / "shards").mkdir(parents=True)
    job = ShardJob(0, items, str(root), str(videos), "haar", 1, {}, None)
    engine = Engine("ray", address=cluster.address, max_retries=1)
    with tqdm(total=3, disable=True) as bar:
        stats = prepare_ray.prepare_shards([job], engine, root, {}, bar)
    assert (stats.done, stats.failed, stats.split) == (3, 1, 1)
    index = st.build_index(root)
    assert sorted(u["uid"] for u in index["utterances"]) == ["clip0", "clip2"]
    assert [(s["uid"], s["reason"].split(":")[0]) for s in index["skipped"]] == [("clip1", "WorkerCrashedError")]
    assert not (root / "shards" / "shard-00000.json").exists()  # the crashed shard was replaced by one per input
