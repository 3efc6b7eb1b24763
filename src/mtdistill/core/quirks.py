"""Every quirk of the official VocaLiST / MTDVocaLiST code, gathered in one place.

The faithful value is the default: the official checkpoints and published numbers depend on it.
``Quirks(flag=False)`` (or the matching recipe ``quirks:`` key / ``evaluate --quirk NAME=VALUE``) gives the clean
behaviour of one flag, ``Quirks.clean()`` of all of them. One ``Quirks`` object travels through a run: the model,
the pair sampler, the losses, the validation F1, the best-checkpoint rule and the evaluation protocol all read
their flag from it. The few older keyword shortcuts (``utterance_accuracy(official_edges=False)``,
``MTDLoss(va_clamp=False)``) only switch one flag of that object off (see ``switched_off``).

Where each quirk comes from is written beside the flag; docs/distillation.md, docs/training.md and
docs/evaluation.md list them with their clean alternatives.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

from mtdistill.core.errors import UserError

KL_REDUCTIONS = ("mean", "batchmean")
"""Values of ``Quirks.kl_reduction``: 'mean' as released, 'batchmean' the per-row KL (clean)."""

_TRUE = ("true", "yes", "on", "1")
_FALSE = ("false", "no", "off", "0")


@dataclass(frozen=True)
class Quirks:
    data_dependent_pe: bool = True
    """Positional embedding is zero where channel 0 of the raw token is exactly 0 (official encoder).
    False: every token at time t gets position t+1."""

    va_future_mask: bool = True
    """The VA transformer keeps the leftover 'future' mask: -inf where j - i >= 1 + |Tk - Tq| (official model)."""

    va_cad_clamp: bool = True
    """MTD loss clamps the VA attention *logits* at min 1e-5 before softmax (official MTD loss).
    False: a masked KL that ignores the -inf entries instead."""

    kl_reduction: Literal["mean", "batchmean"] = "mean"
    """KLDivLoss reduction of the CAD/VR terms: 'mean' divides by B*H*Tq*Tk as released;
    'batchmean' gives the per-row KL averaged over B*H*Tq."""

    kl_log_of_softmax: bool = True
    """The CAD/VR KL takes the student's log-probabilities as ``softmax(x).log()`` (official MTD, MiniLM* and
    layer-selection losses). Where the softmax underflows to 0 the log is -inf: the term becomes inf, or NaN
    where the teacher's probability is 0 too. False: ``log_softmax(x)``, finite for any finite logits.
    (The official KD loss already uses log_softmax; this flag does not touch it.)"""

    kd_softmax_over_batch: bool = True
    """KD baseline takes the softmax of the scalar logits over the batch dimension at T=5 (official KD.py).
    False: a per-sample binary (sigmoid) KD."""

    fitnets_teacher_to_student: bool = True
    """The official FitNets regressor is Linear(teacher_dim -> student_dim) applied to the *teacher's* features,
    the reverse of the FitNets paper. False: the paper's regressor on the student, Linear(student -> teacher)."""

    eval_ifelif_edges: bool = True
    """Protocol masks zero-padded candidates with the official if/elif, so for N < 30 rows that are
    left-edge rows keep unmasked right-padding candidates. False: mask both sides."""

    eval_exclude_last_window: bool = True
    """Protocol uses N = min_length - 5 windows, dropping the last valid one (official test script)."""

    f1_logit_threshold: bool = True
    """Validation F1 predicts 'in sync' when the raw *logit* is > 0.5 (probability ~0.622), as the official
    training script does. False: probability > 0.5, i.e. logit > 0."""

    f1_mean_of_batches: bool = True
    """The epoch's validation F1 is the unweighted mean of the per-batch weighted F1s, so a short last batch
    counts as much as a full one (official training script). False: one weighted F1 over every prediction."""

    best_strictly_greater: bool = True
    """The best checkpoint is replaced only when the validation F1 is strictly greater than the best so far
    (official training script): on a tie the earlier epoch stays best. False: a tie moves it to the later epoch."""

    first_iteration_lr_zero: bool = True
    """The warm-up scheduler gives lr = 0 on the very first iteration (official scheduler)."""

    negatives_anywhere: bool = True
    """Training negatives are drawn anywhere in the utterance except the positive (official sampler).
    False: negatives within +-15 frames."""

    train_chunk_drop_last_frame: bool = True
    """A 3,200-sample training chunk gives 17 STFT frames; the 17th is dropped (official mel code)."""

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "kl_reduction":
                if value not in KL_REDUCTIONS:
                    raise UserError(f"quirk kl_reduction must be one of {', '.join(KL_REDUCTIONS)}, not {value!r}")
            elif not isinstance(value, bool):
                raise UserError(f"quirk {f.name} must be true or false, not {value!r}")

    @classmethod
    def names(cls) -> list[str]:
        """Every flag name, in declaration order."""
        return [f.name for f in fields(cls)]

    syncnet_jpeg_roundtrip: bool = True
    """SyncNet (`sync --model syncnet`) reads its inputs as syncnet_python's evaluate() does: every face crop
    goes through ffmpeg's default image2 JPEG (mjpeg encoder defaults) and back through OpenCV, and the audio
    is rounded to int16 samples. False: lossless crops and float audio (LSE differs by up to ~5e-2 relative)."""

    @classmethod
    def clean(cls) -> Quirks:
        """Every quirk off: the behaviour the papers describe."""
        flags: dict[str, Any] = {name: False for name in cls.names() if name != "kl_reduction"}
        return cls(**flags, kl_reduction="batchmean")

    def replace(self, **changes: object) -> Quirks:
        """A copy with some flags changed; unknown names and values of the wrong type are one-line errors."""
        unknown = sorted(set(changes) - set(self.names()))
        if unknown:
            raise UserError(f"unknown quirk flag(s) {unknown}; known: {', '.join(self.names())}")
        return Quirks(**{**self.as_dict(), **changes})

    def as_dict(self) -> dict[str, Any]:
        """Plain flag -> value mapping (what results.json and config.yaml record)."""
        return asdict(self)

    def with_assignments(self, assignments: Iterable[str], option: str = "--quirk") -> Quirks:
        """Apply ``NAME=VALUE`` texts (``evaluate --quirk``) in order; see ``parse_assignment``."""
        changes = dict(parse_assignment(text, option) for text in assignments)
        return self.replace(**changes)


FAITHFUL = Quirks()
"""The released behaviour; leaf functions take their defaults from here."""


def parse_assignment(text: str, option: str = "--quirk") -> tuple[str, object]:
    """``"va_cad_clamp=false"`` -> ("va_cad_clamp", False); booleans accept true/false, yes/no, on/off, 1/0."""
    name, sep, raw = text.partition("=")
    name, raw = name.strip(), raw.strip()
    if not sep or not name:
        raise UserError(f"{option} {text!r}: expected NAME=VALUE, e.g. {option} eval_ifelif_edges=false")
    if name not in Quirks.names():
        raise UserError(f"{option} {text!r}: unknown quirk {name!r}; known: {', '.join(Quirks.names())}")
    if name == "kl_reduction":
        if raw not in KL_REDUCTIONS:
            raise UserError(f"{option} {text!r}: kl_reduction takes {' or '.join(KL_REDUCTIONS)}, not {raw!r}")
        return name, raw
    if raw.lower() in _TRUE:
        return name, True
    if raw.lower() in _FALSE:
        return name, False
    raise UserError(f"{option} {text!r}: {name} takes true or false, not {raw!r}")


def resolve_quirks(quirks: Quirks | Mapping[str, object] | None) -> Quirks:
    """None -> the faithful flags; a mapping (a recipe's ``quirks:`` section) -> those flags over the faithful ones."""
    if quirks is None:
        return FAITHFUL
    if isinstance(quirks, Quirks):
        return quirks
    if isinstance(quirks, Mapping):
        return FAITHFUL.replace(**quirks)
    raise UserError(f"quirks must be a Quirks object or a mapping of flags, not {type(quirks).__name__}")


def switched_off(quirks: Quirks | Mapping[str, object] | None, **shortcuts: bool) -> Quirks:
    """The Quirks object with every flag whose shortcut argument is False turned off.

    The keyword shortcuts of the older public API (``official_edges``, ``va_clamp``) map onto one flag each:
    False is ``quirks.replace(flag=False)``, True leaves the object's own value, so a ``Quirks`` passed beside
    them always decides when the shortcut keeps its default.
    """
    resolved = resolve_quirks(quirks)
    off = {flag: False for flag, keep in shortcuts.items() if not keep}
    return resolved.replace(**off) if off else resolved
