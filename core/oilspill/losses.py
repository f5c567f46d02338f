"""SAROSS-Net's training loss (paper Eq. 8-10): 1.0 CE + 0.5 soft Dice + 0.1 knowledge distillation.

Batches mix real samples (hard labels only) and SAR-JointNet samples (hard labels plus the teacher's soft
labels). A pixel carries a soft label when its teacher probabilities sum to ~1; real samples carry all-zero
soft labels, so KD averages over the generated pixels only.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from core.data.folder import IGNORE_INDEX

LOSS_WEIGHTS = (1.0, 0.5, 0.1)  # lambda_ce, lambda_dice, lambda_kd (paper, "empirically set")
KD_TEMPERATURE = 2.0            # the paper does not give T
DICE_SMOOTH = 1.0               # keeps Dice defined (= 1) for a class neither present nor predicted


def cross_entropy(logits: torch.Tensor, target: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Mean CE over non-ignored pixels; 0 (not NaN) when every pixel is ignored (an all-nodata crop)."""
    valid = (target != ignore_index).sum()
    return F.cross_entropy(logits, target, ignore_index=ignore_index, reduction="sum") / valid.clamp_min(1)


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """1 - mean over classes of the soft Dice of softmax(logits) against one-hot target, summed over the batch.

    Classes absent from the target still count, so predicting them is penalised.
    """
    classes = logits.shape[1]
    valid = (target != ignore_index).unsqueeze(1)
    probs = torch.softmax(logits, dim=1) * valid
    one_hot = F.one_hot(target.where(valid.squeeze(1), 0), classes).permute(0, 3, 1, 2).to(probs) * valid
    dims = (0, 2, 3)
    intersection = (probs * one_hot).sum(dims)
    cardinality = probs.sum(dims) + one_hot.sum(dims)
    dice = (2 * intersection + DICE_SMOOTH) / (cardinality + DICE_SMOOTH)
    return 1 - dice.mean()


def has_soft_label(teacher_probs: torch.Tensor) -> torch.Tensor:
    """(B, H, W) bool: the pixel carries teacher probabilities (real samples are stored as all zeros)."""
    return teacher_probs.sum(dim=1) > 0.5


def distillation_loss(student_logits: torch.Tensor, teacher_probs: torch.Tensor,
                      temperature: float = KD_TEMPERATURE) -> torch.Tensor:
    """T^2 * CE(softmax(teacher_logits / T), log_softmax(student / T)), mean over soft-labelled pixels (Eq. 9).

    teacher_logits = log(teacher_probs): equal to the teacher's logits up to a per-pixel constant, which the
    softmax cancels. T^2 keeps the gradient scale independent of T (Hinton et al.). 0 when no pixel has one.
    """
    probs = teacher_probs.float()
    labelled = has_soft_label(probs)
    teacher_logits = probs.clamp_min(torch.finfo(probs.dtype).tiny).log()
    q = torch.softmax(teacher_logits / temperature, dim=1)
    log_p = torch.log_softmax(student_logits.float() / temperature, dim=1)
    per_pixel = -(q * log_p).sum(dim=1)
    return temperature ** 2 * (per_pixel * labelled).sum() / labelled.sum().clamp_min(1)


def saross_loss(logits: torch.Tensor, target: torch.Tensor, teacher_probs: torch.Tensor | None = None,
                temperature: float = KD_TEMPERATURE, weights: tuple[float, float, float] = LOSS_WEIGHTS,
                ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """lambda_ce CE + lambda_dice soft Dice + lambda_kd KD (Eq. 10); KD only where soft labels exist."""
    w_ce, w_dice, w_kd = weights
    loss = w_ce * cross_entropy(logits, target, ignore_index) + w_dice * soft_dice_loss(logits, target, ignore_index)
    if teacher_probs is not None:
        loss = loss + w_kd * distillation_loss(logits, teacher_probs, temperature)
    return loss
