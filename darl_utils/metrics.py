"""Metrics over the three ordered degrees (docs/STUDY.md section 6): classification and confidence."""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score

from .data import DEGREES

LABELS = list(range(len(DEGREES)))
ECE_BINS = 15  # equal-width confidence bins
NDCG_K = 10  # ranking depth of nDCG
GAINS = np.arange(len(DEGREES), dtype=np.float64)  # gain of a degree = its index: irrelevant 0, weak 1, strong 2


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


def softmax(logits) -> np.ndarray:
    return torch.softmax(torch.as_tensor(np.asarray(logits), dtype=torch.float64), -1).numpy()


def entropy(probs) -> np.ndarray:
    """Predictive entropy in nats per sample (0 = certain, ln 3 = 1.0986 = uniform over the degrees)."""
    p = np.asarray(probs, dtype=np.float64)
    return -(p * np.log(np.clip(p, 1e-12, 1))).sum(1)


def expected_calibration_error(probs, labels, bins: int = ECE_BINS) -> float:
    """Top-label ECE, equal-width bins, from torchmetrics (a maintained reference implementation)."""
    if len(labels) == 0:
        return float("nan")
    from torchmetrics.functional.classification import multiclass_calibration_error
    return float(multiclass_calibration_error(torch.as_tensor(np.asarray(probs), dtype=torch.float32),
                                              torch.as_tensor(np.asarray(labels)), num_classes=len(DEGREES),
                                              n_bins=bins, norm="l1"))


def reliability(probs, labels, bins: int = ECE_BINS) -> dict:
    """Per confidence bin: mean confidence, accuracy and count (the reliability diagram's data). Our own:
    torchmetrics returns only the ECE, not the bins. Same binning as torchmetrics (bins are (lo, hi])."""
    p, y = np.asarray(probs), np.asarray(labels)
    conf, correct = p.max(1), (p.argmax(1) == y)
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, bins - 1)
    count = np.bincount(which, minlength=bins)
    with np.errstate(invalid="ignore"):
        mean_conf = np.bincount(which, conf, bins) / count
        accuracy = np.bincount(which, correct, bins) / count
    nan_to_none = lambda a: [None if np.isnan(v) else float(v) for v in a]  # noqa: E731 (JSON has no NaN)
    return {"edges": edges.tolist(), "confidence": nan_to_none(mean_conf), "accuracy": nan_to_none(accuracy),
            "count": count.tolist()}


def _confidence_summary(p: np.ndarray, y: np.ndarray) -> dict:
    if len(y) == 0:
        return {"n": 0}
    p_gold = p[np.arange(len(y)), y]
    onehot = np.eye(p.shape[1])[y]
    return {"n": int(len(y)), "entropy": float(entropy(p).mean()), "confidence": float(p.max(1).mean()),
            "nll": float(-np.log(np.clip(p_gold, 1e-12, 1)).mean()),
            "brier": float(((p - onehot) ** 2).sum(1).mean()),
            "ece": expected_calibration_error(p, y)}


def confidence_metrics(probs, labels) -> dict:
    """Entropy, mean top probability, NLL, Brier (sum over degrees) and ECE overall and per true degree,
    plus the reliability diagram's bins."""
    p, y = np.asarray(probs, dtype=np.float64), np.asarray(labels)
    return {**_confidence_summary(p, y),
            "per_degree": {d: _confidence_summary(p[y == i], y[y == i]) for i, d in enumerate(DEGREES)},
            "reliability": reliability(p, y)}


def ndcg_at_k(queries, probs, labels, k: int = NDCG_K) -> dict:
    """Mean nDCG@k over queries (docs/STUDY.md section 6): each query's items ranked by expected relevance
    (probabilities times gains 0 / 1 / 2), against the ideal order of their gold gains; DCG sums
    gain / log2(rank + 1). Only queries whose items have at least two different degrees count: with one degree
    every order is ideal and says nothing."""
    frame = pd.DataFrame({"query": np.asarray(queries), "score": np.asarray(probs, dtype=np.float64) @ GAINS,
                          "gain": GAINS[np.asarray(labels)]})
    discount = 1 / np.log2(np.arange(2, k + 2))
    values = []
    for _, items in frame.groupby("query", sort=False):
        if items["gain"].nunique() < 2:
            continue
        ranked = items["gain"].to_numpy()[np.argsort(-items["score"].to_numpy(), kind="stable")][:k]
        ideal = np.sort(items["gain"].to_numpy())[::-1][:k]
        values.append((ranked * discount[:len(ranked)]).sum() / (ideal * discount[:len(ideal)]).sum())
    return {f"ndcg@{k}": float(np.mean(values)) if values else float("nan"), "queries": len(values)}


def evaluate_logits(logits, labels, queries=None) -> dict:
    """Everything reported for one model on one part: classification metrics plus `confidence`, and `ranking`
    (nDCG@10) when the queries are given."""
    probs = softmax(logits)
    out = {**classification_metrics(labels, probs.argmax(1)), "confidence": confidence_metrics(probs, labels)}
    if queries is not None:
        out["ranking"] = ndcg_at_k(queries, probs, labels)
    return out
