"""`mtdistill prepare` on the three layouts, skipped-input summary, and resume after a real SIGKILL."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import soundfile as sf

from mtdistill.cli import main
from mtdistill.core.errors import UserError
from mtdistill.data.layouts import discover, read_filelist
from mtdistill.data.prepare import lower_half_of_face, prepare
from mtdistill.data.store import Store
from mtdistill.data.synthetic import synth_corpus, talking_clip, write_mp4

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """A tiny LRS2-layout corpus: 2 speakers x 3 utterances of 1.2 s, known offsets in the test split."""
    out = tmp_path_factory.mktemp("corpus")
    synth_corpus(
        out,
        n_speakers=2,
        n_utterances=3,
        seed=4,
        duration=(1.2, 1.2),
        offsets="-2,2",
        offset_splits=("test",),
        progress=False,
    )
    return out


@pytest.fixture(scope="module")
def lrs2_store(corpus, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("lrs2_store") / "store"
    return out, prepare(corpus, out, workers=1, progress=False)


def test_lrs2_layout_splits_offsets_and_round_trip(corpus, lrs2_store):
    from mtdistill.audio import load_audio
    from mtdistill.video import mouth_crops

    path, summary = lrs2_store
    assert summary["layout"] == "lrs2" and summary["stored"] == 6 and summary["skipped"] == 0
    s = Store.open(path)
    truth = {r["uid"]: r for r in csv.DictReader((corpus / "ground_truth.csv").read_text().splitlines())}
    for split in ("pretrain", "train", "val", "test"):
        listed = read_filelist(corpus / "filelists" / f"{split}.txt")
        assert sorted(s.ids(split)) == sorted(listed)
    for uid in s.ids():
        m = s.meta(uid)
        assert m["offset_frames"] == int(truth[uid]["offset_frames"])
        assert m["n_frames"] == 30 and m["n_valid"] >= 29
    # what the store holds is what the media functions produce
    uid = s.ids("test")[0]
    video = corpus / s.meta(uid)["source"]
    crops = mouth_crops(video)[0]
    np.testing.assert_array_equal(s.frames(uid)[crops.track.start_frame : crops.track.end_frame + 1], crops.crops)
    np.testing.assert_allclose(s.audio(uid), load_audio(video), atol=1 / 32768 + 1e-7)
    assert s.verify() == []


def test_wav2lip_layout_gaps_and_bit_exact_audio(corpus, tmp_path):
    from mtdistill.data.wav2lip_export import export_video

    src = tmp_path / "w2l"
    uids = read_filelist(corpus / "filelists" / "pretrain.txt")[:2]
    for k, uid in enumerate(uids):
        export_video(corpus / "pretrain" / f"{uid}.mp4", src / "pretrain" / uid, drop={3, 4} if k == 0 else None)
    (src / "pretrain" / "spk9999" / "00001").mkdir(parents=True)  # jpgs but no audio.wav
    shutil.copy(next((src / "pretrain" / uids[0]).glob("*.jpg")), src / "pretrain" / "spk9999" / "00001" / "0.jpg")
    summary = prepare(src, tmp_path / "store", workers=1, progress=False)
    assert summary["layout"] == "wav2lip" and summary["stored"] == 2
    s = Store.open(tmp_path / "store")
    assert sorted(s.ids("pretrain")) == sorted(uids)  # no lists: pretrain/ -> "pretrain"
    folder = src / "pretrain" / uids[0]
    valid = s.valid(uids[0])
    assert not valid[3] and not valid[4] and valid[0] and valid[5]
    assert not s.frames(uids[0], 3, 5).any()  # gaps are zero frames
    img = cv2.imread(str(folder / "7.jpg"))
    np.testing.assert_array_equal(s.frames(uids[0], 7, 8)[0], lower_half_of_face(img))
    pcm, sr = sf.read(folder / "audio.wav", dtype="int16")
    assert sr == 16000
    np.testing.assert_array_equal(np.round(s.audio(uids[0]) * 32768).astype(np.int16), pcm)
    skipped = list(csv.DictReader((tmp_path / "store" / "skipped.csv").read_text().splitlines()))
    assert [(r["uid"], r["reason"]) for r in skipped] == [("spk9999/00001", "no audio.wav")]


def test_video_folder_skips_bad_inputs_with_reasons(corpus, tmp_path, capsys):
    src = tmp_path / "videos"
    (src / "sub").mkdir(parents=True)
    first = sorted(corpus.rglob("*.mp4"))[0]
    shutil.copy(first, src / "sub" / "talk one.mp4")
    (src / "broken.mp4").write_bytes(b"not a video at all")
    noise = np.random.default_rng(0).integers(0, 255, (20, 96, 128, 3), dtype=np.uint8)
    write_mp4(src / "noface.mp4", noise, np.zeros(20 * 640, np.float32))
    clip = talking_clip(seed=1, duration_s=0.4)
    write_mp4(src / "tiny.mp4", clip.frames[:3], clip.audio[: 3 * 640])  # 3 frames: too short
    code = main(
        [
            "prepare",
            str(src),
            str(tmp_path / "store"),
            "--workers",
            "1",
            "--quiet",
            "--split",
            "test",
            "--detect-every",
            "2",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "prepared 1 of 4 inputs" in out and "| skipped | reason |" in out
    s = Store.open(tmp_path / "store")
    assert s.ids("test") == ["sub/talk one"]
    rows = {
        r["uid"]: r["reason"] for r in csv.DictReader((tmp_path / "store" / "skipped.csv").read_text().splitlines())
    }
    assert set(rows) == {"broken", "noface", "tiny"}
    assert "no face" in rows["noface"]
    assert "frame" in rows["tiny"]
    assert rows["broken"]  # a decoding error, in one line
    index = json.loads((tmp_path / "store" / "index.json").read_text())
    assert index["complete"] and len(index["skipped"]) == 3


def test_discovery_reads_lrs2_lists_and_reports_missing(corpus, tmp_path):
    lists = tmp_path / "lists"
    lists.mkdir()
    test_uids = read_filelist(corpus / "filelists" / "test.txt")
    (lists / "test.txt").write_text("".join(f"{u} NF\n" for u in test_uids) + "spk0042/00001 NF\n")
    disc = discover(corpus, split_lists=lists)
    assert [i.uid for i in disc.items] == test_uids and all(i.split == "test" for i in disc.items)
    assert disc.missing == [("spk0042/00001", "test", f"listed in test.txt but not found under {corpus}")]
    assert disc.notes  # the utterances in no list are reported
    with pytest.raises(UserError, match="not a folder"):
        discover(tmp_path / "nope")


@pytest.mark.slow
def test_resume_after_sigkill(corpus, lrs2_store, tmp_path):
    """Kill a real `mtdistill prepare` subprocess mid-run, rerun: every input exactly once, same content."""
    src = tmp_path / "flat"
    src.mkdir()
    videos = sorted(corpus.rglob("*.mp4"))
    for i, video in enumerate(videos):
        shutil.copy(video, src / f"v{i}.mp4")
    out = tmp_path / "store"
    cmd = [
        sys.executable,
        "-m",
        "mtdistill",
        "prepare",
        str(src),
        str(out),
        "--workers",
        "1",
        "--shard-size",
        "1",
        "--quiet",
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and len(list((out / "shards").glob("shard-*.json"))) < 2:
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    done_before = len(list((out / "shards").glob("shard-*.json")))
    assert 2 <= done_before < 6, "the kill must land in the middle of the run"
    (out / "shards" / "shard-00077.h5").write_bytes(b"half-written shard from a killed run")  # no sidecar
    rerun = subprocess.run([*cmd, "--json"], env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    summary = json.loads(rerun.stdout)
    assert summary["stored"] == 6 and summary["done_before"] >= done_before
    assert not (out / "shards" / "shard-00077.h5").exists()
    assert not [p for p in (out / "shards").iterdir() if p.name.startswith(".")]
    s = Store.open(out)
    uids = [e["uid"] for e in s.index["utterances"]]
    assert sorted(uids) == [f"v{i}" for i in range(6)]  # nothing lost, nothing duplicated
    assert s.verify() == []
    # same content as the uninterrupted run on the same videos (LRS2 layout names)
    ref = Store.open(lrs2_store[0])
    by_source = {str(corpus / ref.meta(u)["source"]): ref.meta(u)["sha256"] for u in ref.ids()}
    assert {u: s.meta(u)["sha256"] for u in uids} == {f"v{i}": by_source[str(v)] for i, v in enumerate(videos)}


def test_parallel_workers_match_serial(corpus, lrs2_store, tmp_path):
    parallel = prepare(corpus, tmp_path / "b", workers=2, progress=False)
    assert parallel["stored"] == 6
    a, b = Store.open(lrs2_store[0]), Store.open(tmp_path / "b")
    assert {u: a.meta(u)["sha256"] for u in a.ids()} == {u: b.meta(u)["sha256"] for u in b.ids()}
    assert len(b.shard_ids()) > 1


def test_rerun_is_a_no_op_and_other_settings_are_refused(corpus, lrs2_store, tmp_path):
    out = tmp_path / "s"
    shutil.copytree(lrs2_store[0], out)
    again = prepare(corpus, out, workers=1, progress=False)
    assert (again["done_before"], again["stored"]) == (6, 6)
    with pytest.raises(UserError, match="already holds a store"):
        prepare(corpus, out, workers=1, layout="videos", progress=False)


REALVIDEOS = Path(__file__).resolve().parents[2] / "shared" / "realvideos"


@pytest.mark.slow
@pytest.mark.realvideo
def test_prepare_real_videos(tmp_path):
    """A real talking face (VoxCeleb2-style clip, 224x224, AAC) -> store; the media tests cover other rates."""
    if not REALVIDEOS.is_dir():
        pytest.skip(f"{REALVIDEOS} not present")
    src = tmp_path / "real"
    src.mkdir()
    for name in ("pcavs_Audio_Source_00015.mp4",):
        if not (REALVIDEOS / name).is_file():
            pytest.skip(f"{name} not in {REALVIDEOS}")
        shutil.copy(REALVIDEOS / name, src / name)
    summary = prepare(src, tmp_path / "store", workers=1, split="test", progress=False)
    assert summary["stored"] == 1, summary
    s = Store.open(tmp_path / "store")
    for uid, seconds in (("pcavs_Audio_Source_00015", 6.96),):
        m = s.meta(uid)
        assert abs(m["n_frames"] - seconds * 25) <= 1.5  # resampled to 25 fps
        assert abs(m["n_samples"] - seconds * 16000) <= 0.05 * 16000  # resampled to 16 kHz
        assert m["n_valid"] >= 0.8 * m["n_frames"]
        frames = s.frames(uid)[s.valid(uid)]
        assert frames.std() > 10  # real pictures, not zeros
