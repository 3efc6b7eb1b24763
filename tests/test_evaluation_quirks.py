"""`mtdistill evaluate` honours the run's quirks (config.yaml), `--clean` and `--quirk NAME=VALUE`.

A real packed store and a micro model saved in a run folder whose config.yaml turns two quirks off; results.json
must show the flags that were used, and the window count / model behaviour must follow them.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from mtdistill.audio import utterance_mel
from mtdistill.cli import main
from mtdistill.core.quirks import Quirks
from mtdistill.data import store as st
from mtdistill.evaluation import utterance_accuracy
from mtdistill.models.presets import frames_to_input
from mtdistill.models.vocalist import VocaLiST
from test_evaluation_cli import MICRO, error_line, write_store

COMMON = ["--lengths", "5,7", "--no-val-f1"]
TEST_WINDOWS = {"exclude_last": (16 - 5) + (12 - 5), "keep_last": (16 - 4) + (12 - 4)}  # t0 (12), t1 (16 frames)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("evalquirks")
    store = write_store(root / "store")
    run_dir = root / "runs" / "micro"
    run_dir.mkdir(parents=True)
    run_quirks = {"eval_exclude_last_window": False, "eval_ifelif_edges": False}
    config = {"name": "micro", "kind": "train", "method": "BCE", "quirks": run_quirks}
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config))
    torch.manual_seed(0)
    VocaLiST(MICRO, "mtd").save_checkpoint(run_dir / "model_best.safetensors")
    return {"root": root, "store": store, "run": run_dir}


def evaluate(run: dict[str, Path], out: Path, *extra: str, target: Path | None = None) -> dict:
    assert main(["evaluate", str(target or run["run"]), str(run["store"]), "--out", str(out), *COMMON, *extra]) == 0
    return json.loads((out / "results.json").read_text())


def test_the_run_config_quirks_are_used_and_recorded(run: dict[str, Path], tmp_path: Path) -> None:
    res = evaluate(run, tmp_path / "run")
    expected = Quirks(eval_exclude_last_window=False, eval_ifelif_edges=False)
    assert res["quirks"] == expected.as_dict() and res["quirks_source"].startswith("run config")
    assert res["protocol"]["exclude_last_window"] is False and res["protocol"]["official_edges"] is False
    assert res["timing"]["windows"] == TEST_WINDOWS["keep_last"]
    # a checkpoint file inside the run folder reads the same config.yaml
    inside = evaluate(run, tmp_path / "file", target=run["run"] / "model_best.safetensors")
    assert inside["quirks"] == res["quirks"] and inside["accuracy"] == res["accuracy"]


def test_quirk_options_change_single_flags(run: dict[str, Path], tmp_path: Path) -> None:
    res = evaluate(run, tmp_path / "q", "--quirk", "eval_exclude_last_window=true")
    assert res["quirks"]["eval_exclude_last_window"] is True and res["quirks"]["eval_ifelif_edges"] is False
    assert res["timing"]["windows"] == TEST_WINDOWS["exclude_last"]
    assert res["quirks_source"].endswith("+ changes")


def test_clean_turns_every_quirk_off_model_included(run: dict[str, Path], tmp_path: Path) -> None:
    res = evaluate(run, tmp_path / "clean", "--clean")
    assert res["quirks"] == Quirks.clean().as_dict() and res["quirks_source"] == "clean"
    # the model ran with the clean PE rule and VA mask: the library gives the same numbers with that model
    model = VocaLiST.from_checkpoint(run["run"] / "model_best.safetensors")
    clean_model = VocaLiST(model.config, model.preset, quirks=Quirks.clean())
    clean_model.load_state_dict(model.state_dict())
    s = st.Store.open(run["store"])
    per_clean = []
    for uid in ("t0", "t1"):
        audio = s.audio(uid)
        frames, mel = frames_to_input(s.frames(uid), "mtd"), utterance_mel(audio)
        per_clean.append(utterance_accuracy(clean_model.eval(), frames, mel, (5, 7), n_samples=len(audio),
                                            quirks=Quirks.clean()))  # fmt: skip
    for k in (5, 7):
        assert res["accuracy"][str(k)] == pytest.approx(100 * np.mean([p[k] for p in per_clean]), abs=1e-3)
    assert res["timing"]["windows"] == TEST_WINDOWS["keep_last"]
    # and --quirk applies after --clean
    back = evaluate(run, tmp_path / "clean_edges", "--clean", "--quirk", "eval_ifelif_edges=true")
    assert back["quirks"] == Quirks.clean().replace(eval_ifelif_edges=True).as_dict()


def test_official_file_without_a_run_uses_its_own_flags(run: dict[str, Path], tmp_path: Path) -> None:
    loose = tmp_path / "loose" / "model.safetensors"
    loose.parent.mkdir()
    loose.write_bytes((run["run"] / "model_best.safetensors").read_bytes())
    res = evaluate(run, tmp_path / "loose_eval", target=loose)
    assert res["quirks"] == Quirks().as_dict() and res["quirks_source"] == "checkpoint"
    assert res["timing"]["windows"] == TEST_WINDOWS["exclude_last"]


def test_bad_quirk_options_are_one_line_before_any_work(
    run: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "never"
    base = ["evaluate", str(run["run"]), str(run["store"]), "--out", str(out), *COMMON]
    assert "unknown quirk 'bogus'" in error_line(capsys, [*base, "--quirk", "bogus=1"])
    assert "takes true or false" in error_line(capsys, [*base, "--quirk", "va_cad_clamp=maybe"])
    assert "expected NAME=VALUE" in error_line(capsys, [*base, "--quirk", "va_cad_clamp"])
    assert "kl_reduction takes mean or batchmean" in error_line(capsys, [*base, "--quirk", "kl_reduction=sum"])
    assert not out.exists()
    # a run whose config.yaml names an unknown flag: one line naming the file
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.yaml").write_text(yaml.safe_dump({"name": "b", "quirks": {"warmup": True}}))
    (broken / "model_best.safetensors").write_bytes((run["run"] / "model_best.safetensors").read_bytes())
    err = error_line(capsys, ["evaluate", str(broken), str(run["store"]), "--out", str(out), *COMMON])
    assert "config.yaml" in err and "warmup" in err and not out.exists()
