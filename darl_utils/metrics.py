"""Classification metrics over the three ordered degrees (STUDY.md section 6)."""
from __future__ import annotations

import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score

from .data import DEGREES

LABELS = list(range(len(DEGREES)))


def classification_metrics(y_true, y_pred) -> dict:
    """Macro-F1 (the headline F1), per-degree F1, accuracy and the confusion matrix (rows = true degree)."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    per_degree = f1_score(y_true, y_pred, labels=LABELS, average=None, zero_division=0)
    return {
        "n": int(len(y_true)),
        "macro_f1": float(f1_score(y_true, y_pred, labels=LABELS, average="macro", zero_division=0)),
        "f1_per_degree": {d: float(f) for d, f in zip(DEGREES, per_degree)},
        "accuracy": float(accuracy_score(y_true, y_pred)) if len(y_true) else 0.0,
        "confusion": confusion_matrix(y_true, y_pred, labels=LABELS).tolist(),
    }
