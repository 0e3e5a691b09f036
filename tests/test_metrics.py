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
