"""nDCG@10 (docs/STUDY.md section 6) against scikit-learn's ndcg_score, query by query."""
import numpy as np
import pytest
from sklearn.metrics import ndcg_score

from darl_utils.metrics import GAINS, evaluate_logits, ndcg_at_k


def test_ndcg_equals_sklearn_per_query_mean():
    rng = np.random.default_rng(0)
    queries = np.repeat([f"q{i}" for i in range(40)], rng.integers(2, 25, 40))
    labels = rng.integers(0, 3, len(queries))
    probs = rng.dirichlet(np.ones(3), len(queries))
    expected = []
    for q in np.unique(queries):
        at = queries == q
        if len(set(labels[at])) > 1:
            expected.append(ndcg_score([GAINS[labels[at]]], [probs[at] @ GAINS], k=10))
    got = ndcg_at_k(queries, probs, labels)
    assert got["queries"] == len(expected) > 20
    assert got["ndcg@10"] == pytest.approx(np.mean(expected), rel=1e-9)


def test_ndcg_perfect_reversed_and_uninformative_queries():
    queries = ["a"] * 4 + ["b"] * 3 + ["c"]  # b has one degree only, c one item: neither counts
    labels = np.array([2, 1, 0, 0, 1, 1, 1, 2])
    right = np.eye(3)[labels]
    assert ndcg_at_k(queries, right, labels) == {"ndcg@10": 1.0, "queries": 1}
    wrong = np.eye(3)[2 - labels]
    reversed_order = ndcg_at_k(queries, wrong, labels)["ndcg@10"]
    ideal = 2 + 1 / np.log2(3)
    assert reversed_order == pytest.approx((1 / np.log2(4) + 2 / np.log2(5)) / ideal)
    assert np.isnan(ndcg_at_k(["b"] * 3, right[4:7], labels[4:7])["ndcg@10"])


def test_evaluate_logits_reports_ranking_only_with_queries():
    logits = np.array([[0.0, 0.0, 3.0], [3.0, 0.0, 0.0], [0.0, 3.0, 0.0]])
    labels = np.array([2, 0, 1])
    assert "ranking" not in evaluate_logits(logits, labels)
    assert evaluate_logits(logits, labels, np.array(["q"] * 3))["ranking"]["ndcg@10"] == 1.0


def _ndcg_loop(queries, probs, labels, k=10):
    """The former per-query loop, kept as the reference for the vectorised version (ties: original order)."""
    scores, gains = np.asarray(probs) @ GAINS, GAINS[np.asarray(labels)]
    discount = 1 / np.log2(np.arange(2, k + 2))
    values = []
    for q in dict.fromkeys(queries):
        at = np.flatnonzero(np.asarray(queries) == q)
        if len(set(gains[at])) < 2:
            continue
        ranked = gains[at][np.argsort(-scores[at], kind="stable")][:k]
        ideal = np.sort(gains[at])[::-1][:k]
        values.append((ranked * discount[:len(ranked)]).sum() / (ideal * discount[:len(ideal)]).sum())
    return float(np.mean(values)), len(values)


@pytest.mark.parametrize("seed", range(3))
def test_vectorised_ndcg_equals_the_loop_with_ties_and_long_queries(seed):
    rng = np.random.default_rng(seed)
    queries = rng.choice([f"q{i}" for i in range(60)], 900)  # interleaved, some with 20+ items (past k)
    labels = rng.integers(0, 3, len(queries))
    probs = np.eye(3)[rng.integers(0, 3, len(queries))]  # one-hot: many tied scores, broken by input order
    got = ndcg_at_k(queries, probs, labels)
    value, count = _ndcg_loop(queries, probs, labels)
    assert got["queries"] == count > 50
    assert got["ndcg@10"] == pytest.approx(value, rel=1e-12)
    empty = ndcg_at_k([], np.zeros((0, 3)), np.zeros(0, int))
    assert empty["queries"] == 0 and np.isnan(empty["ndcg@10"])
