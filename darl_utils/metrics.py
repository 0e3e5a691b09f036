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


def _top_k_dcg(codes: np.ndarray, order_key: np.ndarray, gain: np.ndarray, k: int) -> np.ndarray:
    """Per query code: the DCG@k of its items taken in ascending `order_key` (ties: the original order)."""
    order = np.lexsort((np.arange(len(codes)), order_key, codes))
    ranked_codes = codes[order]
    starts = np.flatnonzero(np.r_[True, ranked_codes[1:] != ranked_codes[:-1]])
    rank = np.arange(len(codes)) - np.repeat(starts, np.diff(np.r_[starts, len(codes)]))
    top = rank < k
    return np.bincount(ranked_codes[top], gain[order][top] / np.log2(rank[top] + 2), minlength=codes.max() + 1)


def ndcg_at_k(queries, probs, labels, k: int = NDCG_K) -> dict:
    """Mean nDCG@k over queries (docs/STUDY.md section 6): each query's items ranked by expected relevance
    (probabilities times gains 0 / 1 / 2), against the ideal order of their gold gains; DCG sums
    gain / log2(rank + 1). Only queries whose items have at least two different degrees count: with one degree
    every order is ideal and says nothing. Vectorised: one sort for all queries, not a loop over them."""
    codes = pd.factorize(np.asarray(queries))[0]
    if len(codes) == 0:
        return {f"ndcg@{k}": float("nan"), "queries": 0}
    gain = GAINS[np.asarray(labels)]
    lowest, highest = np.full(codes.max() + 1, np.inf), np.full(codes.max() + 1, -np.inf)
    np.minimum.at(lowest, codes, gain)
    np.maximum.at(highest, codes, gain)
    informative = highest > lowest
    dcg = _top_k_dcg(codes, -(np.asarray(probs, dtype=np.float64) @ GAINS), gain, k)[informative]
    ideal = _top_k_dcg(codes, -gain, gain, k)[informative]
    value = float(np.mean(dcg / ideal)) if informative.any() else float("nan")
    return {f"ndcg@{k}": value, "queries": int(informative.sum())}


def evaluate_logits(logits, labels, queries=None) -> dict:
    """Everything reported for one model on one part: classification metrics plus `confidence`, and `ranking`
    (nDCG@10) when the queries are given."""
    probs = softmax(logits)
    out = {**classification_metrics(labels, probs.argmax(1)), "confidence": confidence_metrics(probs, labels)}
    if queries is not None:
        out["ranking"] = ndcg_at_k(queries, probs, labels)
    return out
