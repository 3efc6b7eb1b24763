"""Training recipes: YAML loading with ``base:`` inheritance, ``--set`` overrides and typed validation.

A recipe is a nested mapping read into the ``RunConfig`` dataclass (one dataclass per section), so that a typo
(``optim.lrr``), a missing key or a value of the wrong type stops the run with one line naming the key and where it
came from, instead of being silently ignored for 80 epochs. The ``quirks`` section is the ``Quirks`` dataclass
itself. The only open-ended sections are ``loss`` (keyword arguments of ``build_loss``, checked by the registry,
which also refuses a loss of the MulT family) and ``model.config`` (``VocaLiSTConfig`` fields).
``parse_section`` is shared with the MulT recipes (training/mult.py).
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import MISSING, asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from types import UnionType
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml

from mtdistill.core.errors import UserError
from mtdistill.core.quirks import Quirks
from mtdistill.distill.registry import VOCALIST, check_loss

S = TypeVar("S")


# ------------------------------------------------------------------------------------ typed recipe sections
# Every section is a dataclass; ``parse_section`` walks its fields. A field without a default is required,
# ``Literal[...]`` lists the allowed values, ``float`` also accepts an int, ``dict[str, Any]`` is an open mapping
# whose keys are checked elsewhere (``loss`` by the loss registry, ``model.config`` by VocaLiSTConfig).
# A key given as null takes the field's default.


@dataclass(kw_only=True)
class ModelSection:
    size: Literal["teacher", "student", "tiny", "custom"] = "student"
    preset: Literal["mtd", "vocalist"] = "mtd"
    config: dict[str, Any] = field(default_factory=dict)
    """VocaLiSTConfig fields (model.size 'custom')."""
    init_checkpoint: str | None = None
    init_from: str | None = None
    """Partial warm start: copy the tensors whose name and shape match from this checkpoint (e.g. front ends)."""


@dataclass(kw_only=True)
class TeacherSection:
    checkpoint: str | None = None
    preset: Literal["mtd", "vocalist"] | None = None
    size: Literal["teacher", "student", "tiny"] | None = None
    """A randomly initialised teacher of this size when no checkpoint is given (benchmarks, smoke tests)."""


@dataclass(kw_only=True)
class DataSection:
    store: str
    train_split: str = "pretrain"
    val_split: str = "val"
    batch_size: int = 128
    val_batch_size: int | None = None
    num_workers: int = 0
    samples_per_epoch: int | None = None
    val_samples: int | None = None
    fixed_val: bool = False
    min_frames: int = 25


@dataclass(kw_only=True)
class OptimSection:
    lr: float = 5e-5
    schedule: Literal["warmup_step", "constant"] = "warmup_step"
    warmup_epochs: int = 10
    step_size: int = 20
    gamma: float = 0.8
    max_grad_norm: float | None = None
    weight_decay: float = 0.0


@dataclass(kw_only=True)
class LightningSection:
    """The Lightning Trainer options both systems' recipes share (``trainer:``)."""

    precision: Literal["32", "bf16-mixed", "16-mixed", 32] = "32"
    devices: int | str | list = 1
    accelerator: str = "auto"
    log_every_n_steps: int = 10
    limit_train_batches: float | None = None
    limit_val_batches: float | None = None
    progress_bar: bool = True
    deterministic: bool = False


@dataclass(kw_only=True)
class TrainerSection(LightningSection):
    epochs: int = 80
    accumulate_grad_batches: int = 1
    num_nodes: int = 1
    strategy: str = "auto"
    val_every: int = 1
    stop_at_val_f1: float | None = None
    """Stop once the validation weighted F1 reaches this (small models leave the BCE plateau at a run-to-run
    varying step: a generous epoch budget plus this stop keeps short runs short); null = run all epochs."""


@dataclass(kw_only=True)
class OutputSection:
    dir: str = "runs"
    epoch_checkpoints: bool = True


@dataclass(kw_only=True)
class RunConfig:
    """A resolved VocaLiST-family recipe (``mtdistill train`` / ``distill``)."""

    name: str
    """The run folder's name under output.dir: a plain folder name (see ``check_run_name``)."""
    kind: Literal["train", "distill"]
    method: str | None = None
    description: str | None = None
    table: str | list | None = None
    """Which paper table/figure the run belongs to (report): table1 | table2 | fig3, or a list of them."""
    seed: int = 20230101
    quirks: Quirks = field(default_factory=Quirks)
    model: ModelSection = field(default_factory=ModelSection)
    teacher: TeacherSection = field(default_factory=TeacherSection)
    data: DataSection
    loss: dict[str, Any] = field(default_factory=dict)
    """``name`` plus the keyword arguments of the registered loss (checked by ``build_loss``)."""
    val_extra_losses: list = field(default_factory=list)
    optim: OptimSection = field(default_factory=OptimSection)
    trainer: TrainerSection = field(default_factory=TrainerSection)
    output: OutputSection = field(default_factory=OutputSection)


_TYPE_NAMES = {int: "int", float: "int or float", str: "str", bool: "bool", list: "list", dict: "mapping"}


def _flatten(hint: Any) -> tuple[list[type], tuple[Any, ...] | None]:
    """A field's annotation -> (accepted types, allowed values or None). None is handled before."""
    origin = get_origin(hint)
    if origin in (Union, UnionType):
        types_: list[type] = []
        choices: list[Any] | None = None
        for arg in get_args(hint):
            if arg is type(None):
                continue
            sub_types, sub_choices = _flatten(arg)
            types_ += [t for t in sub_types if t not in types_]
            if sub_choices is not None:
                choices = [*(choices or []), *sub_choices]
        return types_, tuple(choices) if choices is not None else None
    if origin is Literal:
        values = get_args(hint)
        return list(dict.fromkeys(type(v) for v in values)), values
    if origin is not None:  # list[...], dict[...]
        return [origin], None
    return [hint], None


def _type_ok(value: Any, types_: Sequence[type]) -> bool:
    if isinstance(value, bool):
        return bool in types_  # YAML 'yes' must not pass as an int
    if float in types_ and isinstance(value, int):
        return True
    return isinstance(value, tuple(types_))


def _parse_value(value: Any, hint: Any, where: str, full: str) -> Any:
    types_, choices = _flatten(hint)
    if isinstance(value, str) and float in types_ and str not in types_:
        # PyYAML reads 5e-5 (no dot) as a string; a number is what the author meant
        with contextlib.suppress(ValueError):
            value = float(value)
    if not _type_ok(value, types_):
        want = " or ".join(_TYPE_NAMES.get(t, t.__name__) for t in types_)
        raise UserError(f"config {where}: '{full}' must be {want}, got {value!r}")
    if choices is not None and value not in choices:
        raise UserError(f"config {where}: '{full}' is {value!r}; choose one of: {', '.join(str(c) for c in choices)}")
    return copy.deepcopy(value)


def _is_open_mapping(hint: Any) -> bool:
    return hint is dict or get_origin(hint) is dict


def parse_section(cls: type[S], data: Mapping[str, Any], where: str, prefix: str = "") -> S:
    """Build the dataclass ``cls`` from a recipe mapping; one-line ``UserError`` for unknown, missing and
    mistyped keys, naming the key with its section path (``optim.lr``) and where the recipe came from."""
    hints = get_type_hints(cls)
    known = [f.name for f in fields(cls)]
    unknown = [k for k in data if k not in known]
    if unknown:
        section = f" under {prefix[:-1]}" if prefix else ""
        raise UserError(
            f"config {where}: unknown key '{prefix}{unknown[0]}'; known keys{section}: {', '.join(sorted(known))}"
        )
    values: dict[str, Any] = {}
    for f in fields(cls):
        full, hint, value = f"{prefix}{f.name}", hints[f.name], data.get(f.name)
        if is_dataclass(hint):
            if value is not None and not isinstance(value, Mapping):
                raise UserError(f"config {where}: '{full}' must be a section (mapping), got {value!r}")
            values[f.name] = parse_section(hint, value or {}, where, f"{full}.")
        elif _is_open_mapping(hint):
            if value is not None and not isinstance(value, Mapping):
                raise UserError(f"config {where}: '{full}' must be a mapping, got {value!r}")
            values[f.name] = copy.deepcopy(dict(value or {}))
        elif value is None:
            if f.default is MISSING and f.default_factory is MISSING:
                raise UserError(f"config {where}: missing required key '{full}'; add it to the recipe or --set it")
        else:
            values[f.name] = _parse_value(value, hint, where, full)
    return cls(**values)


def check_run_name(name: str, where: str) -> None:
    """A run name is one folder under output.dir: refuse '', '.', '..', separators, absolute and control chars."""
    bad = (
        name in ("", ".", "..")
        or any(sep in name for sep in ("/", "\\"))
        or any(ord(c) < 32 or ord(c) == 127 for c in name)
        or Path(name).is_absolute()
    )
    if bad:
        raise UserError(
            f"config {where}: 'name' is {name!r}, which would not be one folder inside output.dir; "
            "use a plain folder name without '/', '\\' or '..' (e.g. name: mtd_uw25)"
        )


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


def read_recipe_text(path: Path) -> str:
    """The recipe file's text; one-line ``UserError`` when it cannot be read or is not UTF-8 text."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise UserError(
            f"config {path}: cannot be read ({exc.strerror or exc}); check the path and permissions"
        ) from None
    if b"\x00" in raw:
        raise UserError(f"config {path}: is a binary file, not a YAML recipe; pass a text recipe (configs/*.yaml)")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(
            f"config {path}: is not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start}); "
            "save the recipe as UTF-8 YAML"
        ) from None


def read_yaml(path: Path, _chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Read a recipe and resolve its ``base:`` chain (paths relative to the including file)."""
    path = Path(path)
    if not path.is_file():
        where = f" (base of {_chain[-1]})" if _chain else ""
        what = "is a folder, not a file" if path.is_dir() else "not found"
        raise UserError(f"config file {path} {what}{where}; pass a path to a YAML recipe, e.g. configs/demo_mtd.yaml")
    resolved = path.resolve()
    if resolved in _chain:
        raise UserError(f"config {path}: 'base:' chain loops back to itself; remove the cycle")
    text = read_recipe_text(path)
    try:
        data = yaml.safe_load(text) or {}
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
    if not isinstance(bases, list) or not all(isinstance(b, str) and b for b in bases):
        raise UserError(f"config {path}: 'base' must be a recipe path or a list of them, got {base!r}")
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


def _check_semantics(cfg: RunConfig, where: str) -> None:
    """Cross-key rules that the per-key types cannot express."""
    check_run_name(cfg.name, where)
    if "name" not in cfg.loss:
        raise UserError(f"config {where}: missing required key 'loss.name' (e.g. bce, mtd, kd, rkd, fitnets)")
    check_loss(cfg.loss["name"], VOCALIST, f"config {where}: 'loss.name'")
    if cfg.kind == "distill" and cfg.teacher.checkpoint is None and cfg.teacher.size is None:
        raise UserError(f"config {where}: distill needs 'teacher.checkpoint' (or teacher.size for a random teacher)")
    if cfg.model.size == "custom" and not cfg.model.config:
        raise UserError(f"config {where}: model.size 'custom' needs 'model.config' (VocaLiSTConfig fields)")
    for key in ("batch_size", "min_frames"):
        if getattr(cfg.data, key) < 1:
            raise UserError(f"config {where}: 'data.{key}' must be >= 1, got {getattr(cfg.data, key)}")
    for key in ("epochs", "accumulate_grad_batches", "val_every", "num_nodes", "log_every_n_steps"):
        if getattr(cfg.trainer, key) < 1:
            raise UserError(f"config {where}: 'trainer.{key}' must be >= 1, got {getattr(cfg.trainer, key)}")
    if cfg.optim.lr <= 0:
        raise UserError(f"config {where}: 'optim.lr' must be > 0, got {cfg.optim.lr}")
    stop = cfg.trainer.stop_at_val_f1
    if stop is not None and not 0.0 <= stop <= 1.0:
        raise UserError(f"config {where}: 'trainer.stop_at_val_f1' is a weighted F1 in [0, 1], got {stop}")
    for i, entry in enumerate(cfg.val_extra_losses):
        if not isinstance(entry, (str, dict)) or (isinstance(entry, dict) and "name" not in entry):
            raise UserError(
                f"config {where}: 'val_extra_losses[{i}]' must be a loss name or a mapping with 'name' (+ kwargs)"
            )
        check_loss(
            entry if isinstance(entry, str) else entry["name"], VOCALIST, f"config {where}: 'val_extra_losses[{i}]'"
        )


def parse_config(data: Mapping[str, Any], where: str = "<dict>") -> RunConfig:
    """Check every key of a merged recipe and fill defaults: the typed ``RunConfig``."""
    if not isinstance(data, Mapping):
        raise UserError(f"config {where}: top level must be a mapping of keys, got {type(data).__name__}")
    cfg = parse_section(RunConfig, data, where)
    _check_semantics(cfg, where)
    if str(cfg.trainer.precision) == "32":
        cfg.trainer.precision = "32"
    if cfg.method is None:
        cfg.method = cfg.name
    return cfg


def validate(data: Mapping[str, Any], where: str = "<dict>") -> dict[str, Any]:
    """``parse_config`` as the plain nested dict the trainer, config.yaml and the reports read."""
    return asdict(parse_config(data, where))


def load_config(path: str | Path, overrides: Iterable[str] = ()) -> dict[str, Any]:
    """Read ``path`` (with its ``base:`` chain), apply ``--set`` overrides, validate, fill defaults."""
    raw = read_yaml(Path(path))
    overrides = list(overrides)
    merged = apply_overrides(raw, overrides)
    where = str(path) + (" (with --set)" if overrides else "")
    return validate(merged, where)


def quirks_of(cfg: Mapping[str, Any]) -> Quirks:
    """The run's one ``Quirks`` object (a resolved config holds every flag; older ones only the changed ones)."""
    return Quirks().replace(**(cfg.get("quirks") or {}))


def dump_config(cfg: Mapping[str, Any]) -> str:
    return yaml.safe_dump(dict(cfg), sort_keys=False, default_flow_style=False)
