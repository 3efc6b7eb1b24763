"""Reading MulT teachers saved by the official MulT code (yaohungt/Multimodal-Transformer) or by mtdistill.

Three kinds of file are understood, none of them by running code from the file:

* an official whole-model pickle (``torch.save(model)`` of ``src.models.MULTModel``, possibly inside
  ``nn.DataParallel``): read by `safe_torch_load(refuse_code=True)`, which turns every pickled class into an
  inert placeholder; the weights come from the placeholders' ``_parameters`` / ``_buffers`` / ``_modules``
  and the settings from their attributes (``num_heads``, ``layers``, ``d_l``, ``orig_d_l``, ``lonly``,
  dropouts, ``attn_mask``, the ``proj_*`` convs' ``kernel_size`` / ``padding``, ``out_layer.out_features``);
* an official ``state_dict`` (``torch.save(model.state_dict())``): the sizes come from the tensor shapes; the
  head count cannot, so ``heads`` must be given; the settings not in the file are the official defaults;
* our own ``.safetensors`` (`format.save_model`): config and weights as written.

Zip and pre-1.6 (legacy) torch files both load, and tensors saved on a GPU land on the CPU.

Official names map to ours as ``proj_l`` -> ``proj.l``, ``trans_l_with_a`` -> ``transformers.la``,
``trans_l_mem`` -> ``transformers.l_mem``, ``proj1`` / ``proj2`` / ``out_layer`` -> ``head.*``. The official
code always builds the three conv projections and the three memory encoders; a projection it skips (input size
already d) and the memory encoders of the branches a one-branch model (``--lonly`` ...) never runs are dropped.
Its convs have padding 0, which these configs keep (our own default is "same").
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import Tensor

from mtdistill.core.errors import UserError
from mtdistill.core.safeio import InertObject, safe_torch_load
from mtdistill.models.mult.format import FORMAT, read_model_file

_MODS = ("l", "a", "v")  # official attribute suffixes, in MulT's (text, audio, vision) order
_CROSS = re.compile(r"^trans_([lav])_with_([lav])\.(.+)$")
_MEMORY = re.compile(r"^trans_([lav])_mem\.(.+)$")
_PROJ = re.compile(r"^proj_([lav])\.weight$")
_HEAD = re.compile(r"^(proj1|proj2|out_layer)\.(weight|bias)$")
_FLAGS = {"l": "lonly", "a": "aonly", "v": "vonly"}
_DROPOUTS = ("attn_dropout", "attn_dropout_a", "attn_dropout_v", "relu_dropout", "res_dropout", "out_dropout")


@dataclass
class TeacherFile:
    """What a MulT teacher file holds: MulTConfig keyword arguments and a state_dict with our key names."""

    config: dict[str, Any]
    state: dict[str, Tensor]
    source: str  # "official-pickle" | "official-state_dict" | "mtdistill"


def read_teacher_file(path: str | Path, heads: int | None = None, attn_mask: bool | None = None) -> TeacherFile:
    """Read any MulT teacher file (see the module docstring); one-line `UserError` for anything else."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"MulT checkpoint {path} not found")
    if _is_safetensors(path):
        meta, state = read_model_file(path)
        if meta.get("format") != FORMAT:
            raise UserError(f"{path}: format {meta.get('format')!r} is not {FORMAT!r}; is it a MulT checkpoint?")
        if meta.get("kind") != "mult":
            raise UserError(f"{path} is a video-student checkpoint, not a MulT teacher")
        return TeacherFile(dict(meta["config"]), state, "mtdistill")
    obj = safe_torch_load(path, refuse_code=True)
    model = _find_model(obj)
    if model is not None:
        state = _unprefix(_module_state(model, path))
        settings = _pickle_settings(model)
        if heads is not None and settings.get("heads") not in (None, heads):
            raise UserError(f"{path}: the file says {settings['heads']} heads, not heads={heads}; drop --heads")
        source = "official-pickle"
    else:
        state = _unprefix(_state_dict_of(obj, path))
        settings = {}
        source = "official-state_dict"
    if not any(k.startswith("trans_") for k in state):
        raise UserError(f"{path}: not a MulT checkpoint (no trans_*_with_* / trans_*_mem weights)")
    config, ours = _convert(state, settings, path)
    if config.get("heads") is None:
        if heads is None:
            raise UserError(
                f"{path}: an official MulT state_dict does not record the number of attention heads; "
                "pass heads= (--heads N, e.g. 5 for MulT's default, 8 for the paper's MOSEI setting)"
            )
        config["heads"] = int(heads)
    if attn_mask is not None:
        config["attn_mask"] = bool(attn_mask)
    return TeacherFile(config, ours, source)


def _is_safetensors(path: Path) -> bool:
    """safetensors starts with an 8-byte little-endian header size followed by '{'; torch files never do."""
    with open(path, "rb") as fh:
        head = fh.read(9)
    return len(head) == 9 and head[8:9] == b"{"


# ---- finding the model and its weights in what was unpickled ----
def _find_model(obj: Any) -> InertObject | None:
    """The MULTModel placeholder: the object itself, inside DataParallel (``module``), or under a dict key."""
    if isinstance(obj, dict):
        for key in ("model", "module", "net"):
            if isinstance(obj.get(key), InertObject):
                return _find_model(obj[key])
        return None
    if not isinstance(obj, InertObject):
        return None
    modules = obj.__dict__.get("_modules") or {}
    if set(modules) == {"module"} and isinstance(modules["module"], InertObject):
        return _find_model(modules["module"])  # nn.DataParallel / DistributedDataParallel
    return obj


def _module_state(obj: InertObject, path: Path, prefix: str = "") -> dict[str, Tensor]:
    """state_dict of a pickled nn.Module tree (parameters, persistent buffers, submodules), from placeholders."""
    d = obj.__dict__
    if "_modules" not in d and "_parameters" not in d:
        raise UserError(f"{path}: {'.'.join(obj.pickled_as)} at {prefix or 'the top'} is not a torch module")
    out: dict[str, Tensor] = {}
    skip = d.get("_non_persistent_buffers_set") or set()
    for table in ("_parameters", "_buffers"):
        for name, t in (d.get(table) or {}).items():
            if t is None or (table == "_buffers" and name in skip):
                continue
            if not isinstance(t, Tensor):
                raise UserError(f"{path}: {prefix}{name} is a {type(t).__name__}, not a tensor")
            out[prefix + name] = t.detach()
    for name, child in (d.get("_modules") or {}).items():
        if child is None:
            continue
        if not isinstance(child, InertObject):
            raise UserError(f"{path}: submodule {prefix}{name} is a {type(child).__name__}, not a module")
        out.update(_module_state(child, path, f"{prefix}{name}."))
    return out


def _state_dict_of(obj: Any, path: Path) -> dict[str, Tensor]:
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, Tensor) for v in obj.values()):
        raise UserError(f"{path}: neither a MulT model pickle nor a state_dict of tensors")
    return dict(obj)


def _unprefix(state: dict[str, Tensor]) -> dict[str, Tensor]:
    return {k.removeprefix("module."): v for k, v in state.items()}


def _pickle_settings(model: InertObject) -> dict[str, Any]:
    """Settings the official MULTModel keeps as attributes (absent ones stay unset: shapes or defaults)."""
    d = model.__dict__
    s: dict[str, Any] = {}
    if isinstance(d.get("num_heads"), int):
        s["heads"] = d["num_heads"]
    flags = {m: bool(d[f]) for m, f in _FLAGS.items() if f in d}
    if len(flags) == 3:
        s["flags"] = flags
    for name in (*_DROPOUTS, "embed_dropout"):
        if isinstance(d.get(name), int | float) and not isinstance(d.get(name), bool):
            s[name] = float(d[name])
    if "attn_mask" in d:
        s["attn_mask"] = bool(d["attn_mask"])
    modules = d.get("_modules") or {}
    for m in _MODS:
        conv = modules.get(f"proj_{m}")
        if isinstance(conv, InertObject) and "padding" in conv.__dict__:
            s.setdefault("paddings", {})[m] = conv.__dict__["padding"]
    return s


# ---- official names and shapes -> MulTConfig + our names ----
def _convert(state: dict[str, Tensor], settings: dict[str, Any], path: Path) -> tuple[dict[str, Any], dict]:
    cross: dict[str, int] = {}  # "la" -> number of layers
    memory: dict[str, int] = {}
    for key in state:
        if m := _CROSS.match(key):
            name = m[1] + m[2]
            cross[name] = max(cross.get(name, 0), _layer_index(m[3]) + 1)
        elif m := _MEMORY.match(key):
            memory[m[1]] = max(memory.get(m[1], 0), _layer_index(m[2]) + 1)
    branches = sorted({name[0] for name in cross}, key=_MODS.index)
    flags = settings.get("flags")
    if flags is not None:
        on = [m for m in _MODS if flags[m]]
        if len(on) == 2:
            raise UserError(f"{path}: a MulT with two of --lonly/--aonly/--vonly cannot run (the official code fails)")
        if on and on != branches:
            raise UserError(f"{path}: the flags say branches {on} but the weights hold {branches}")
    if len(branches) not in (1, 3):
        raise UserError(f"{path}: MulT weights for branches {branches}; expected all three or exactly one")
    mode = "full" if len(branches) == 3 else branches[0]
    for m in branches:
        for name in (m + s for s in _MODS if s != m):
            if name not in cross:
                raise UserError(f"{path}: trans_{name[0]}_with_{name[1]} is missing for branch {m!r}")
        if m not in memory:
            raise UserError(f"{path}: trans_{m}_mem is missing for branch {m!r}")
    layers = {cross[n] for n in cross}
    mem_layers = {memory[m] for m in branches}
    if len(layers) != 1 or len(mem_layers) != 1:
        raise UserError(f"{path}: MulT encoders of different depths ({sorted(layers)}, memory {sorted(mem_layers)})")
    n_layers, n_mem = layers.pop(), mem_layers.pop()
    d = int(state[f"trans_{branches[0]}_mem.layers.0.self_attn.in_proj_weight"].shape[1]) // 2

    orig_dims, kernels, ours = [], [], {}
    for m in _MODS:
        w = state.get(f"proj_{m}.weight")
        if w is None or w.ndim != 3 or w.shape[0] != d:
            raise UserError(f"{path}: proj_{m}.weight is missing or not a (d, in, kernel) Conv1d weight")
        orig, k = int(w.shape[1]), int(w.shape[2])
        if orig == d:  # the official forward skips this conv whatever its kernel: identity here too
            k = 1
        else:
            ours[f"proj.{m}.weight"] = w
        orig_dims.append(orig)
        kernels.append(k)

    for key, value in state.items():
        if _PROJ.match(key):
            continue
        if m := _CROSS.match(key):
            ours[f"transformers.{m[1]}{m[2]}.{m[3]}"] = value
        elif m := _MEMORY.match(key):
            if m[1] in branches:
                ours[f"transformers.{m[1]}_mem.{m[2]}"] = value
        elif m := _HEAD.match(key):
            ours[f"head.{m[1]}.{m[2]}"] = value
        else:
            raise UserError(f"{path}: unexpected key {key!r} for an official MulT")
    if "head.out_layer.weight" not in ours:
        raise UserError(f"{path}: out_layer.weight is missing")

    config: dict[str, Any] = {
        "orig_dims": tuple(orig_dims),
        "d": d,
        "layers": n_layers,
        "heads": settings.get("heads"),
        "kernel_sizes": tuple(kernels),
        "output_dim": int(ours["head.out_layer.weight"].shape[0]),
        "mode": mode,
        "padding": _padding(settings.get("paddings"), path),
        "mem_layers": n_mem if n_mem != max(n_layers, 3) else None,
        "attn_mask": settings.get("attn_mask", True),
        "pe_positions": "mult_pad_aware",
    }
    config.update({k: settings[k] for k in (*_DROPOUTS, "embed_dropout") if k in settings})
    return config, ours


def _layer_index(rest: str) -> int:
    m = re.match(r"^layers\.(\d+)\.", rest)
    return int(m[1]) if m else -1


def _padding(paddings: dict[str, Any] | None, path: Path) -> int | str:
    """The official convs' padding (0); forks may change it, but all three must agree."""
    if not paddings:
        return 0
    values = set()
    for p in paddings.values():
        if isinstance(p, tuple | list) and len(p) == 1:
            p = p[0]
        if p == "valid":
            p = 0
        if not (p == "same" or (isinstance(p, int) and p >= 0)):
            raise UserError(f"{path}: conv padding {p!r} is not supported")
        values.add(p)
    if len(values) != 1:
        raise UserError(f"{path}: the proj_l/proj_a/proj_v convs have different paddings {sorted(map(str, values))}")
    return values.pop()


def is_torch_file(path: str | Path) -> bool:
    """True for files torch.save wrote (zip or legacy pickle), as opposed to safetensors."""
    return Path(path).is_file() and not _is_safetensors(Path(path))


__all__ = ["TeacherFile", "is_torch_file", "read_teacher_file"]
