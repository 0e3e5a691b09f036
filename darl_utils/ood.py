"""DASA's OOD scores of pool features against the training set (STUDY.md section 5). Higher = less covered.

- Mahalanobis: class means from train, one shared covariance with Ledoit-Wolf shrinkage, solved in float64;
  the score is the smallest squared distance over the classes.
- kNN: distance to the k-th nearest train feature after L2 normalisation, in chunks so that memory stays
  bounded however large train is.
- Each score becomes a percentile against id_val's scores, so the two are on one scale before combining.
"""
from __future__ import annotations

import numpy as np
import torch
from scipy.linalg import solve_triangular
from sklearn.covariance import LedoitWolf
from sklearn.metrics import roc_auc_score, roc_curve

COMBINATIONS = ("mean", "max", "mahalanobis", "knn")


class Mahalanobis:
    """Fitted on train features and labels; `score(x)` = min over classes of (x - mu_c)^T S^-1 (x - mu_c)."""

    def __init__(self, train_x: np.ndarray, train_y: np.ndarray):
        x, y = np.asarray(train_x, dtype=np.float64), np.asarray(train_y)
        self.classes = np.unique(y)
        self.means = np.stack([x[y == c].mean(0) for c in self.classes])
        centred = x - self.means[np.searchsorted(self.classes, y)]
        covariance = LedoitWolf(assume_centered=True).fit(centred).covariance_
        # Cholesky of the shrunk covariance: whitening by a triangular solve, no explicit inverse.
        self.cholesky = np.linalg.cholesky(covariance)

    def score(self, x: np.ndarray, chunk: int = 16_384) -> np.ndarray:
        out = np.empty(len(x), dtype=np.float64)
        for start in range(0, len(x), chunk):
            block = np.asarray(x[start:start + chunk], dtype=np.float64)
            best = np.full(len(block), np.inf)
            for mean in self.means:
                white = solve_triangular(self.cholesky, (block - mean).T, lower=True)
                best = np.minimum(best, (white ** 2).sum(0))
            out[start:start + chunk] = best
        return out


def l2_normalise(x) -> torch.Tensor:
    x = torch.as_tensor(np.asarray(x), dtype=torch.float32)
    return x / x.norm(dim=1, keepdim=True).clamp(min=1e-12)


def knn_distance(train_x: np.ndarray, x: np.ndarray, k: int = 50, query_chunk: int = 4096,
                 train_chunk: int = 65_536) -> np.ndarray:
    """Euclidean distance from each row of x to its k-th nearest train row, both L2-normalised.
    Memory: one query_chunk x train_chunk block of similarities at a time, plus the running top k."""
    if not 1 <= k <= len(train_x):
        raise ValueError(f"k: {k} must be in [1, {len(train_x)}] (the train size)")
    train = l2_normalise(train_x)
    out = np.empty(len(x), dtype=np.float64)
    for start in range(0, len(x), query_chunk):
        query = l2_normalise(x[start:start + query_chunk])
        top = None  # the k largest cosine similarities so far, per query
        for t in range(0, len(train), train_chunk):
            sims = query @ train[t:t + train_chunk].T
            candidates = sims if top is None else torch.cat([top, sims], 1)
            top = candidates.topk(min(k, candidates.shape[1]), dim=1).values
        kth = top[:, k - 1].double()
        out[start:start + query_chunk] = torch.sqrt((2 - 2 * kth).clamp(min=0)).numpy()
    return out


def percentile(reference: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Share of the reference scores (id_val) at or below each score, in [0, 100]."""
    ordered = np.sort(np.asarray(reference))
    return 100.0 * np.searchsorted(ordered, scores, side="right") / len(ordered)


def combine(mahalanobis_pct: np.ndarray, knn_pct: np.ndarray, how: str = "mean") -> np.ndarray:
    if how not in COMBINATIONS:
        raise ValueError(f"combination: {how!r} is not one of {list(COMBINATIONS)}")
    return {"mean": lambda: (mahalanobis_pct + knn_pct) / 2, "max": lambda: np.maximum(mahalanobis_pct, knn_pct),
            "mahalanobis": lambda: mahalanobis_pct, "knn": lambda: knn_pct}[how]()


def select_top(scores: np.ndarray, budget: int, seed: int = 0) -> np.ndarray:
    """Indices of the `budget` highest scores; ties broken by a seeded random order, so reruns agree."""
    if not 0 <= budget <= len(scores):
        raise ValueError(f"budget: {budget} must be in [0, {len(scores)}] (the pool size)")
    tiebreak = np.random.default_rng(seed).permutation(len(scores))
    order = np.lexsort((tiebreak, -np.asarray(scores)))
    return np.sort(order[:budget])


def detector_quality(scores_ood: np.ndarray, scores_id: np.ndarray) -> dict:
    """AUROC and FPR at 95 % TPR of a score for telling OOD (positive) from ID."""
    y = np.r_[np.ones(len(scores_ood)), np.zeros(len(scores_id))]
    s = np.r_[scores_ood, scores_id]
    fpr, tpr, _ = roc_curve(y, s)
    return {"auroc": float(roc_auc_score(y, s)), "fpr_at_95_tpr": float(fpr[np.searchsorted(tpr, 0.95)])}
