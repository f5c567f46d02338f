"""Confusion-matrix metrics for class maps: per-class IoU and F1, and their means."""
from __future__ import annotations

import numpy as np
import torch


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, n_classes: int, ignore_index: int = -100
                     ) -> torch.Tensor:
    """(n_classes, n_classes) counts, rows = truth, columns = prediction."""
    keep = target != ignore_index
    idx = target[keep].long() * n_classes + pred[keep].long()
    return torch.bincount(idx, minlength=n_classes ** 2).reshape(n_classes, n_classes)


def scores(confusion: np.ndarray | torch.Tensor, class_names: list[str]) -> dict[str, float]:
    """IoU and F1 per class (NaN where a class never occurs nor is predicted) and their means."""
    cm = np.asarray(confusion, dtype=np.float64)
    tp = np.diag(cm)
    fp, fn = cm.sum(0) - tp, cm.sum(1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = tp / (tp + fp + fn)
        f1 = 2 * tp / (2 * tp + fp + fn)
    out = {"mIoU": float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan"),
           "mF1": float(np.nanmean(f1)) if np.isfinite(f1).any() else float("nan"),
           "accuracy": float(tp.sum() / max(cm.sum(), 1))}
    for name, i, f in zip(class_names, iou, f1):
        out[f"IoU/{name}"] = float(i)
        out[f"F1/{name}"] = float(f)
    return out


def change_scores(confusion) -> dict[str, float]:
    """IoU, F1, precision and recall of the change class and overall accuracy (NaN where undefined)."""
    cm = np.asarray(confusion, dtype=np.float64)
    tp, fp, fn = cm[1, 1], cm[0, 1], cm[1, 0]

    def ratio(num, den):
        return float(num / den) if den > 0 else float("nan")
    return {"IoU": ratio(tp, tp + fp + fn), "F1": ratio(2 * tp, 2 * tp + fp + fn), "precision": ratio(tp, tp + fp),
            "recall": ratio(tp, tp + fn), "accuracy": ratio(np.trace(cm), cm.sum())}
