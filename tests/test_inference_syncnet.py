"""SyncNet (syncnet_v2 layout) with random weights: shapes, key names, a round trip, MFCC, LSE formulas."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mtdistill.core.errors import UserError
from mtdistill.models.syncnet import (
    SyncNet,
    candidate_distances,
    face_crop_box,
    lse_metrics,
    mfcc,
    mfcc_filterbank,
    mfcc_windows,
)


@pytest.fixture(scope="module")
def net() -> SyncNet:
    torch.manual_seed(0)
    return SyncNet().eval()


def test_embedding_shapes(net: SyncNet) -> None:
    with torch.no_grad():
        assert net.forward_aud(torch.randn(3, 1, 13, 20)).shape == (3, 1024)
        assert net.forward_lip(torch.randn(2, 3, 5, 224, 224)).shape == (2, 1024)
        assert net(torch.randn(2, 3, 5, 224, 224), torch.randn(2, 1, 13, 20)).shape == (2,)


def test_state_dict_keys_follow_syncnet_v2(net: SyncNet) -> None:
    keys = set(net.state_dict())
    # conv / BN positions inside the Sequentials (conv, bn, relu[, pool]) of the public file
    for k in (
        "netcnnaud.0.weight",
        "netcnnaud.1.running_var",
        "netcnnaud.4.weight",
        "netcnnaud.8.weight",
        "netcnnaud.11.weight",
        "netcnnaud.14.weight",
        "netcnnaud.18.weight",
        "netcnnaud.19.running_mean",
        "netfcaud.0.weight",
        "netfcaud.1.running_mean",
        "netfcaud.3.weight",
        "netcnnlip.0.weight",
        "netcnnlip.4.weight",
        "netcnnlip.8.weight",
        "netcnnlip.11.weight",
        "netcnnlip.14.weight",
        "netcnnlip.18.weight",
        "netcnnlip.19.weight",
        "netfclip.3.bias",
    ):
        assert k in keys, k
    assert tuple(net.state_dict()["netcnnlip.0.weight"].shape) == (96, 3, 5, 7, 7)
    assert tuple(net.state_dict()["netcnnaud.18.weight"].shape) == (512, 256, 5, 4)
    assert tuple(net.state_dict()["netfclip.3.weight"].shape) == (1024, 512)
    assert not any(k.split(".")[0] not in {"netcnnaud", "netfcaud", "netcnnlip", "netfclip"} for k in keys)


def test_round_trip_without_bn_counters(net: SyncNet, tmp_path) -> None:
    # old PyTorch files carry no num_batches_tracked: they must still load, and give identical embeddings
    state = {k: v for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}
    path = tmp_path / "syncnet_v2.model"
    torch.save(state, path)
    loaded = SyncNet.from_checkpoint(path)
    x = torch.randn(2, 1, 13, 20)
    with torch.no_grad():
        assert torch.equal(loaded.forward_aud(x), net.forward_aud(x))


def test_wrong_checkpoint_is_one_line_error(tmp_path) -> None:
    path = tmp_path / "other.pth"
    torch.save({"fc.weight": torch.zeros(2, 2)}, path)
    with pytest.raises(UserError, match="not a SyncNet"):
        SyncNet.from_checkpoint(path)
    with pytest.raises(UserError, match="not found"):
        SyncNet.from_checkpoint(tmp_path / "missing.model")


def test_mfcc_rate_and_filterbank() -> None:
    wave = np.random.default_rng(0).standard_normal(16000).astype(np.float32) * 0.1
    feat = mfcc(wave)
    # 25 ms frames every 10 ms: 1 + ceil((16000 - 400) / 160) = 99 frames, 13 coefficients
    assert feat.shape == (13, 99)
    assert np.isfinite(feat).all()
    fb = mfcc_filterbank()
    assert fb.shape == (26, 257)
    assert np.allclose(fb.max(1), 1.0)  # every triangle peaks at 1 on its centre bin
    # coefficient 0 is the log frame energy (int16 scale): 20 dB louder -> + ln(100)
    louder = mfcc(wave * 10)
    assert np.allclose(louder[0] - feat[0], np.log(100.0), atol=1e-3)
    windows = mfcc_windows(feat, np.array([0, 5]))
    assert windows.shape == (2, 1, 13, 20)
    assert torch.equal(windows[1, 0], torch.from_numpy(feat[:, 20:40]))


def test_lse_metrics_on_designed_distances() -> None:
    # mean curve |j - 12| + 5: minimum 5 at j = 12 -> offset 15 - 12 = +3; median of the 31 values is 13
    curve = np.abs(np.arange(31) - 12) + 5.0
    d = np.tile(curve, (4, 1)) + np.array([[-1.0], [1.0], [0.5], [-0.5]])  # rows differ, mean unchanged
    res = lse_metrics(d)
    assert res.offset_frames == 3
    assert res.lse_d == pytest.approx(5.0)
    assert res.lse_c == pytest.approx(np.median(curve) - 5.0) and res.lse_c == pytest.approx(8.0)
    with pytest.raises(UserError):
        lse_metrics(np.zeros((0, 31)))


def test_candidate_distances_sign_and_zero_padding() -> None:
    # audio window a carries what video window a + 2 shows: the sound comes first, audio leads -> offset +2
    rng = np.random.default_rng(1)
    base = torch.from_numpy(rng.standard_normal((40, 8))).float()
    video = base[0:30]
    audio = base[2:32]
    d = candidate_distances(video, audio, vshift=15)
    assert d.shape == (30, 31)
    assert lse_metrics(d).offset_frames == 2
    # row 0, column 0 is audio window -15: zero padding -> distance to the zero vector
    assert d[0, 0].item() == pytest.approx(torch.linalg.norm(video[0] + 1e-6).item(), rel=1e-5)


def test_candidate_distances_with_a_stride_as_sync_uses_them() -> None:
    # `sync --model syncnet --stride 4` embeds video windows 0, 4, 8, ... only (inference/syncnet_sync.py):
    # row i holds window starts[i], compared with audio windows starts[i] - vshift .. starts[i] + vshift
    rng = np.random.default_rng(2)
    audio = rng.standard_normal((23, 6))
    starts = np.arange(0, 23, 4)
    video = audio[starts] + 0.01 * rng.standard_normal((len(starts), 6))  # each video window near its own audio
    vshift = 5
    d = candidate_distances(torch.from_numpy(video), torch.from_numpy(audio), vshift, starts).numpy()
    expected = np.empty((len(starts), 2 * vshift + 1))
    for i, s in enumerate(starts):  # written out: ||v_i - a_k + 1e-6||, a_k = 0 outside the clip
        for j in range(2 * vshift + 1):
            k = s - vshift + j
            a = audio[k] if 0 <= k < len(audio) else np.zeros(6)
            expected[i, j] = np.linalg.norm(video[i] - a + 1e-6)
    np.testing.assert_allclose(d, expected, rtol=1e-10)
    assert (d.argmin(1) == vshift).all()  # the matching audio is found at offset 0 in every row
    assert lse_metrics(d, vshift).offset_frames == 0


def test_face_crop_box_matches_syncnet_python_geometry() -> None:
    x0, y0, x1, y1 = face_crop_box(100.0, 80.0, 40.0)  # bs = 20, crop_scale 0.4
    assert (x1 - x0, y1 - y0) == (56, 56)  # square of side 2 bs (1 + cs)
    assert (x0, y0) == (72, 60) and y1 == 116  # bs above the centre, bs (1 + 2 cs) below


def test_sync_cli_with_syncnet_reports_lse(net: SyncNet, tmp_path, capsys) -> None:
    import json

    from mtdistill.cli import main
    from mtdistill.data.synthetic import make_talking_video

    clip = tmp_path / "talk.mp4"
    make_talking_video(clip, seed=4, duration_s=1.2, offset_frames=0)
    weights = tmp_path / "syncnet_v2.model"
    torch.save(net.state_dict(), weights)
    argv = ["sync", str(clip), "--model", "syncnet", "--checkpoint", str(weights), "--stride", "5", "--json"]
    assert main(argv) == 0
    track = json.loads(capsys.readouterr().out)["tracks"][0]
    assert track["lse_d"] == pytest.approx(min(track["curve"]))
    assert track["lse_c"] == pytest.approx(float(np.median(track["curve"])) - track["lse_d"])
    assert track["confidence"] == track["lse_c"] and track["lse_c"] >= 0
    assert track["offset_frames"] == 15 - int(np.argmin(track["curve"]))
    assert track["window_starts"] == list(range(track["start_frame"], track["start_frame"] + 25, 5))
