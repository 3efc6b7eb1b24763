"""Distillation losses (one function per paper equation), loss weighting, and the loss registry.

``build_loss(name, **kwargs)`` builds any registered loss ("bce", "kd", "rkd", "minilm", "fitnets", "nmtd",
"aw", "mtd", and the MulT losses registered from crd.py / edam.py); ``MTDLoss`` is the paper's method.
"""

from mtdistill.distill.registry import LOSSES, build_loss, register  # noqa: I001  (registry before the losses)
from mtdistill.distill.behaviour import (
    cad_loss,
    cross_attention_distribution,
    masked_kl_teacher_student,
    kl_teacher_student,
    value_relation,
    vr_loss,
)
from mtdistill.distill.losses import (
    AWLoss,
    BCELoss,
    DistillLoss,
    FitNetsLoss,
    KDLoss,
    MiniLMLoss,
    MTDLoss,
    NMTDLoss,
    RKDLoss,
    parse_layers,
)
from mtdistill.distill.weighting import automatic_weighting, uncertainty_weighting, uniform_weighting
from mtdistill.distill.registry import _ensure_builtin

_ensure_builtin()  # the MulT losses (mult_objective, crd, edam) register themselves too

__all__ = [
    "LOSSES",
    "AWLoss",
    "BCELoss",
    "DistillLoss",
    "FitNetsLoss",
    "KDLoss",
    "MTDLoss",
    "MiniLMLoss",
    "NMTDLoss",
    "RKDLoss",
    "automatic_weighting",
    "build_loss",
    "cad_loss",
    "cross_attention_distribution",
    "kl_teacher_student",
    "masked_kl_teacher_student",
    "parse_layers",
    "register",
    "uncertainty_weighting",
    "uniform_weighting",
    "value_relation",
    "vr_loss",
]
