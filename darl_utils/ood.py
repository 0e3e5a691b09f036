"""DASA's OOD scores of pool features against the training set (docs/STUDY.md section 5). Higher = less covered.

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
from sklearn.metrics import roc_auc_score, roc_curve

COMBINATIONS = ("mean", "max", "mahalanobis", "knn")


class Mahalanobis:
    """Fitted on train features and labels; `score(x)` = min over classes of (x - mu_c)^T S^-1 (x - mu_c).

    S is the Ledoit-Wolf shrinkage of the pooled within-class covariance. It is accumulated in float64 over
    row chunks (two passes: means, then cross-products), so a 200,000 x 576 train set never exists in float64
    at once; the shrinkage follows sklearn's `ledoit_wolf_shrinkage` formula term by term (a test checks it).
    """

    def __init__(self, train_x: np.ndarray, train_y: np.ndarray, chunk: int = 16_384):
        y = np.asarray(train_y)
        self.classes, index = np.unique(y, return_inverse=True)
        width = train_x.shape[1]
        sums, counts = np.zeros((len(self.classes), width)), np.bincount(index, minlength=len(self.classes))
        for start in range(0, len(y), chunk):
            np.add.at(sums, index[start:start + chunk], np.asarray(train_x[start:start + chunk], np.float64))
        self.means = sums / counts[:, None]
        cross, fourth = np.zeros((width, width)), 0.0  # sum x x^T and sum ||x||^4 of the centred rows
        for start in range(0, len(y), chunk):
            block = np.asarray(train_x[start:start + chunk], np.float64) - self.means[index[start:start + chunk]]
            cross += block.T @ block
            fourth += float(((block ** 2).sum(1) ** 2).sum())
        covariance = ledoit_wolf_from_moments(cross, fourth, len(y))
        # Cholesky of the shrunk covariance: whitening by a triangular solve, no explicit inverse.
        self.cholesky = np.linalg.cholesky(covariance)
        self.white_means = solve_triangular(self.cholesky, self.means.T, lower=True).T

    def score(self, x: np.ndarray, chunk: int = 16_384) -> np.ndarray:
        out = np.empty(len(x), dtype=np.float64)
        for start in range(0, len(x), chunk):
            # L^-1 (x - mu) = L^-1 x - L^-1 mu: one solve per chunk, whatever the number of classes.
            white = solve_triangular(self.cholesky, np.asarray(x[start:start + chunk], np.float64).T, lower=True).T
            out[start:start + chunk] = np.min([((white - m) ** 2).sum(1) for m in self.white_means], axis=0)
        return out


def ledoit_wolf_from_moments(cross: np.ndarray, fourth: float, n: int) -> np.ndarray:
    """Ledoit-Wolf shrunk covariance of n centred rows from their moments: cross = X^T X, fourth = sum ||x_i||^4.
    The same estimate as sklearn's `ledoit_wolf(X, assume_centered=True)`, without holding X."""
    p = cross.shape[0]
    emp_cov = cross / n
    mu = np.trace(emp_cov) / p
    delta_ = float((emp_cov ** 2).sum())
    beta = (fourth / n - delta_) / (p * n)
    delta = (delta_ - 2.0 * mu * np.trace(emp_cov) + p * mu ** 2) / p
    beta = min(beta, delta)
    shrinkage = 0.0 if beta == 0 else beta / delta
    return (1.0 - shrinkage) * emp_cov + shrinkage * mu * np.eye(p)


def l2_normalise(x) -> torch.Tensor:
    x = torch.as_tensor(np.asarray(x), dtype=torch.float32)
    return x / x.norm(dim=1, keepdim=True).clamp(min=1e-12)


KNN_SEARCHES = ("auto", "exact", "ivf")
EXACT_PAIRS = 1_000_000_000  # "auto" searches exactly up to this many query x train pairs (~15 s on 2 cores)


def knn_distance(train_x: np.ndarray, x: np.ndarray, k: int = 50, search: str = "auto", nprobe: int = 8,
                 query_chunk: int = 4096, train_chunk: int = 65_536) -> np.ndarray:
    """Euclidean distance from each row of x to its k-th nearest train row, both L2-normalised.

    search "exact" compares every pair in chunks (memory: one query_chunk x train_chunk block at a time);
    "ivf" uses a faiss inverted-file index that scans `nprobe` of ~2 sqrt(n) cells per query, so a missed
    neighbour can only make the distance larger; "auto" is exact unless the pair count passes EXACT_PAIRS.
    """
    if not 1 <= k <= len(train_x):
        raise ValueError(f"k: {k} must be in [1, {len(train_x)}] (the train size)")
    if search not in KNN_SEARCHES:
        raise ValueError(f"knn search: {search!r} is not one of {list(KNN_SEARCHES)}")
    if search == "ivf" or (search == "auto" and len(train_x) * len(x) > EXACT_PAIRS):
        return _knn_ivf(train_x, x, k, nprobe)
    return _knn_exact(train_x, x, k, query_chunk, train_chunk)


def _knn_exact(train_x, x, k, query_chunk, train_chunk) -> np.ndarray:
    train = l2_normalise(train_x)
    out = np.empty(len(x), dtype=np.float64)
    for start in range(0, len(x), query_chunk):
        query = l2_normalise(x[start:start + query_chunk])
        top = None  # the k largest cosine similarities so far, per query
        for t in range(0, len(train), train_chunk):
            sims = query @ train[t:t + train_chunk].T
            candidates = sims if top is None else torch.cat([top, sims], 1)
            top = candidates.topk(min(k, candidates.shape[1]), dim=1).values
        out[start:start + query_chunk] = _chord(top[:, k - 1].numpy())
    return out


def _knn_ivf(train_x, x, k, nprobe, seed: int = 0) -> np.ndarray:
    import faiss  # only this path needs it

    train = l2_normalise(train_x).numpy()
    cells = max(1, min(int(2 * np.sqrt(len(train))), len(train) // 39))  # faiss wants ~39 rows per cell to train
    index = faiss.IndexIVFFlat(faiss.IndexFlatIP(train.shape[1]), train.shape[1], cells, faiss.METRIC_INNER_PRODUCT)
    index.cp.niter, index.cp.seed = 10, seed
    sample = np.random.default_rng(seed).permutation(len(train))[:64 * cells]
    index.train(train[np.sort(sample)])
    index.add(train)
    index.nprobe = min(nprobe, cells)
    sims, found = index.search(l2_normalise(x).numpy(), k)
    kth = np.where(found[:, k - 1] >= 0, sims[:, k - 1], -1.0)  # fewer than k found: as far as can be
    return _chord(kth)


def _chord(cosine: np.ndarray) -> np.ndarray:
    """Euclidean distance between unit vectors from their cosine similarity."""
    return np.sqrt(np.clip(2.0 - 2.0 * np.asarray(cosine, dtype=np.float64), 0.0, None))


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
