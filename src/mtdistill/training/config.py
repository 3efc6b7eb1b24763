"""Training recipes: YAML loading with ``base:`` inheritance, ``--set`` overrides and strict validation.

A recipe is a nested mapping. Every key is checked against ``SCHEMA`` so that a typo (``optim.lrr``) stops the run
with one line naming the key and where it came from, instead of being silently ignored for 80 epochs.
The only open-ended sections are ``loss`` (keyword arguments of ``build_loss``, checked by the registry),
``model.config`` (``VocaLiSTConfig`` fields) and ``quirks`` (``Quirks`` fields).
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import yaml

from mtdistill.core.errors import UserError
from mtdistill.core.quirks import Quirks


@dataclass(frozen=True)
class Key:
    """One leaf of the schema: accepted types, default, and allowed values."""

    types: tuple[type, ...]
    default: Any = None
    required: bool = False
    choices: tuple[Any, ...] | None = None
    nullable: bool = True


def _k(*types: type, default: Any = None, required: bool = False, choices: Iterable[Any] | None = None) -> Key:
    return Key(types, default, required, tuple(choices) if choices is not None else None)


_INT = (int,)
_NUM = (int, float)
OPEN = "open"  # marker: a mapping whose keys are checked elsewhere

SCHEMA: dict[str, Any] = {
    "name": _k(str, required=True),
    "kind": _k(str, required=True, choices=("train", "distill")),
    "method": _k(str),
    "description": _k(str),
    # which paper table/figure the run belongs to (report): table1 | table2 | fig3, or a list of them
    "table": _k(str, list),
    "seed": _k(*_INT, default=20230101),
    "quirks": OPEN,
    "model": {
        "size": _k(str, default="student", choices=("teacher", "student", "tiny", "custom")),
        "preset": _k(str, default="mtd", choices=("mtd", "vocalist")),
        "config": OPEN,
        "init_checkpoint": _k(str),
        # partial warm start: copy the tensors whose name and shape match from this checkpoint (e.g. front ends)
        "init_from": _k(str),
    },
    "teacher": {
        "checkpoint": _k(str),
        "preset": _k(str, choices=("mtd", "vocalist")),
        # a randomly initialised teacher of this size when no checkpoint is given (benchmarks, smoke tests)
        "size": _k(str, choices=("teacher", "student", "tiny")),
    },
    "data": {
        "store": _k(str, required=True),
        "train_split": _k(str, default="pretrain"),
        "val_split": _k(str, default="val"),
        "batch_size": _k(*_INT, default=128),
        "val_batch_size": _k(*_INT),
        "num_workers": _k(*_INT, default=0),
        "samples_per_epoch": _k(*_INT),
        "val_samples": _k(*_INT),
        "fixed_val": _k(bool, default=False),
        "min_frames": _k(*_INT, default=25),
    },
    "loss": OPEN,
    "val_extra_losses": _k(list, default=[]),
    "optim": {
        "lr": _k(*_NUM, default=5e-5),
        "schedule": _k(str, default="warmup_step", choices=("warmup_step", "constant")),
        "warmup_epochs": _k(*_INT, default=10),
        "step_size": _k(*_INT, default=20),
        "gamma": _k(*_NUM, default=0.8),
        "max_grad_norm": _k(*_NUM),
        "weight_decay": _k(*_NUM, default=0.0),
    },
    "trainer": {
        "epochs": _k(*_INT, default=80),
        "precision": _k(str, int, default="32", choices=("32", "bf16-mixed", "16-mixed", 32)),
        "accumulate_grad_batches": _k(*_INT, default=1),
        "devices": _k(int, str, list, default=1),
        "num_nodes": _k(*_INT, default=1),
        "strategy": _k(str, default="auto"),
        "accelerator": _k(str, default="auto"),
        "val_every": _k(*_INT, default=1),
        "log_every_n_steps": _k(*_INT, default=10),
        "limit_train_batches": _k(*_NUM),
        "limit_val_batches": _k(*_NUM),
        "progress_bar": _k(bool, default=True),
        "deterministic": _k(bool, default=False),
        # stop once the validation weighted F1 reaches this (small models leave the BCE plateau at a run-to-run
        # varying step: a generous epoch budget plus this stop keeps short runs short); null = run all epochs
        "stop_at_val_f1": _k(*_NUM),
    },
    "output": {
        "dir": _k(str, default="runs"),
        "epoch_checkpoints": _k(bool, default=True),
    },
}


def _same_loss(base: Mapping[str, Any], child: Mapping[str, Any]) -> bool:
    return "name" not in child or child.get("name") == base.get("name")


def deep_merge(base: Mapping[str, Any], child: Mapping[str, Any]) -> dict[str, Any]:
    """``child`` over ``base``: mappings merge key by key, everything else (lists too) is replaced.

    Exception: a ``loss`` section that names a different loss replaces the base's whole section, because
    loss options belong to one loss (``kd.yaml`` on top of ``mtd_uw25.yaml`` must not inherit ``n_weights``).
    """
    out = copy.deepcopy(dict(base))
    for key, value in child.items():
        if key == "loss" and isinstance(value, Mapping) and not _same_loss(out.get(key) or {}, value):
            out[key] = copy.deepcopy(dict(value))
        elif isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def read_yaml(path: Path, _chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Read a recipe and resolve its ``base:`` chain (paths relative to the including file)."""
    path = Path(path)
    if not path.is_file():
        where = f" (base of {_chain[-1]})" if _chain else ""
        raise UserError(
            f"config file {path} not found{where}; pass a path to a YAML recipe, e.g. configs/demo_mtd.yaml"
        )
    resolved = path.resolve()
    if resolved in _chain:
        raise UserError(f"config {path}: 'base:' chain loops back to itself; remove the cycle")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        line = getattr(getattr(exc, "problem_mark", None), "line", None)
        at = f" at line {line + 1}" if line is not None else ""
        raise UserError(f"config {path}: not valid YAML{at}; fix the syntax") from None
    if not isinstance(data, dict):
        raise UserError(f"config {path}: top level must be a mapping of keys, got {type(data).__name__}")
    base = data.pop("base", None)
    if base is None:
        return data
    bases = [base] if isinstance(base, str) else base
    merged: dict[str, Any] = {}
    for b in bases:
        merged = deep_merge(merged, read_yaml(path.parent / b, (*_chain, resolved)))
    return deep_merge(merged, data)


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"optim.lr=1e-4"`` -> (["optim", "lr"], 1e-4); the value is parsed as YAML (numbers, bools, lists)."""
    if "=" not in text:
        raise UserError(f"--set {text!r}: expected KEY.SUB=VALUE, e.g. --set optim.lr=1e-4")
    key, _, raw = text.partition("=")
    parts = [p for p in key.strip().split(".")]
    if not all(parts):
        raise UserError(f"--set {text!r}: empty key component; use dotted names like trainer.epochs=3")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    # YAML reads 5e-5 as a string (no dot); numbers are what people mean
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            value = float(value) if any(c in value for c in ".eE") else int(value)
    return parts, value


def apply_overrides(config: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    out = copy.deepcopy(config)
    for text in overrides:
        parts, value = parse_override(text)
        node = out
        for p in parts[:-1]:
            child = node.get(p)
            if child is None:
                child = node[p] = {}
            if not isinstance(child, dict):
                raise UserError(f"--set {text!r}: {p!r} is not a section; check the key path")
            node = child
        node[parts[-1]] = value
    return out


def _type_ok(value: Any, key: Key) -> bool:
    if value is None:
        return key.nullable and not key.required
    if isinstance(value, bool) and bool not in key.types:
        return False  # YAML 'yes' must not pass as an int
    if float in key.types and isinstance(value, int) and not isinstance(value, bool):
        return True
    return isinstance(value, key.types)


def _validate_section(data: Mapping[str, Any], schema: Mapping[str, Any], where: str, prefix: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    unknown = [k for k in data if k not in schema]
    if unknown:
        full = f"{prefix}{unknown[0]}"
        known = ", ".join(sorted(schema))
        section = f" under {prefix[:-1]}" if prefix else ""
        raise UserError(f"config {where}: unknown key '{full}'; known keys{section}: {known}")
    for name, spec in schema.items():
        full = f"{prefix}{name}"
        value = data.get(name)
        if spec is OPEN:
            if value is not None and not isinstance(value, Mapping):
                raise UserError(f"config {where}: '{full}' must be a mapping, got {value!r}")
            out[name] = dict(value or {})
        elif isinstance(spec, dict):
            if value is not None and not isinstance(value, Mapping):
                raise UserError(f"config {where}: '{full}' must be a section (mapping), got {value!r}")
            out[name] = _validate_section(value or {}, spec, where, f"{full}.")
        else:
            if name not in data or value is None:
                if spec.required:
                    raise UserError(f"config {where}: missing required key '{full}'; add it to the recipe or --set it")
                out[name] = copy.deepcopy(spec.default)
                continue
            if isinstance(value, str) and float in spec.types and str not in spec.types:
                # PyYAML reads 5e-5 (no dot) as a string; a number is what the author meant
                with contextlib.suppress(ValueError):
                    value = float(value)
            if not _type_ok(value, spec):
                want = " or ".join(t.__name__ for t in spec.types)
                raise UserError(f"config {where}: '{full}' must be {want}, got {value!r}")
            if spec.choices is not None and value not in spec.choices:
                choices = ", ".join(str(c) for c in spec.choices)
                raise UserError(f"config {where}: '{full}' is {value!r}; choose one of: {choices}")
            out[name] = value
    return out


def _check_semantics(cfg: dict[str, Any], where: str) -> None:
    """Cross-key rules that the per-key schema cannot express."""
    quirk_names = {f.name for f in fields(Quirks)}
    bad = sorted(set(cfg["quirks"]) - quirk_names)
    if bad:
        raise UserError(
            f"config {where}: unknown key 'quirks.{bad[0]}'; known quirks: {', '.join(sorted(quirk_names))}"
        )
    if "name" not in cfg["loss"]:
        raise UserError(f"config {where}: missing required key 'loss.name' (e.g. bce, mtd, kd, rkd, fitnets)")
    if cfg["kind"] == "distill" and cfg["teacher"]["checkpoint"] is None and cfg["teacher"]["size"] is None:
        raise UserError(f"config {where}: distill needs 'teacher.checkpoint' (or teacher.size for a random teacher)")
    if cfg["model"]["size"] == "custom" and not cfg["model"]["config"]:
        raise UserError(f"config {where}: model.size 'custom' needs 'model.config' (VocaLiSTConfig fields)")
    for key in ("batch_size", "min_frames"):
        if cfg["data"][key] < 1:
            raise UserError(f"config {where}: 'data.{key}' must be >= 1, got {cfg['data'][key]}")
    for key in ("epochs", "accumulate_grad_batches", "val_every", "num_nodes", "log_every_n_steps"):
        if cfg["trainer"][key] < 1:
            raise UserError(f"config {where}: 'trainer.{key}' must be >= 1, got {cfg['trainer'][key]}")
    if cfg["optim"]["lr"] <= 0:
        raise UserError(f"config {where}: 'optim.lr' must be > 0, got {cfg['optim']['lr']}")
    stop = cfg["trainer"].get("stop_at_val_f1")
    if stop is not None and not 0.0 <= stop <= 1.0:
        raise UserError(f"config {where}: 'trainer.stop_at_val_f1' is a weighted F1 in [0, 1], got {stop}")
    for i, entry in enumerate(cfg["val_extra_losses"]):
        if not isinstance(entry, (str, dict)) or (isinstance(entry, dict) and "name" not in entry):
            raise UserError(
                f"config {where}: 'val_extra_losses[{i}]' must be a loss name or a mapping with 'name' (+ kwargs)"
            )
    if str(cfg["trainer"]["precision"]) == "32":
        cfg["trainer"]["precision"] = "32"
    if cfg["method"] is None:
        cfg["method"] = cfg["name"]


def validate(data: Mapping[str, Any], where: str = "<dict>") -> dict[str, Any]:
    """Check every key of a merged recipe, fill defaults, return the resolved config (a plain dict)."""
    cfg = _validate_section(data, SCHEMA, where, "")
    _check_semantics(cfg, where)
    return cfg


def load_config(path: str | Path, overrides: Iterable[str] = ()) -> dict[str, Any]:
    """Read ``path`` (with its ``base:`` chain), apply ``--set`` overrides, validate, fill defaults."""
    raw = read_yaml(Path(path))
    overrides = list(overrides)
    merged = apply_overrides(raw, overrides)
    where = str(path) + (" (with --set)" if overrides else "")
    return validate(merged, where)


def quirks_of(cfg: Mapping[str, Any]) -> Quirks:
    return Quirks().replace(**cfg["quirks"])


def dump_config(cfg: Mapping[str, Any]) -> str:
    return yaml.safe_dump(dict(cfg), sort_keys=False, default_flow_style=False)
