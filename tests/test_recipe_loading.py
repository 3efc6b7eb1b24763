"""Recipe loading for `train`, `distill` and `mult train`: loss families, typed sections, hostile files and names.

Everything goes through the real loaders (training/config.py ``load_config``, training/mult.py
``load_mult_config``) or the real CLI (``mtdistill.cli.main``), on recipe files written to disk.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from mtdistill.cli import main
from mtdistill.core.errors import UserError
from mtdistill.distill import build_loss
from mtdistill.distill.registry import MULT, VOCALIST, losses_of
from mtdistill.training.config import RunConfig, load_config, parse_config
from mtdistill.training.mult import MultRunConfig, load_mult_config, parse_mult_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
MINIMAL = "name: r\nkind: train\ndata: {store: s}\nloss: {name: bce}\n"
MULT_MINIMAL = "name: m\nkind: student\ndata: {pickle: p.pkl}\nteacher: {run: t}\nloss: {name: edam_s}\n"


def write(tmp_path: Path, name: str, content: str | bytes) -> Path:
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    return path


def one_error_line(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    assert main(argv) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    return err


# ------------------------------------------------------------------------------------------------ families


def test_every_loss_declares_its_family() -> None:
    vocalist, mult = set(losses_of(VOCALIST)), set(losses_of(MULT))
    assert {"bce", "kd", "rkd", "minilm", "fitnets", "nmtd", "aw", "mtd"} <= vocalist
    assert {"mult_ce", "mult_kd", "crd", "edam", "edam_s", "edam_t"} <= mult
    assert not vocalist & mult


def test_a_mult_loss_in_a_vocalist_recipe_is_refused() -> None:
    with pytest.raises(UserError) as err:
        load_config(CONFIGS / "kd.yaml", ["loss.name=crd"])
    message = str(err.value)
    assert "'crd' is a MulT loss" in message and "VocaLiST recipe" in message and "\n" not in message
    assert "VocaLiST losses: aw, bce, fitnets, kd, minilm, mtd, nmtd, rkd" in message
    with pytest.raises(UserError, match=r"val_extra_losses\[0\]'.*'edam' is a MulT loss"):
        load_config(CONFIGS / "kd.yaml", ["val_extra_losses=[edam]"])
    with pytest.raises(UserError, match=r"unknown loss 'mdt'; known losses: aw, bce"):
        load_config(CONFIGS / "kd.yaml", ["loss.name=mdt"])


def test_a_vocalist_loss_in_a_mult_recipe_is_refused() -> None:
    with pytest.raises(UserError) as err:
        load_mult_config(CONFIGS / "mult_demo_student.yaml", ["loss.name=mtd"])
    message = str(err.value)
    assert "'mtd' is a VocaLiST loss" in message and "MulT recipe" in message
    assert "MulT losses: crd, edam, edam_s, edam_t, mult_ce, mult_kd" in message
    # build_loss itself refuses across families when told the recipe's family, and accepts the right one
    with pytest.raises(UserError, match="'kd' is a VocaLiST loss"):
        build_loss("kd", MULT)
    assert build_loss("kd", VOCALIST).registry_name == "kd"


def test_cli_refuses_a_loss_of_the_other_family(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    vocalist = write(tmp_path, "v.yaml", MINIMAL.replace("bce", "edam_s"))
    assert "MulT loss" in one_error_line(capsys, ["train", str(vocalist)])
    mult = write(tmp_path, "m.yaml", MULT_MINIMAL.replace("edam_s", "rkd"))
    assert "VocaLiST loss" in one_error_line(capsys, ["mult", "train", str(mult)])


# ------------------------------------------------------------------------------------------------ typed sections


def test_typed_configs_and_their_one_line_errors(tmp_path: Path) -> None:
    minimal = {"name": "r", "kind": "train", "data": {"store": "s"}, "loss": {"name": "bce"}}
    cfg = parse_config(minimal)
    assert isinstance(cfg, RunConfig) and cfg.optim.lr == 5e-5 and cfg.trainer.precision == "32"
    assert cfg.quirks.eval_ifelif_edges is True and cfg.method == "r"
    with_quirk = parse_config({**minimal, "quirks": {"kl_log_of_softmax": False}})
    assert with_quirk.quirks.kl_log_of_softmax is False
    for text, message in (
        ("quirks: {kl_log_of_softmax: maybe}\n", r"'quirks\.kl_log_of_softmax' must be bool, got 'maybe'"),
        ("quirks: {kl_reduction: sum}\n", r"'quirks\.kl_reduction' is 'sum'; choose one of: mean, batchmean"),
        ("optim: {lr: fast}\n", r"'optim\.lr' must be int or float, got 'fast'"),
        ("data: {store: s, batch_size: yes}\n", r"'data\.batch_size' must be int, got True"),
        ("trainer: {precision: 64}\n", r"'trainer\.precision' is 64; choose one of: 32, bf16-mixed, 16-mixed, 32"),
        ("optim: 3\n", r"'optim' must be a section \(mapping\), got 3"),
        ("loss: bce\n", r"'loss' must be a mapping, got 'bce'"),
        ("base: 3\n", r"'base' must be a recipe path or a list of them, got 3"),
    ):
        with pytest.raises(UserError, match=message):
            load_config(write(tmp_path, "r.yaml", MINIMAL + text))
    mult = parse_mult_config({"name": "m", "kind": "teacher", "data": {"pickle": "p.pkl"}})
    assert isinstance(mult, MultRunConfig) and mult.loss == {"name": "mult_ce"} and mult.optim.max_grad_norm == 0.8
    with pytest.raises(UserError, match=r"'configuration' is 7; choose one of: 1, 2, 3, 4, 5"):
        load_mult_config(write(tmp_path, "m.yaml", MULT_MINIMAL + "configuration: 7\n"))
    with pytest.raises(UserError, match=r"missing required key 'data\.pickle'"):
        load_mult_config(write(tmp_path, "m.yaml", "name: m\nkind: teacher\n"))
    with pytest.raises(
        UserError, match=r"unknown key 'teacher\.ckpt'; known keys under teacher: checkpoint, heads, run"
    ):
        load_mult_config(write(tmp_path, "m.yaml", MULT_MINIMAL + "teacher: {ckpt: x}\n"))


# ------------------------------------------------------------------------------------------------ hostile files


NOT_TEXT = {
    "binary.yaml": bytes(range(256)) * 4,  # NUL and every other byte
    "latin1.yaml": "name: r\u00e9sum\u00e9\n".encode("latin-1"),  # not UTF-8
    "png.yaml": b"\x89PNG\r\n\x1a\n" + b"\x00" * 32,
}


@pytest.mark.parametrize("command", [["train"], ["distill"], ["mult", "train"]], ids=" ".join)
def test_a_config_that_is_not_text_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: list[str]
) -> None:
    for name, content in NOT_TEXT.items():
        path = write(tmp_path, name, content)
        err = one_error_line(capsys, [*command, str(path)])
        assert str(path) in err and ("binary" in err or "not UTF-8" in err), err
        assert path.read_bytes() == content  # untouched
    assert "is a folder" in one_error_line(capsys, [*command, str(tmp_path)])
    bad_yaml = write(tmp_path, "bad.yaml", "name: [unclosed\n")
    assert "not valid YAML at line" in one_error_line(capsys, [*command, str(bad_yaml)])


@pytest.mark.parametrize("name", ["../x", "/abs", "a/../../b", "..", ".", "a\\b", "tab\there", ""])
def test_a_run_name_that_leaves_the_output_folder_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str
) -> None:
    out = tmp_path / "out" / "runs"
    vocalist = write(tmp_path, "v.yaml", MINIMAL + f"output: {{dir: {out}}}\n")
    mult = write(tmp_path, "m.yaml", MULT_MINIMAL + f"output: {{dir: {out}}}\n")
    for argv in (["train", str(vocalist)], ["distill", str(vocalist)], ["mult", "train", str(mult)]):
        err = one_error_line(capsys, [*argv, "--set", f"name={name}" if name else "name=''"])
        assert "'name'" in err and "output.dir" in err, err
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["m.yaml", "v.yaml"]  # nothing created anywhere


def test_plain_run_names_still_load(tmp_path: Path) -> None:
    for name in ("mtd_uw25", "run-1.5", "r\u00e9sum\u00e9"):
        assert load_config(write(tmp_path, "r.yaml", MINIMAL), [f"name={name}"])["name"] == name
