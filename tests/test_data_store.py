"""Packed store: round trip, windows, checksums, DDP rank sharding, pickling for DataLoader workers."""

from __future__ import annotations

import json
import pickle

import h5py
import numpy as np
import pytest

from mtdistill.core.errors import UserError
from mtdistill.data import store as st
from mtdistill.data.store import ShardWriter, Store


def utterance(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    frames = rng.integers(0, 256, (n, 48, 96, 3), dtype=np.uint8)
    valid = rng.random(n) > 0.1
    frames[~valid] = 0
    audio = (rng.uniform(-0.5, 0.5, n * 640)).astype(np.float32)
    return frames, valid, audio


def write_store(root, layout: dict[int, list[tuple[str, str, int]]], seed: int = 0, compression=None) -> dict:
    """layout: shard id -> [(uid, split, n_frames)]; returns uid -> (frames, valid, audio) written."""
    rng = np.random.default_rng(seed)
    (root / "shards").mkdir(parents=True)
    data = {}
    for sid, utts in layout.items():
        w = ShardWriter(root / "shards" / f"{st.shard_name(sid)}.h5", compression=compression)
        for i, (uid, split, n) in enumerate(utts):
            data[uid] = utterance(rng, n)
            w.add(str(i), *data[uid], uid=uid, split=split, source=f"{uid}.mp4")
        sha = w.close()
        side = {
            "id": sid,
            "file": f"{st.shard_name(sid)}.h5",
            "sha256": sha,
            "n_utterances": len(utts),
            "utterances": w.entries,
            "skipped": [],
        }
        st.atomic_write_text(root / "shards" / f"{st.shard_name(sid)}.json", json.dumps(side))
    st.write_index(root, st.build_index(root))
    return data


@pytest.mark.parametrize("compression", [None, "lzf"])
def test_round_trip_windows_and_meta(tmp_path, compression):
    layout = {0: [("a/1", "train", 30), ("a/2", "train", 7)], 1: [("b/1", "test", 12)]}
    data = write_store(tmp_path, layout, compression=compression)
    s = Store.open(tmp_path)
    assert s.ids() == ["a/1", "a/2", "b/1"] and s.ids("test") == ["b/1"] and s.ids("val") == []
    for uid, (frames, valid, audio) in data.items():
        np.testing.assert_array_equal(s.frames(uid), frames)
        np.testing.assert_array_equal(s.valid(uid), valid)
        # int16 storage: exactly what a 16-bit wav would hold
        np.testing.assert_allclose(s.audio(uid), audio, atol=1 / 32768)
        assert s.frames(uid).dtype == np.uint8 and s.audio(uid).dtype == np.float32
        m = s.meta(uid)
        assert (m["n_frames"], m["n_samples"], m["n_valid"]) == (len(frames), len(audio), int(valid.sum()))
    np.testing.assert_array_equal(s.frames("a/1", 13, 18), data["a/1"][0][13:18])
    np.testing.assert_allclose(
        s.audio("a/1", 640 * 13, 640 * 13 + 3200), data["a/1"][2][640 * 13 : 640 * 18], atol=1 / 32768
    )
    with pytest.raises(KeyError, match="zz"):
        s.frames("zz")
    assert s.verify() == []
    # default layout: contiguous datasets read through a memory map; compressed: 5-frame chunks
    frames_source = s._arrays("a/1")[0]
    if compression is None:
        assert isinstance(frames_source, np.ndarray)
    else:
        assert frames_source.chunks == (5, 48, 96, 3) and frames_source.compression == "lzf"


def test_int16_audio_is_bit_exact(tmp_path):
    w = ShardWriter(tmp_path / "x.h5")
    pcm = np.arange(-32768, 32768, 7, dtype=np.int16)
    w.add("0", np.zeros((5, 48, 96, 3), np.uint8), np.ones(5, bool), pcm, uid="u", split="train", source="u")
    w.close()
    with h5py.File(tmp_path / "x.h5") as f:
        np.testing.assert_array_equal(f["u/0/audio"][()], pcm)
    assert st.audio_to_int16(pcm.astype(np.float32) / 32768.0).tolist() == pcm.tolist()


def test_verify_finds_corruption(tmp_path):
    write_store(tmp_path, {0: [("a", "train", 10), ("b", "train", 10)]})
    with h5py.File(tmp_path / "shards" / "shard-00000.h5", "r+") as f:
        f["u/1/frames"][3, 0, 0, 0] ^= 0xFF
    assert Store.open(tmp_path).verify() == ["b"]


def test_rank_sharding_reads_only_own_shards(tmp_path):
    layout = {k: [(f"s{k}/{i}", "pretrain", 8) for i in range(3)] for k in range(5)}
    layout[5] = [("v/0", "val", 8)]
    write_store(tmp_path, layout)
    s = Store.open(tmp_path)
    r0, r1 = s.ids("pretrain", rank=0, world_size=2), s.ids("pretrain", rank=1, world_size=2)
    assert set(r0).isdisjoint(r1) and sorted(r0 + r1) == sorted(s.ids("pretrain"))
    shards0 = {s.meta(u)["shard"] for u in r0}
    shards1 = {s.meta(u)["shard"] for u in r1}
    assert shards0 == {0, 2, 4} and shards1 == {1, 3}
    # a rank can open only its shards, and reads only those files
    mine = Store.open(tmp_path, shard_ids=shards1)
    assert sorted(mine.ids("pretrain")) == sorted(r1)
    for u in r1:
        mine.frames(u, 0, 5)
    assert set(mine._files) == shards1
    # fewer shards than ranks (val has one): utterances are dealt round-robin, nobody is left empty-handed
    assert s.ids("val", rank=0, world_size=2) == ["v/0"] and s.ids("val", rank=1, world_size=2) == []
    with pytest.raises(UserError, match="rank"):
        s.ids("pretrain", rank=2, world_size=2)
    with pytest.raises(UserError, match="split"):
        s.ids("dev")


def test_store_pickles_without_handles(tmp_path):
    data = write_store(tmp_path, {0: [("a", "train", 9)]})
    s = Store.open(tmp_path)
    s.frames("a")
    clone = pickle.loads(pickle.dumps(s))
    assert clone._files == {}
    np.testing.assert_array_equal(clone.frames("a", 2, 7), data["a"][0][2:7])


def test_open_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="mtdistill prepare"):
        Store.open(tmp_path / "nothing")
    (tmp_path / "index.json").write_text('{"format": "other"}')
    with pytest.raises(UserError, match="not a mtdistill-store/1 store"):
        Store.open(tmp_path)
