"""Official MulT checkpoints load safely: `MulT.from_checkpoint` on files written by a stand-in of the official code.

TEST-ONLY CODE. `STAND_IN` below is a minimal stand-in of the official MulT module tree, written for these tests
from the project's own description of the official code (class paths ``src.models.MULTModel``,
``modules.transformer.TransformerEncoder`` / ``TransformerEncoderLayer``, ``modules.multihead_attention.
MultiheadAttention``, ``modules.position_embedding.SinusoidalPositionalEmbedding``, and their attribute names).
It is not the official code. A subprocess puts it on ``sys.path``, builds models, and writes their pickles,
state_dicts and outputs; this process, where those modules do not exist, loads the files with mtdistill and
compares outputs.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from mtdistill.core.errors import UserError
from mtdistill.core.safeio import safe_torch_load
from mtdistill.data.mult.synth import SynthMoseiConfig, write_synthetic_mosei
from mtdistill.evaluation.mult.evaluate import evaluate_mult_checkpoint
from mtdistill.models import MulT
from mtdistill.training.mult import build_teacher

# ------------------------------------------------------------------ the stand-in (test-only, see the docstring)
STAND_IN = {
    "src/__init__.py": "",
    "modules/__init__.py": "",
    "modules/position_embedding.py": '''
        import math
        import torch
        from torch import nn


        class SinusoidalPositionalEmbedding(nn.Module):
            """Sinusoids [sin | cos]; step t gets position t + 1 unless its value is exactly 0 (position 0, zeros)."""

            def __init__(self, embedding_dim, padding_idx=0, left_pad=0, init_size=128):
                super().__init__()
                self.embedding_dim, self.padding_idx, self.left_pad = embedding_dim, padding_idx, left_pad
                self.weights = dict()  # per-device cache, as the official module keeps one
                self.register_buffer("_float_tensor", torch.FloatTensor(1))

            def table(self, n):
                half = self.embedding_dim // 2
                rate = torch.exp(-math.log(10000) / (half - 1) * torch.arange(half, dtype=torch.float))
                ang = torch.arange(n, dtype=torch.float)[:, None] * rate[None]
                tab = torch.cat([ang.sin(), ang.cos()], 1)
                if self.embedding_dim % 2:
                    tab = torch.cat([tab, torch.zeros(n, 1)], 1)
                tab[self.padding_idx] = 0
                return tab

            def forward(self, x):  # x (B, T): the first feature channel
                b, t = x.shape
                self.weights[x.get_device()] = tab = self.table(t + 1)
                pos = torch.arange(1, t + 1)[None].expand(b, t) * (x != 0).long()
                return tab[pos].detach()
    ''',
    "modules/multihead_attention.py": """
        import torch
        import torch.nn.functional as F
        from torch import nn


        class MultiheadAttention(nn.Module):
            def __init__(self, embed_dim, num_heads, attn_dropout=0.0, bias=True, add_bias_kv=False,
                         add_zero_attn=False):
                super().__init__()
                self.embed_dim, self.num_heads, self.attn_dropout = embed_dim, num_heads, attn_dropout
                self.head_dim = embed_dim // num_heads
                self.scaling = self.head_dim ** -0.5
                self.in_proj_weight = nn.Parameter(torch.empty(3 * embed_dim, embed_dim))
                self.in_proj_bias = nn.Parameter(torch.zeros(3 * embed_dim))
                self.out_proj = nn.Linear(embed_dim, embed_dim)
                self.bias_k = self.bias_v = None
                self.add_zero_attn = add_zero_attn
                nn.init.xavier_uniform_(self.in_proj_weight)

            def forward(self, query, key, value, attn_mask=None):
                tq, b, d = query.shape
                h, hd = self.num_heads, self.head_dim
                w, bias = self.in_proj_weight, self.in_proj_bias
                q = F.linear(query, w[:d], bias[:d]) * self.scaling
                k = F.linear(key, w[d:2 * d], bias[d:2 * d])
                v = F.linear(value, w[2 * d:], bias[2 * d:])
                split = lambda x: x.reshape(x.shape[0], b * h, hd).transpose(0, 1)  # noqa: E731
                scores = torch.bmm(split(q), split(k).transpose(1, 2))
                if attn_mask is not None:
                    scores = scores + attn_mask[None]
                p = F.dropout(torch.softmax(scores.float(), -1).type_as(scores), self.attn_dropout, self.training)
                out = torch.bmm(p, split(v)).transpose(0, 1).reshape(tq, b, d)
                return self.out_proj(out), p.reshape(b, h, tq, -1).mean(1)
    """,
    "modules/transformer.py": """
        import math
        import torch
        import torch.nn.functional as F
        from torch import nn
        from modules.multihead_attention import MultiheadAttention
        from modules.position_embedding import SinusoidalPositionalEmbedding


        def future_mask(tq, tk):
            i, j = torch.arange(tq)[:, None], torch.arange(tk)[None]
            return torch.zeros(tq, tk).masked_fill(j - i >= 1 + abs(tk - tq), float("-inf"))


        class TransformerEncoderLayer(nn.Module):
            def __init__(self, embed_dim, num_heads=4, attn_dropout=0.1, relu_dropout=0.1, res_dropout=0.1,
                         attn_mask=False):
                super().__init__()
                self.embed_dim, self.num_heads = embed_dim, num_heads
                self.self_attn = MultiheadAttention(embed_dim, num_heads, attn_dropout)
                self.attn_mask, self.relu_dropout, self.res_dropout = attn_mask, relu_dropout, res_dropout
                self.normalize_before = True
                self.fc1 = nn.Linear(embed_dim, 4 * embed_dim)
                self.fc2 = nn.Linear(4 * embed_dim, embed_dim)
                self.layer_norms = nn.ModuleList([nn.LayerNorm(embed_dim), nn.LayerNorm(embed_dim)])

            def forward(self, x, x_k=None, x_v=None):
                ln = self.layer_norms[0]
                y = ln(x)
                k, v = (y, y) if x_k is None else (ln(x_k), ln(x_v))
                mask = future_mask(x.shape[0], k.shape[0]) if self.attn_mask else None
                x = x + F.dropout(self.self_attn(y, k, v, attn_mask=mask)[0], self.res_dropout, self.training)
                y = F.dropout(F.relu(self.fc1(self.layer_norms[1](x))), self.relu_dropout, self.training)
                return x + F.dropout(self.fc2(y), self.res_dropout, self.training)


        class TransformerEncoder(nn.Module):
            def __init__(self, embed_dim, num_heads, layers, attn_dropout=0.0, relu_dropout=0.0, res_dropout=0.0,
                         embed_dropout=0.0, attn_mask=False):
                super().__init__()
                self.dropout, self.attn_dropout, self.embed_dim = embed_dropout, attn_dropout, embed_dim
                self.embed_scale = math.sqrt(embed_dim)
                self.embed_positions = SinusoidalPositionalEmbedding(embed_dim)
                self.attn_mask = attn_mask
                self.layers = nn.ModuleList(
                    TransformerEncoderLayer(embed_dim, num_heads, attn_dropout, relu_dropout, res_dropout, attn_mask)
                    for _ in range(layers)
                )
                self.register_buffer("version", torch.Tensor([2]))
                self.normalize = True
                self.layer_norm = nn.LayerNorm(embed_dim)

            def embed(self, x_in):
                pe = self.embed_positions(x_in[:, :, 0].t()).transpose(0, 1)
                return F.dropout(self.embed_scale * x_in + pe, self.dropout, self.training)

            def forward(self, x_in, x_in_k=None, x_in_v=None):
                x = self.embed(x_in)
                if x_in_k is not None:
                    x_k, x_v = self.embed(x_in_k), self.embed(x_in_v)
                for layer in self.layers:
                    x = layer(x) if x_in_k is None else layer(x, x_k, x_v)
                return self.layer_norm(x)
    """,
    "src/models.py": """
        import torch
        import torch.nn.functional as F
        from torch import nn
        from modules.transformer import TransformerEncoder


        class MULTModel(nn.Module):
            def __init__(self, hp):
                super().__init__()
                self.orig_d_l, self.orig_d_a, self.orig_d_v = hp.orig_d_l, hp.orig_d_a, hp.orig_d_v
                self.d_l = self.d_a = self.d_v = hp.d
                self.vonly, self.aonly, self.lonly = hp.vonly, hp.aonly, hp.lonly
                self.num_heads, self.layers = hp.num_heads, hp.layers
                self.attn_dropout, self.attn_dropout_a, self.attn_dropout_v = 0.1, 0.0, 0.0
                self.relu_dropout = self.res_dropout = 0.1
                self.out_dropout, self.embed_dropout = 0.0, 0.25
                self.attn_mask = hp.attn_mask
                self.partial_mode = self.lonly + self.aonly + self.vonly
                combined = 2 * self.d_l * (1 if self.partial_mode == 1 else 3)
                kl, ka, kv = hp.kernels
                self.proj_l = nn.Conv1d(self.orig_d_l, self.d_l, kernel_size=kl, padding=0, bias=False)
                self.proj_a = nn.Conv1d(self.orig_d_a, self.d_a, kernel_size=ka, padding=0, bias=False)
                self.proj_v = nn.Conv1d(self.orig_d_v, self.d_v, kernel_size=kv, padding=0, bias=False)
                for q, on in (("l", self.lonly), ("a", self.aonly), ("v", self.vonly)):
                    if on:
                        for s in "lav".replace(q, ""):
                            setattr(self, f"trans_{q}_with_{s}", self.net(self.d_l, {"l": 0.1, "a": 0.0, "v": 0.0}[s]))
                for m in "lav":
                    setattr(self, f"trans_{m}_mem", self.net(2 * self.d_l, self.attn_dropout, 3))
                self.proj1 = nn.Linear(combined, combined)
                self.proj2 = nn.Linear(combined, combined)
                self.out_layer = nn.Linear(combined, hp.output_dim)

            def net(self, dim, attn_dropout, layers=-1):
                return TransformerEncoder(dim, self.num_heads, max(self.layers, layers), attn_dropout,
                                          self.relu_dropout, self.res_dropout, self.embed_dropout, self.attn_mask)

            def forward(self, x_l, x_a, x_v):
                x = {"l": F.dropout(x_l.transpose(1, 2), self.embed_dropout, self.training),
                     "a": x_a.transpose(1, 2), "v": x_v.transpose(1, 2)}
                for m, orig in (("l", self.orig_d_l), ("a", self.orig_d_a), ("v", self.orig_d_v)):
                    x[m] = (x[m] if orig == self.d_l else getattr(self, f"proj_{m}")(x[m])).permute(2, 0, 1)
                last = []
                for m, on in (("l", self.lonly), ("a", self.aonly), ("v", self.vonly)):
                    if on:
                        s1, s2 = "lav".replace(m, "")
                        h1 = getattr(self, f"trans_{m}_with_{s1}")(x[m], x[s1], x[s1])
                        h2 = getattr(self, f"trans_{m}_with_{s2}")(x[m], x[s2], x[s2])
                        last.append(getattr(self, f"trans_{m}_mem")(torch.cat([h1, h2], 2))[-1])
                last_hs = torch.cat(last, 1)
                h = self.proj2(F.dropout(F.relu(self.proj1(last_hs)), self.out_dropout, self.training)) + last_hs
                return self.out_layer(h), last_hs
    """,
    "evilmod.py": """
        def touch(path):
            open(path, "w").close()
    """,
}

VARIANTS = {  # name: (orig dims l/a/v, d, heads, layers, kernels, output_dim, flags l/a/v, attn_mask)
    "full": ((20, 12, 7), 8, 2, 2, (1, 1, 1), 7, (True, True, True), True),
    "full_k3": ((20, 12, 8), 8, 4, 1, (3, 3, 3), 1, (True, True, True), False),  # vision already d: no conv
    "lonly": ((20, 12, 7), 8, 2, 2, (3, 1, 3), 2, (True, False, False), True),
    "vonly": ((20, 12, 7), 8, 2, 4, (1, 3, 1), 1, (False, False, True), True),
}

WRITER = '''
import os, sys, types
import torch
from torch import nn
from src.models import MULTModel
import evilmod

out, marker = sys.argv[1], sys.argv[2]
variants = {variants!r}


class Payload:  # what an attacker would add to a model
    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return (self.fn, self.args)


# torch <= 1.x pickled every module's `_backend` as a call to this function: the same global, as old files have
thnn = types.ModuleType("torch.nn.backends.thnn")


def _get_thnn_function_backend():
    return None


_get_thnn_function_backend.__module__ = thnn.__name__
thnn._get_thnn_function_backend = _get_thnn_function_backend
sys.modules[thnn.__name__] = thnn


class OldBackend:
    def __reduce__(self):
        return (thnn._get_thnn_function_backend, ())


def save_tagged(obj, path, tag, **kw):
    """torch.save with every storage tagged `tag` (what a GPU run writes), on this CPU-only machine."""
    entry = (-1, lambda storage: tag, lambda storage, location: None)
    torch.serialization._package_registry.insert(0, entry)
    try:
        torch.save(obj, path, **kw)
    finally:
        torch.serialization._package_registry.remove(entry)


for i, (name, (dims, d, heads, layers, kernels, out_dim, flags, mask)) in enumerate(variants.items()):
    torch.manual_seed(i)
    hp = types.SimpleNamespace(orig_d_l=dims[0], orig_d_a=dims[1], orig_d_v=dims[2], d=d, num_heads=heads,
                               layers=layers, kernels=kernels, output_dim=out_dim, lonly=flags[0],
                               aonly=flags[1], vonly=flags[2], attn_mask=mask)
    model = MULTModel(hp)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))  # every weight random, LayerNorms and biases included
    model.eval()
    for m in model.modules():
        m._backend = OldBackend()
    t = {{"text": torch.randn(3, 6, dims[0]), "audio": torch.randn(3, 10, dims[1]),
         "vision": torch.randn(3, 9, dims[2])}}
    for x in t.values():
        x[1, :2] = 0  # left zero padding, as the MOSEI features
    with torch.no_grad():
        logits, last_hs = model(t["text"], t["audio"], t["vision"])
    torch.save({{**t, "logits": logits, "last_hs": last_hs}}, f"{{out}}/{{name}}_io.pt")
    torch.save(model, f"{{out}}/{{name}}_model.pt")
    torch.save(model, f"{{out}}/{{name}}_model_legacy.pt", _use_new_zipfile_serialization=False)
    torch.save(model.state_dict(), f"{{out}}/{{name}}_sd.pt")
    save_tagged(model, f"{{out}}/{{name}}_model_cuda.pt", "cuda:0")
    save_tagged(model.state_dict(), f"{{out}}/{{name}}_sd_legacy_cuda.pt", "cuda:0",
                _use_new_zipfile_serialization=False)
    if name == "full":
        torch.save(nn.DataParallel(model), f"{{out}}/full_dataparallel.pt")
        model.extra = Payload(os.system, f"touch {{marker}}")  # a real model file with a payload inside
        torch.save(model, f"{{out}}/evil_inside_model.pt")

torch.save(Payload(os.system, f"touch {{marker}}"), f"{{out}}/evil_os_system.pt")
torch.save(Payload(eval, f"open({{marker!r}}, 'w')"), f"{{out}}/evil_eval.pt", _use_new_zipfile_serialization=False)
torch.save({{"state_dict": Payload(evilmod.touch, marker)}}, f"{{out}}/evil_module.pt")
'''


@pytest.fixture(scope="module")
def official(tmp_path_factory) -> Path:
    """Files written by the stand-in in a subprocess; the stand-in's source folder is ``official/code``."""
    root = tmp_path_factory.mktemp("official")
    code, out = root / "code", root / "files"
    out.mkdir()
    for rel, text in STAND_IN.items():
        (code / rel).parent.mkdir(parents=True, exist_ok=True)
        (code / rel).write_text(textwrap.dedent(text))
    script = code / "write.py"
    script.write_text(WRITER.format(variants=VARIANTS))
    marker = root / "marker"
    env = {**os.environ, "PYTHONPATH": str(code)}
    subprocess.run([sys.executable, str(script), str(out), str(marker)], check=True, env=env, cwd=code)
    assert not marker.exists()
    return out


def _outputs(model: MulT, io: dict) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        out = model(io["text"], io["audio"], io["vision"], capture=())
    return out.logits, out.last_hs


def test_the_stand_in_is_not_importable_here():
    assert "src.models" not in sys.modules and "modules.transformer" not in sys.modules
    with pytest.raises(ModuleNotFoundError):
        __import__("modules.transformer")


PICKLES = [(v, "model") for v in VARIANTS] + [
    ("full", "model_legacy"),
    ("lonly", "model_legacy"),
    ("full_k3", "model_cuda"),
    ("vonly", "model_cuda"),
]


@pytest.mark.parametrize(("variant", "kind"), PICKLES)
def test_official_whole_model_pickles_load_and_match(official, variant, kind):
    path = official / f"{variant}_{kind}.pt"
    if kind == "model_cuda":  # the file really carries GPU location tags
        assert b"cuda:0" in path.read_bytes()
    assert b"_get_thnn_function_backend" in path.read_bytes()  # and the old `_backend` calls, never made
    model = MulT.from_checkpoint(path)
    assert not model.training
    dims, d, heads, layers, kernels, out_dim, flags, mask = VARIANTS[variant]
    cfg = model.config
    assert (cfg.orig_dims, cfg.d, cfg.heads, cfg.layers, cfg.output_dim) == (dims, d, heads, layers, out_dim)
    assert cfg.padding == 0 and cfg.attn_mask is mask and cfg.memory_layers == max(layers, 3)
    assert cfg.mode == ("full" if all(flags) else "lav"[flags.index(True)])
    io = torch.load(official / f"{variant}_io.pt", weights_only=True)
    logits, last_hs = _outputs(model, io)
    torch.testing.assert_close(logits, io["logits"], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(last_hs, io["last_hs"], rtol=1e-5, atol=1e-5)
    assert "src.models" not in sys.modules and "modules" not in sys.modules


def test_kernel_and_skipped_projection_follow_the_file(official):
    model = MulT.from_checkpoint(official / "full_k3_model.pt")
    assert model.config.kernel_sizes == (3, 3, 1)  # vision is already d wide: the official code skips its conv
    assert sorted(model.proj) == ["a", "l"]
    assert model.config.out_length(6, "l") == 4  # padding 0: a kernel-3 conv shortens by 2


def test_one_branch_models_drop_the_unused_memory_encoders(official):
    model = MulT.from_checkpoint(official / "lonly_model.pt")
    assert set(model.transformer_names) == {"la", "lv", "l_mem"}
    raw = torch.load(official / "lonly_sd.pt", weights_only=True)
    assert any(k.startswith("trans_v_mem.") for k in raw)  # the official model carries them


STATE_DICTS = [(v, "sd") for v in VARIANTS] + [("full_k3", "sd_legacy_cuda"), ("lonly", "sd_legacy_cuda")]


@pytest.mark.parametrize(("variant", "kind"), STATE_DICTS)
def test_official_state_dicts_load_with_heads(official, variant, kind):
    path = official / f"{variant}_{kind}.pt"
    heads, mask = VARIANTS[variant][2], VARIANTS[variant][7]
    with pytest.raises(UserError, match=r"heads=.*--heads") as err:
        MulT.from_checkpoint(path)
    assert "\n" not in str(err.value)
    model = MulT.from_checkpoint(path, heads=heads, attn_mask=mask)  # a state_dict records neither
    assert not model.training and model.config.padding == 0
    io = torch.load(official / f"{variant}_io.pt", weights_only=True)
    torch.testing.assert_close(_outputs(model, io)[0], io["logits"], rtol=1e-5, atol=1e-5)


def test_dataparallel_pickle_and_our_own_checkpoint(official, tmp_path):
    model = MulT.from_checkpoint(official / "full_dataparallel.pt")
    io = torch.load(official / "full_io.pt", weights_only=True)
    torch.testing.assert_close(_outputs(model, io)[0], io["logits"], rtol=1e-5, atol=1e-5)
    ours = model.save_checkpoint(tmp_path / "teacher.safetensors")
    back = MulT.from_checkpoint(ours)
    assert back.config == model.config and not back.training
    assert torch.equal(_outputs(back, io)[0], _outputs(model, io)[0])


@pytest.mark.parametrize("name", ["evil_os_system", "evil_eval", "evil_inside_model"])
def test_pickles_that_would_run_code_fail_in_one_line(official, name):
    marker = official.parent / "marker"
    with pytest.raises(UserError, match="never runs code") as err:
        MulT.from_checkpoint(official / f"{name}.pt")
    assert "\n" not in str(err.value)
    assert not marker.exists()


def test_a_payload_from_an_importable_module_is_never_imported(official, monkeypatch):
    marker = official.parent / "marker"
    monkeypatch.syspath_prepend(str(official.parent / "code"))  # evilmod *could* be imported here
    with pytest.raises(UserError) as err:
        MulT.from_checkpoint(official / "evil_module.pt")
    assert "\n" not in str(err.value)
    assert not marker.exists() and "evilmod" not in sys.modules
    # the default (non-refusing) reader keeps it as an inert placeholder that ran nothing
    obj = safe_torch_load(official / "evil_module.pt")
    assert obj["state_dict"].pickled_as == ("evilmod", "touch") and not marker.exists()


def test_not_a_mult_file(tmp_path):
    torch.save({"x": torch.ones(2)}, tmp_path / "other.pt")
    with pytest.raises(UserError, match="not a MulT"):
        MulT.from_checkpoint(tmp_path / "other.pt")
    (tmp_path / "junk.pt").write_bytes(pickle.dumps([1, 2], protocol=2) + b"junk")
    with pytest.raises(UserError):
        MulT.from_checkpoint(tmp_path / "junk.pt")


def test_recipes_and_mult_evaluate_take_an_official_file(official, tmp_path):
    dims = VARIANTS["full"][0]
    data = tmp_path / "data"
    write_synthetic_mosei(data, SynthMoseiConfig(n_train=8, n_valid=4, n_test=6, lengths=(6, 10, 9), dims=dims))
    path = official / "full_model.pt"
    cfg = {"kind": "student", "configuration": 1, "teacher": {"run": None, "checkpoint": str(path)}}
    teacher = build_teacher(cfg)
    assert isinstance(teacher, MulT) and teacher.config.heads == 2
    res = evaluate_mult_checkpoint(path, data, split="test", out=tmp_path / "eval", latency=False)
    assert res["params"] == teacher.num_parameters() and (tmp_path / "eval" / "results.json").is_file()
    # the CLI: an official file is evaluated (one JSON line), then a hostile one stops it with one line, exit 2
    evil = str(official / "evil_os_system.pt")
    run = subprocess.run(
        [sys.executable, "-m", "mtdistill", "mult", "evaluate", str(path), evil, "--data", str(data), "--no-latency"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": ""},
    )
    assert run.returncode == 2 and run.stderr.startswith("error: ") and run.stderr.count("\n") == 1, run.stderr
    assert json.loads(run.stdout)["params"] == teacher.num_parameters()
    assert not (official.parent / "marker").exists()
