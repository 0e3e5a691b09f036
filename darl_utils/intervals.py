"""Paired bootstrap confidence intervals for metric(A) - metric(B) over test queries (docs/STUDY.md section 6).

Method: within each seed, draw that seed's distinct queries with replacement (as many as it has), take every pair
of each drawn query (with multiplicity) and compute metric(A) - metric(B) on that one resample, the same resample
for both models (paired). Queries, not pairs, are the unit because the pairs of one query share its text and its
candidate products, so their errors are correlated: resampling pairs would treat them as independent and give too
narrow an interval. Seeds have their own test pairs (the split changes with the seed); they pool by averaging: the
statistic of resample b is the mean over seeds of the per-seed differences, the estimate is the mean of the observed
differences, and the 95 % interval is the 2.5th and 97.5th percentiles of the resampled statistic.

Speed: every metric is a function of per-pair sums (confusion counts, per-bin calibration gaps, ...), so a resample
is a vector of query weights (how often each query was drawn) and all resamples are one matrix product.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import pandas as pd
import torch

from .metrics import ECE_BINS, LABELS, entropy

N_CLASSES = len(LABELS)
RESAMPLES = 1000
LEVEL = 0.95
# torchmetrics bins the float32 top probability against torch.linspace's float32 edges (which differ from
# np.linspace's in the last bit for 7 of 16) with torch.bucketize(right=True): a bin is [lo, hi), and a confidence
# of exactly 1.0 (common for a sure model's float32 softmax) gets a bin of its own. Doing the same here is what
# makes the ECE match torchmetrics at the edges, not only on random data.
_ECE_EDGES = torch.linspace(0, 1, ECE_BINS + 1, dtype=torch.float32).numpy()
_BLOCK = 4_000_000  # weights held at once (resamples x queries), about 32 MB of float64


# ---------------------------------------------------------------------------------------------------- the metrics
@dataclass(frozen=True)
class Metric:
    """A metric written as per-pair statistics (n x k) that are summed, then turned into the value by `total`
    ((..., k) sums -> (...) values). Calling it on (probs, labels) gives the plain metric as a float."""
    name: str
    per_pair: Callable[[np.ndarray, np.ndarray], np.ndarray]
    total: Callable[[np.ndarray], np.ndarray]

    def __call__(self, probs, labels) -> float:
        probs, labels = np.asarray(probs, dtype=np.float64), np.asarray(labels, dtype=np.int64)
        return float(self.total(self.per_pair(probs, labels).sum(0)))


def _with_count(values: np.ndarray) -> np.ndarray:
    return np.stack([values.astype(np.float64), np.ones(len(values))], 1)


def _mean(sums: np.ndarray) -> np.ndarray:
    return sums[..., 0] / sums[..., 1]


def _confusion_cells(probs, labels) -> np.ndarray:
    """One-hot of the confusion cell (true degree, predicted degree) of every pair."""
    cell = labels * N_CLASSES + probs.argmax(1)
    return np.eye(N_CLASSES * N_CLASSES)[cell]


def _macro_f1(cells: np.ndarray) -> np.ndarray:
    """Macro-F1 from confusion counts; a degree neither true nor predicted scores 0 (sklearn's zero_division=0)."""
    confusion = cells.reshape(*cells.shape[:-1], N_CLASSES, N_CLASSES)
    hits = np.diagonal(confusion, axis1=-2, axis2=-1)
    both = confusion.sum(-1) + confusion.sum(-2)  # true + predicted of each degree = 2 tp + fp + fn
    f1 = np.divide(2 * hits, both, out=np.zeros(hits.shape), where=both > 0)
    return f1.mean(-1)


def _calibration_gaps(probs, labels) -> np.ndarray:
    """Per pair: (correct - confidence) in the column of its confidence bin, and a count column. Summed, a bin's
    |sum| / n is its weight times |accuracy - confidence|, so the ECE is one sum over bins."""
    conf = probs.max(1)
    which = np.searchsorted(_ECE_EDGES, conf.astype(np.float32), side="right") - 1
    out = np.zeros((len(conf), ECE_BINS + 2))
    out[np.arange(len(conf)), which] = (probs.argmax(1) == labels) - conf
    out[:, -1] = 1.0
    return out


def _ece(sums: np.ndarray) -> np.ndarray:
    return np.abs(sums[..., :-1]).sum(-1) / sums[..., -1]


METRICS: dict[str, Metric] = {m.name: m for m in (
    Metric("macro_f1", _confusion_cells, _macro_f1),
    Metric("ece", _calibration_gaps, _ece),
    Metric("entropy", lambda p, y: _with_count(entropy(p)), _mean),
    Metric("accuracy", lambda p, y: _with_count(p.argmax(1) == y), _mean),
    Metric("confidence", lambda p, y: _with_count(p.max(1)), _mean),
    # mean top probability minus accuracy: above zero, a model is surer than it is right (claim 1)
    Metric("overconfidence", lambda p, y: _with_count(p.max(1) - (p.argmax(1) == y)), _mean),
)}


# ------------------------------------------------------------------------------------------------------ the inputs
def _query_codes(queries, n: int) -> np.ndarray:
    """Queries (hashables or int codes) as codes 0..Q-1."""
    # a list of tuples would become a 2-d array: keep arbitrary hashables as one object column
    values = queries if isinstance(queries, (np.ndarray, pd.Series, pd.Index)) else pd.Series(list(queries),
                                                                                             dtype=object)
    if np.ndim(values) != 1 or len(values) != n:
        raise ValueError(f"queries must be one per pair: expected {n}, got shape {np.shape(values)}")
    codes, _ = pd.factorize(values)
    if (codes < 0).any():
        raise ValueError("queries contain missing values (NaN / None)")
    return codes


def _check_probs(name: str, probs, n: int) -> np.ndarray:
    probs = np.asarray(probs, dtype=np.float64)
    if probs.shape != (n, N_CLASSES):
        raise ValueError(f"{name} must be (pairs, {N_CLASSES}) = ({n}, {N_CLASSES}), got {probs.shape}: "
                         "both models must score the same test pairs")
    if not np.isfinite(probs).all() or (probs < 0).any() or (probs > 1).any():
        raise ValueError(f"{name} must be probabilities in [0, 1] (apply softmax to logits first)")
    return probs


@dataclass(frozen=True)
class SeedPredictions:
    """One seed's test pairs and both models' probabilities on them, in the same order. `labels_b`, when given
    (the gold labels stored with model B's predictions), must equal `labels`: a cheap check that the rows are the
    same pairs. Arrays are validated and converted on construction; ValueError says what does not match."""
    labels: np.ndarray
    queries: Sequence
    probs_a: np.ndarray
    probs_b: np.ndarray
    labels_b: np.ndarray | None = None
    query_codes: np.ndarray = field(init=False, repr=False)

    def __post_init__(self):
        labels = np.asarray(self.labels)
        if labels.ndim != 1 or len(labels) == 0:
            raise ValueError(f"labels must be a non-empty 1-d array, got shape {labels.shape}")
        if not np.isin(labels, LABELS).all():
            unknown = sorted(set(labels.tolist()) - set(LABELS))
            raise ValueError(f"labels must be degrees {LABELS}, got values {unknown}")
        n = len(labels)
        set_ = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731 (frozen dataclass)
        set_("labels", labels.astype(np.int64))
        set_("probs_a", _check_probs("probs_a", self.probs_a, n))
        set_("probs_b", _check_probs("probs_b", self.probs_b, n))
        set_("query_codes", _query_codes(self.queries, n))
        if self.labels_b is not None:
            other = np.asarray(self.labels_b)
            if other.shape != labels.shape or (other != labels).any():
                where = "a different count" if other.shape != labels.shape else f"{int((other != labels).sum())} pairs"
                raise ValueError(f"labels_b differs from labels ({where}): model B was not scored on the same pairs")

    @property
    def n_queries(self) -> int:
        return int(self.query_codes.max()) + 1


# ----------------------------------------------------------------------------------------------------- the result
@dataclass(frozen=True)
class Difference:
    """metric(A) - metric(B): the estimate and its 95 % paired-bootstrap interval [low, high]."""
    metric: str
    estimate: float
    low: float
    high: float
    resamples: int
    queries: int  # total over seeds
    seeds: int

    def side(self) -> str:
        """Where the interval lies relative to zero: "above", "below" or "contains zero"."""
        return "above" if self.low > 0 else "below" if self.high < 0 else "contains zero"

    def text(self, digits: int = 3) -> str:
        """E.g. "+0.021 [+0.004, +0.038]"."""
        f = lambda x: f"{x + 0.0:+.{digits}f}"  # noqa: E731 (+ 0.0 turns -0.0 into 0.0)
        return f"{f(self.estimate)} [{f(self.low)}, {f(self.high)}]"


def verdict_word(diff: Difference, better: str = "higher") -> str:
    """Whether "A is better than B" holds, where better means a `higher` (F1, accuracy) or `lower` (ECE) metric:
    "holds" when the interval lies entirely on the claimed side of zero, "does not hold" when entirely on the other
    side, "not distinguishable" when it contains zero."""
    if better not in ("higher", "lower"):
        raise ValueError(f"better must be 'higher' or 'lower', got {better!r}")
    claimed, other = ("above", "below") if better == "higher" else ("below", "above")
    side = diff.side()
    return "holds" if side == claimed else "does not hold" if side == other else "not distinguishable"


# -------------------------------------------------------------------------------------------------- the bootstrap
def _per_query(metric: Metric, probs: np.ndarray, s: SeedPredictions) -> np.ndarray:
    """Per-query sums of the metric's per-pair statistics (queries x k)."""
    stats = metric.per_pair(probs, s.labels)
    out = np.zeros((s.n_queries, stats.shape[1]))
    np.add.at(out, s.query_codes, stats)
    return out


def _resampled(metric: Metric, s: SeedPredictions, resamples: int, rng: np.random.Generator,
               models: tuple = ("a", "b")) -> np.ndarray:
    """metric(A) - metric(B) on each of `resamples` query resamples of one seed (metric(A) alone when `models`
    is ("a",)). A and B go through the same operations on the same weights, so identical predictions give exact
    zeros."""
    stats = [_per_query(metric, getattr(s, f"probs_{m}"), s) for m in models]
    q = s.n_queries
    out = []
    for start in range(0, resamples, max(1, _BLOCK // q)):
        rows = min(resamples - start, max(1, _BLOCK // q))
        draws = rng.integers(0, q, size=(rows, q))
        # weight of query j in resample r = how many times it was drawn
        weights = np.bincount((np.arange(rows)[:, None] * q + draws).ravel(), minlength=rows * q)
        weights = weights.reshape(rows, q).astype(np.float64)
        values = [metric.total(weights @ x) for x in stats]
        out.append(values[0] - values[1] if len(values) == 2 else values[0])
    return np.concatenate(out)


def _pooled(seeds, metric: str, resamples: int, rng, models: tuple = ("a", "b")) -> tuple[float, np.ndarray]:
    """The observed statistic pooled over seeds (their mean) and its resampled values."""
    seeds = [seeds] if isinstance(seeds, SeedPredictions) else list(seeds)
    if not seeds:
        raise ValueError("no seeds given")
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; known: {sorted(METRICS)}")
    if resamples < 1:
        raise ValueError(f"resamples must be >= 1, got {resamples}")
    m = METRICS[metric]
    value = lambda s: m(s.probs_a, s.labels) - (m(s.probs_b, s.labels) if len(models) == 2 else 0.0)  # noqa: E731
    observed = float(np.mean([value(s) for s in seeds]))
    return observed, np.mean([_resampled(m, s, resamples, rng, models) for s in seeds], axis=0)


def _difference(metric: str, observed: float, statistic: np.ndarray, groups: list) -> Difference:
    tail = 100 * (1 - LEVEL) / 2
    low, high = np.percentile(statistic, [tail, 100 - tail])
    seeds = [s for g in groups for s in ([g] if isinstance(g, SeedPredictions) else g)]
    return Difference(metric, observed, float(low), float(high), len(statistic), sum(s.n_queries for s in seeds),
                      len(seeds))


def paired_difference(seeds: SeedPredictions | Sequence[SeedPredictions], metric: str,
                      resamples: int = RESAMPLES, seed: int = 0) -> Difference:
    """metric(A) - metric(B) pooled over seeds, with the 95 % paired bootstrap interval over test queries
    (see the module docstring). `seed` seeds the numpy Generator: the same call gives the same interval."""
    observed, statistic = _pooled(seeds, metric, resamples, np.random.default_rng(seed))
    return _difference(metric, observed, statistic, [seeds])


def paired_mean_difference(parts: Sequence[Sequence[SeedPredictions]], metric: str, resamples: int = RESAMPLES,
                           seed: int = 0) -> Difference:
    """The mean over several test parts (ID and OOD: their queries are disjoint, so each is resampled on its
    own) of metric(A) - metric(B), with its interval: claim 2's balance of ID and OOD."""
    rng = np.random.default_rng(seed)
    pooled = [_pooled(p, metric, resamples, rng) for p in parts]
    return _difference(metric, float(np.mean([o for o, _ in pooled])), np.mean([s for _, s in pooled], axis=0),
                       list(parts))


def model_interval(seeds: SeedPredictions | Sequence[SeedPredictions], metric: str, resamples: int = RESAMPLES,
                   seed: int = 0) -> Difference:
    """metric(A) alone (probs_b is ignored) with its bootstrap interval over test queries: a one-model claim,
    such as over-confidence above zero."""
    observed, statistic = _pooled(seeds, metric, resamples, np.random.default_rng(seed), models=("a",))
    return _difference(metric, observed, statistic, [seeds])
