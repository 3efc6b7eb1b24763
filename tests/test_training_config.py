"""Recipes, schedule and validation F1: the parts of training that need no model run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import f1_score

from mtdistill.core.errors import UserError
from mtdistill.metrics.f1 import batch_weighted_f1, epoch_f1
from mtdistill.training.config import load_config, parse_override, validate
from mtdistill.training.schedule import EpochStepLR, lr_at, warmup_step_factor

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
MULT_PREFIXES = ("mult_", "edam", "crd", "kd_mult")  # the MulT engineer's recipes use their own schema
MINIMAL = "name: r\nkind: train\ndata: {store: s}\nloss: {name: bce}\n"


def vocalist_recipes() -> list[Path]:
    return sorted(p for p in CONFIGS.glob("*.yaml") if not p.name.startswith(("_", *MULT_PREFIXES)))


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# ---- schedule (design.md §2.6) ----


def test_warmup_then_step_numbers_from_the_spec() -> None:
    lr = [lr_at(e, step=1) for e in range(80)]
    for e in range(10):
        assert lr[e] == pytest.approx(5e-5 * (e + 1) / 10, rel=1e-12)
    expected = {range(10, 29): 5e-5, range(29, 49): 4e-5, range(49, 69): 3.2e-5, range(69, 80): 2.56e-5}
    for epochs, value in expected.items():
        for e in epochs:
            assert lr[e] == pytest.approx(value, rel=1e-12), e
    assert warmup_step_factor(9) == 1.0 and warmup_step_factor(28) == 1.0 and warmup_step_factor(29) == 0.8


def test_first_iteration_quirk_and_constant_schedule() -> None:
    assert lr_at(0, 0) == 0.0
    assert lr_at(0, 0, first_iteration_lr_zero=False) == pytest.approx(5e-6)
    assert lr_at(0, 1) == pytest.approx(5e-6)
    assert lr_at(37, 5, schedule="constant") == 5e-5


def test_scheduler_applies_the_closed_form_to_both_param_groups() -> None:
    w1, w2 = torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.Adam([{"params": [w1]}, {"params": [w2]}], lr=5e-5)
    sched = EpochStepLR(opt)
    seen = []
    for epoch in range(31):
        sched.set_epoch(epoch)
        for _ in range(2):  # two optimizer steps per epoch
            seen.append((epoch, [g["lr"] for g in opt.param_groups]))
            opt.step()
            sched.step()
    assert seen[0][1] == [0.0, 0.0]  # very first iteration
    assert seen[1][1] == pytest.approx([5e-6, 5e-6])
    by_epoch = {e: lrs for e, lrs in seen[1:]}
    assert by_epoch[4] == pytest.approx([2.5e-5] * 2)
    assert by_epoch[28] == pytest.approx([5e-5] * 2)
    assert by_epoch[29] == pytest.approx([4e-5] * 2)
    # resume: a fresh scheduler loaded from the state dict continues with the same lr
    state = sched.state_dict()
    opt2 = torch.optim.Adam([{"params": [w1]}, {"params": [w2]}], lr=5e-5)
    sched2 = EpochStepLR(opt2)
    sched2.load_state_dict(state)
    sched2.set_epoch(30)
    assert [g["lr"] for g in opt2.param_groups] == pytest.approx([4e-5] * 2)


# ---- validation F1 (design.md §4.5) ----


def test_batch_weighted_f1_thresholds_the_logit_at_half() -> None:
    logits = torch.tensor([0.4, 0.6, 2.0, -1.0, 0.51, 0.49])  # 0.4 is p=0.6 but still "negative"
    labels = torch.tensor([1.0, 1.0, 1.0, 0.0, 0.0, 0.0])
    pred = np.array([0, 1, 1, 0, 1, 0])
    expected = f1_score(labels.numpy().astype(int), pred, average="weighted")
    assert batch_weighted_f1(logits, labels) == pytest.approx(expected)
    assert batch_weighted_f1(logits, labels) != pytest.approx(
        f1_score(labels.numpy().astype(int), (torch.sigmoid(logits) > 0.5).numpy(), average="weighted")
    )
    # epoch F1 is the unweighted mean of batch F1s, not the F1 of the pooled predictions
    assert epoch_f1([1.0, 0.0, 0.5]) == pytest.approx(0.5)


# ---- recipes ----


def test_unknown_key_is_named_with_its_section(tmp_path: Path) -> None:
    path = write(tmp_path, "r.yaml", MINIMAL + "optim: {lrr: 1.0e-4}\n")
    with pytest.raises(UserError, match=r"unknown key 'optim\.lrr'.*known keys under optim: .*lr"):
        load_config(path)
    path = write(tmp_path, "t.yaml", MINIMAL + "trainr: {epochs: 3}\n")
    with pytest.raises(UserError, match=r"unknown key 'trainr'"):
        load_config(path)


def test_missing_required_key_and_bad_values(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"missing required key 'data\.store'"):
        load_config(write(tmp_path, "a.yaml", "name: r\nkind: train\nloss: {name: bce}\n"))
    with pytest.raises(UserError, match=r"missing required key 'loss\.name'"):
        load_config(write(tmp_path, "b.yaml", "name: r\nkind: train\ndata: {store: s}\n"))
    with pytest.raises(UserError, match=r"'kind' is 'fit'; choose one of: train, distill"):
        load_config(write(tmp_path, "c.yaml", MINIMAL.replace("kind: train", "kind: fit")))
    with pytest.raises(UserError, match=r"'trainer\.epochs' must be int"):
        load_config(write(tmp_path, "d.yaml", MINIMAL + "trainer: {epochs: many}\n"))
    with pytest.raises(UserError, match=r"unknown key 'quirks\.warmup'"):
        load_config(write(tmp_path, "e.yaml", MINIMAL + "quirks: {warmup: true}\n"))
    with pytest.raises(UserError, match=r"distill needs 'teacher\.checkpoint'"):
        load_config(write(tmp_path, "f.yaml", MINIMAL.replace("kind: train", "kind: distill")))
    with pytest.raises(UserError, match="not found"):
        load_config(tmp_path / "absent.yaml")
    for err in (UserError,):
        with pytest.raises(err):
            validate({"name": "x"}, "dict")


def test_defaults_are_the_released_mtd_recipe(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, "r.yaml", MINIMAL))
    assert cfg["optim"] == {
        "lr": 5e-5,
        "schedule": "warmup_step",
        "warmup_epochs": 10,
        "step_size": 20,
        "gamma": 0.8,
        "max_grad_norm": None,
        "weight_decay": 0.0,
    }
    assert cfg["trainer"]["epochs"] == 80 and cfg["data"]["batch_size"] == 128 and cfg["seed"] == 20230101
    assert cfg["method"] == "r"


def test_set_overrides_and_base_inheritance(tmp_path: Path) -> None:
    write(tmp_path, "base.yaml", MINIMAL + "loss: {name: mtd, weighting: uw, n_weights: 25}\ntrainer: {epochs: 80}\n")
    child = write(tmp_path, "child.yaml", "base: base.yaml\nname: c\ntrainer: {precision: bf16-mixed}\n")
    cfg = load_config(child, ["optim.lr=1e-4", "trainer.epochs=3", "data.fixed_val=true", "loss.n_weights=13"])
    assert cfg["name"] == "c" and cfg["optim"]["lr"] == 1e-4 and isinstance(cfg["optim"]["lr"], float)
    assert cfg["trainer"] == {**cfg["trainer"], "epochs": 3, "precision": "bf16-mixed"}  # merged, not replaced
    assert cfg["data"]["fixed_val"] is True and cfg["loss"] == {"name": "mtd", "weighting": "uw", "n_weights": 13}
    # a different loss replaces the whole loss section instead of inheriting the base's options
    other = write(tmp_path, "kd.yaml", "base: base.yaml\nloss: {name: kd}\n")
    assert load_config(other)["loss"] == {"name": "kd"}
    with pytest.raises(UserError, match=r"--set.*unknown key 'optim\.lrr'"):
        load_config(child, ["optim.lrr=1"])
    with pytest.raises(UserError, match="KEY.SUB=VALUE"):
        parse_override("optim.lr")
    loop = write(tmp_path, "loop.yaml", "base: loop.yaml\n")
    with pytest.raises(UserError, match="loops"):
        load_config(loop)


@pytest.mark.parametrize("path", vocalist_recipes(), ids=lambda p: p.name)
def test_every_recipe_validates_and_builds_its_loss(path: Path) -> None:
    from mtdistill.distill import build_loss
    from mtdistill.training.config import quirks_of
    from mtdistill.training.run import _loss_kwargs

    cfg = load_config(path)
    assert cfg["name"] == path.stem
    spec = dict(cfg["loss"])
    name = spec.pop("name")

    class Dims:  # the sizes a run would take from the models
        class config:  # noqa: N801
            d_model = 32 if cfg["model"]["size"] == "tiny" else 200

    class TeacherDims:
        class config:  # noqa: N801
            d_model = 64 if cfg["model"]["size"] == "tiny" else 512

    loss = build_loss(name, **_loss_kwargs(name, spec, quirks_of(cfg), Dims, TeacherDims))
    if getattr(loss, "needs_teacher", True):
        assert cfg["kind"] == "distill" and cfg["teacher"]["checkpoint"]


def test_recipes_cover_the_paper() -> None:
    names = {p.stem for p in vocalist_recipes()}
    table1 = {"bce", "kd", "rkd", "minilm", "fitnets", "mtd_uw25"}
    table2 = {"nmtd_f4_cad_vr", "nmtd_f4_cad", "nmtd_f4_vr"}
    fig3 = {f"nmtd_{b}{i}" for b in ("f", "av", "va") for i in range(1, 5)} | {"nmtd_uniform", "aw13", "aw25", "uw13"}
    paper = table1 | table2 | fig3 | {"vocalist_lrs2"}
    assert paper <= names
    assert {f"demo_{n}" for n in (table1 - {"mtd_uw25"}) | table2 | fig3} | {"demo_mtd", "demo_teacher"} <= names
    uw13 = load_config(CONFIGS / "uw13.yaml")
    assert uw13["loss"] == {"name": "mtd", "weighting": "uw", "n_weights": 13}
    teacher = load_config(CONFIGS / "vocalist_lrs2.yaml")
    assert teacher["optim"]["schedule"] == "constant" and teacher["optim"]["lr"] == 5e-5
    assert teacher["model"]["size"] == "teacher" and teacher["kind"] == "train"


def test_teacher_input_is_converted_between_presets() -> None:
    from mtdistill.models.presets import frames_to_input, windows_to_video
    from mtdistill.training.module import convert_preset

    frames = np.random.default_rng(0).integers(0, 256, size=(5, 48, 96, 3), dtype=np.uint8)
    as_mtd = windows_to_video(frames_to_input(frames, "mtd"), [0])
    as_vocalist = windows_to_video(frames_to_input(frames, "vocalist"), [0])
    torch.testing.assert_close(convert_preset(as_mtd, "mtd", "vocalist"), as_vocalist)
    torch.testing.assert_close(convert_preset(as_vocalist, "vocalist", "mtd"), as_mtd)
    assert convert_preset(as_mtd, "mtd", "mtd") is as_mtd


def test_model_init_from_copies_the_matching_tensors_of_a_checkpoint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The demo teacher's warm start: `model.init_from` on a custom size copies what fits and says how much."""
    from mtdistill.core.quirks import Quirks
    from mtdistill.models import VocaLiST
    from mtdistill.training.run import build_model

    torch.manual_seed(1)
    src = VocaLiST.tiny().save_checkpoint(tmp_path / "tiny.safetensors")
    wide = "model: {size: custom, config: {d_model: 64, widths: [4, 8, 8, 16, 64]}}\n"
    path = write(tmp_path, "t.yaml", MINIMAL + wide)
    model = build_model(load_config(path, [f"model.init_from={src}"])["model"], Quirks())
    tiny = VocaLiST.from_checkpoint(src)
    assert model.config.d_model == 64
    assert torch.equal(model.vid_prenet[10].conv_block[0].weight, tiny.vid_prenet[10].conv_block[0].weight)
    assert torch.equal(model.aud_prenet[0].conv_block[0].weight, tiny.aud_prenet[0].conv_block[0].weight)
    assert f"model.init_from: 176 of 377 tensors from {src}" in capsys.readouterr().err
    with pytest.raises(UserError, match="not found"):
        build_model(load_config(path, [f"model.init_from={tmp_path / 'missing.safetensors'}"])["model"], Quirks())
