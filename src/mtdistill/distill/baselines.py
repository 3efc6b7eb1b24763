"""The baseline distillation losses of Table 1 (design.md §2.5): KD, RKD and FitNets hints, as plain functions.

The loss *modules* that combine them with BCE live in ``mtdistill.distill.losses``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

KD_TEMPERATURE = 5.0
RKD_DISTANCE_WEIGHT = 25.0
RKD_ANGLE_WEIGHT = 50.0
FITNETS_BETA = 100.0


def kd_over_batch(student_logits: Tensor, teacher_logits: Tensor, temperature: float = KD_TEMPERATURE) -> Tensor:
    """Hinton KD as released (design.md §2.5): T^2 * KL(softmax(t/T) || softmax(s/T)), softmax over the BATCH (dim 0).

    The scalar sync logits of the batch form one distribution; 'batchmean' divides the sum by B.
    """
    log_student = torch.log_softmax(student_logits.float() / temperature, dim=0)
    teacher = torch.softmax(teacher_logits.detach().float() / temperature, dim=0)
    return F.kl_div(log_student, teacher, reduction="batchmean") * temperature**2


def kd_binary(student_logits: Tensor, teacher_logits: Tensor, temperature: float = KD_TEMPERATURE) -> Tensor:
    """Per-sample binary KD (the clean variant): T^2 * mean_b KL(Bern(sigmoid(t_b/T)) || Bern(sigmoid(s_b/T)))."""
    s = student_logits.float() / temperature
    t = teacher_logits.detach().float() / temperature
    p_t = torch.sigmoid(t)
    # log-sigmoid forms keep the KL finite for large |logits|
    kl = p_t * (F.logsigmoid(t) - F.logsigmoid(s)) + (1 - p_t) * (F.logsigmoid(-t) - F.logsigmoid(-s))
    return kl.mean() * temperature**2


def _pairwise_distances(x: Tensor, eps: float = 1e-12) -> Tensor:
    """(B, D) -> (B, B) Euclidean distances, differentiable at 0 (the diagonal)."""
    squared = x.pow(2).sum(1)
    d2 = (squared[:, None] + squared[None, :] - 2 * x @ x.T).clamp(min=eps)
    d = d2.sqrt()
    return d * (1 - torch.eye(len(x), device=x.device, dtype=x.dtype))


def _mean_normalised(d: Tensor) -> Tensor:
    """Divide distances by their mean over the off-diagonal pairs (RKD's scale normalisation)."""
    off_diagonal = ~torch.eye(len(d), dtype=torch.bool, device=d.device)
    return d / d[off_diagonal].mean()


def rkd_distance_loss(student_features: Tensor, teacher_features: Tensor) -> Tensor:
    """RKD distance-wise loss: smooth-L1 between mean-normalised pairwise distances (features (B, D))."""
    with torch.no_grad():
        teacher = _mean_normalised(_pairwise_distances(teacher_features.float()))
    student = _mean_normalised(_pairwise_distances(student_features.float()))
    return F.smooth_l1_loss(student, teacher)


def _angles(x: Tensor) -> Tensor:
    """(B, D) -> (B, B, B): cos of the angle at anchor j between i and k, <e_ji, e_jk>, e = unit difference."""
    unit = F.normalize(x[None, :, :] - x[:, None, :], p=2, dim=2)  # unit[j, i] = (x_i - x_j) / |x_i - x_j|
    return unit @ unit.transpose(1, 2)


def rkd_angle_loss(student_features: Tensor, teacher_features: Tensor) -> Tensor:
    """RKD angle-wise loss: smooth-L1 between the cosines of all triplet angles (features (B, D))."""
    with torch.no_grad():
        teacher = _angles(teacher_features.float())
    return F.smooth_l1_loss(_angles(student_features.float()), teacher)


def rkd_loss(
    student_features: Tensor,
    teacher_features: Tensor,
    distance_weight: float = RKD_DISTANCE_WEIGHT,
    angle_weight: float = RKD_ANGLE_WEIGHT,
) -> tuple[Tensor, Tensor]:
    """RKD (Park et al. 2019) with the released defaults w_d = 25, w_a = 50; returns (distance, angle) weighted.

    Features are flattened per sample, so teacher and student widths may differ. A batch of one sample
    has no relations: both terms are 0 (rather than NaN).
    """
    s = student_features.flatten(1)
    t = teacher_features.flatten(1)
    if len(s) < 2:
        zero = s.sum() * 0.0
        return zero, zero
    return distance_weight * rkd_distance_loss(s, t), angle_weight * rkd_angle_loss(s, t)


def fitnets_hint_loss(prediction: Tensor, target: Tensor, beta: float = FITNETS_BETA) -> Tensor:
    """FitNets hint loss: beta * MSE. Released: prediction = student features, target = regressor(teacher)
    (a teacher->student regressor, the reverse of the original FitNets); classic: regressor(student) vs teacher.
    """
    return F.mse_loss(prediction.float(), target.float()) * beta
