"""Pair sampler: the official rule of design.md §3.4, the +-15 mode, determinism, presets and shapes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from mtdistill.audio import chunk_mel
from mtdistill.core.errors import UserError
from mtdistill.core.quirks import Quirks
from mtdistill.data import store as st
from mtdistill.data.pairs import PairDataset, draw_pair, rms, window_to_input

N_LONG = 120


def make_store(root, utts: dict[str, dict]) -> None:
    """utts: uid -> {n, split, silent (frame indices), gaps (frame indices)}. Frame i holds the value i."""
    (root / "shards").mkdir(parents=True)
    w = st.ShardWriter(root / "shards" / "shard-00000.h5")
    rng = np.random.default_rng(0)
    for i, (uid, spec) in enumerate(utts.items()):
        n = spec["n"]
        frames = np.zeros((n, 48, 96, 3), np.uint8)
        frames[:] = (np.arange(n) % 250)[:, None, None, None]
        frames[:, :, :, 1] = 7  # channel order check: R = i, G = 7, B = i
        valid = np.ones(n, bool)
        valid[list(spec.get("gaps", []))] = False
        frames[~valid] = 0
        audio = rng.uniform(-0.3, 0.3, n * 640).astype(np.float32)
        for f in spec.get("silent", []):
            audio[f * 640 : (f + 1) * 640] = 0.0
        w.add(str(i), frames, valid, audio, uid=uid, split=spec.get("split", "pretrain"), source=uid)
    sha = w.close()
    side = {"id": 0, "file": "shard-00000.h5", "sha256": sha, "n_utterances": len(utts), "utterances": w.entries}
    st.atomic_write_text(root / "shards" / "shard-00000.json", json.dumps(side))
    st.write_index(root, st.build_index(root))


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Per-item torch ops are tiny; one thread avoids oversubscription on a busy 2-core CI box."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def store_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("pairs_store")
    make_store(
        root,
        {
            "long/a": {"n": N_LONG, "gaps": [40, 41, 77]},
            "long/b": {"n": N_LONG},
            "short/25": {"n": 25},  # exactly 25 frames: never used (the rule is > 25)
            "edge/26": {"n": 26},
            "val/a": {"n": 60, "split": "val"},
            # frames 0..59 silent: a positive window there needs a loud negative
            "quiet/c": {"n": 90, "silent": range(0, 60), "split": "test"},
        },
    )
    return root


def draws(ds: PairDataset, n: int, seed: int = 0) -> list[tuple[str, int, int, float]]:
    rng = np.random.default_rng(seed)
    return [ds.sample(rng) for _ in range(n)]


def test_official_rule_labels_windows_and_negatives(store_dir):
    ds = PairDataset(store_dir, split="pretrain")
    assert ds.uids == ["long/a", "long/b", "edge/26"]  # "short/25" fails the > 25 frames rule
    got = draws(ds, 3000)
    labels = np.array([d[3] for d in got])
    assert 0.46 < labels.mean() < 0.54  # fair coin
    gaps = {40, 41, 77}
    far = 0
    for uid, pos, aud, label in got:
        n = ds.n_usable[ds.uids.index(uid)]
        assert 0 <= pos <= n - 5 and 0 <= aud <= n - 5  # randint(0, n-5) inclusive
        if uid == "long/a":
            assert not gaps & set(range(pos, pos + 5))  # windows never touch a detection gap
        if label == 1.0:
            assert aud == pos
        else:
            assert aud != pos
            far += abs(aud - pos) > 15
    assert far > 300  # negatives anywhere in the utterance (official), not only within +-15 frames
    starts = {pos for uid, pos, _a, _l in got if uid == "long/b"}
    assert 0 in starts and N_LONG - 5 in starts  # both ends of the inclusive range occur


def test_near_negatives_mode(store_dir):
    ds = PairDataset(store_dir, split="pretrain", quirks=Quirks(negatives_anywhere=False))
    negs = [(pos, aud) for _u, pos, aud, label in draws(ds, 1500) if label == 0.0]
    diffs = np.array([a - p for p, a in negs])
    assert np.all((np.abs(diffs) <= 15) & (diffs != 0))
    assert diffs.min() == -15 and diffs.max() == 15


def test_silence_rule(store_dir):
    ds = PairDataset(store_dir, split="test")
    silent_pos = 0
    for uid, pos, aud, label in draws(ds, 1500):
        chunk = lambda s, uid=uid: ds.store.audio(uid, s * 640, s * 640 + 3200)  # noqa: E731
        if label == 0.0 and rms(chunk(pos)) <= 0.01:
            silent_pos += 1
            assert rms(chunk(aud)) > 0.01
    assert silent_pos > 100
    # 11 silent negatives in a row for a silent positive: the attempt restarts (returns None)
    calls = []

    def always_silent(start: int) -> float:
        calls.append(start)
        return 0.0

    rng = np.random.default_rng(1)
    outcomes = [draw_pair(rng, 50, np.ones(50, bool), always_silent, Quirks()) for _ in range(200)]
    negatives = [o for o in outcomes if o is not None and o[2] == 0.0]
    assert negatives == []  # never a silent/silent negative
    assert any(o is None for o in outcomes) and any(o is not None and o[2] == 1.0 for o in outcomes)
    assert len(calls) == 12 * sum(o is None for o in outcomes)  # 1 positive check + 11 negative tries each


def test_items_shapes_ranges_and_presets(store_dir):
    mtd = PairDataset(store_dir, split="pretrain", preset="mtd", fixed=True, length=8, seed=3)
    voc = PairDataset(store_dir, split="pretrain", preset="vocalist", fixed=True, length=8, seed=3)
    for i in range(8):
        a, b = mtd[i], voc[i]
        assert (a["uid"], a["start"], a["audio_start"]) == (b["uid"], b["start"], b["audio_start"])
        assert a["video"].shape == (15, 48, 96) and a["mel"].shape == (1, 80, 16)
        assert a["label"].shape == () and a["label"].dtype == torch.float32
        s = a["start"]
        # frame-major channels: frame j occupies channels 3j..3j+2; frame value = its index in the utterance
        for j in range(5):
            assert torch.all(a["video"][3 * j] == float((s + j) % 250))  # mtd: RGB, 0..255
            assert torch.all(a["video"][3 * j + 1] == 7.0)
            assert torch.allclose(b["video"][3 * j + 1], torch.tensor(7 / 255))  # vocalist: BGR / 255
            assert torch.allclose(b["video"][3 * j + 2], torch.tensor(((s + j) % 250) / 255))
        assert float(b["video"].max()) <= 1.0
        chunk = mtd.store.audio(a["uid"], a["audio_start"] * 640, a["audio_start"] * 640 + 3200)
        np.testing.assert_allclose(a["mel"][0].numpy(), chunk_mel(chunk), atol=1e-5)
        assert float(a["mel"].min()) >= -4.0 and float(a["mel"].max()) <= 4.0


@pytest.mark.parametrize("preset", ["vocalist", "mtd"])
def test_window_conversion_equals_the_presets(preset):
    from mtdistill.models.presets import frames_to_input

    frames = np.random.default_rng(0).integers(0, 256, (5, 48, 96, 3), dtype=np.uint8)
    expected = frames_to_input(frames, preset).reshape(15, 48, 96)
    assert torch.equal(window_to_input(frames, preset), expected)


def test_wave_items_give_the_same_mel_batchwise(store_dir):
    from torch.utils.data import default_collate

    from mtdistill.audio import chunk_mel_torch

    with_mel = PairDataset(store_dir, split="pretrain", fixed=True, length=6, seed=2)
    with_wave = PairDataset(store_dir, split="pretrain", fixed=True, length=6, seed=2, return_wave=True)
    a = default_collate([with_mel[i] for i in range(6)])
    b = default_collate([with_wave[i] for i in range(6)])
    assert "mel" not in b and b["wave"].shape == (6, 3200)
    assert torch.equal(a["video"], b["video"]) and torch.equal(a["label"], b["label"])
    torch.testing.assert_close(chunk_mel_torch(b["wave"]), a["mel"], atol=1e-5, rtol=0)


def test_fixed_set_is_a_function_of_seed_and_index(store_dir):
    a = PairDataset(store_dir, split="pretrain", fixed=True, length=20, seed=9)
    b = PairDataset(store_dir, split="pretrain", fixed=True, length=20, seed=9)
    b.set_epoch(5)
    key = lambda it: (it["uid"], it["start"], it["audio_start"], float(it["label"]))  # noqa: E731
    forward = [key(a[i]) for i in range(20)]
    assert [key(b[i]) for i in reversed(range(20))] == forward[::-1]
    c = PairDataset(store_dir, split="pretrain", fixed=True, length=20, seed=10)
    assert [key(c[i]) for i in range(20)] != forward
    with pytest.raises(IndexError):
        a[20]


def test_random_mode_is_deterministic_per_seed_worker_and_epoch(store_dir):
    def run(seed: int, epoch: int, workers: int) -> list[tuple]:
        ds = PairDataset(store_dir, split="pretrain", seed=seed, length=16)
        ds.set_epoch(epoch)
        loader = DataLoader(ds, batch_size=4, num_workers=workers)
        return [
            (u, int(s), int(a))
            for batch in loader
            for u, s, a in zip(batch["uid"], batch["start"], batch["audio_start"], strict=True)
        ]

    first = run(0, 0, 2)
    assert run(0, 0, 2) == first
    assert run(0, 1, 2) != first  # set_epoch gives a new stream
    assert run(1, 0, 2) != first
    # worker 0 and worker 1 draw different streams (batches alternate between workers)
    assert first[0:4] != first[4:8]
    single = run(0, 0, 0)
    assert single[0:4] == first[0:4]  # the main process is worker 0


def test_length_default_and_errors(store_dir):
    assert len(PairDataset(store_dir, split="pretrain")) == 4  # utterances in the split
    assert len(PairDataset(store_dir, split="pretrain", length=1000)) == 1000
    with pytest.raises(UserError, match="more than 60 frames"):
        PairDataset(store_dir, split="val", min_frames=60)
    with pytest.raises(UserError, match="prepare"):
        PairDataset(store_dir / "missing")
    with pytest.raises(UserError, match="preset"):
        PairDataset(store_dir, preset="bgr")
