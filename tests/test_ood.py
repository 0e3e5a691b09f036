"""DASA's OOD scores against direct computations, and their behaviour on synthetic shifted data."""
import numpy as np
import pytest

from darl_utils.ood import Mahalanobis, combine, detector_quality, knn_distance, percentile, select_top


def test_mahalanobis_matches_a_direct_computation():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(300, 6)), rng.integers(0, 3, 300)
    q = rng.normal(size=(40, 6)) * 2
    model = Mahalanobis(x, y, chunk=37)  # moments accumulated over several chunks
    from sklearn.covariance import ledoit_wolf
    means = np.stack([x[y == c].mean(0) for c in range(3)])
    cov, _ = ledoit_wolf(x - means[y], assume_centered=True)
    inv = np.linalg.inv(cov)
    direct = np.min([np.einsum("ij,jk,ik->i", q - m, inv, q - m) for m in means], axis=0)
    assert np.allclose(model.score(q, chunk=7), direct, rtol=1e-9)


def test_knn_matches_a_direct_computation_in_any_chunking():
    rng = np.random.default_rng(1)
    train, q = rng.normal(size=(500, 8)), rng.normal(size=(37, 8))
    tn, qn = train / np.linalg.norm(train, axis=1, keepdims=True), q / np.linalg.norm(q, axis=1, keepdims=True)
    direct = np.sort(np.linalg.norm(qn[:, None] - tn[None], axis=2), axis=1)[:, 9]  # the 10th nearest
    for query_chunk, train_chunk in ((1000, 100000), (5, 64), (37, 7)):
        got = knn_distance(train, q, k=10, query_chunk=query_chunk, train_chunk=train_chunk)
        assert np.allclose(got, direct, atol=1e-5), (query_chunk, train_chunk)
    with pytest.raises(ValueError, match=r"k: 600 must be in \[1, 500\]"):
        knn_distance(train, q, k=600)
    with pytest.raises(ValueError, match=r"knn search: 'hnsw' is not one of"):
        knn_distance(train, q, search="hnsw")


def test_the_inverted_file_search_is_close_to_the_exact_one():
    # Clustered data, as pooled features are: the approximate k-th distance can only be larger (a missed
    # neighbour), and it ranks the queries as the exact one does.
    rng = np.random.default_rng(3)
    centres = rng.normal(size=(20, 32)) * 3
    train = rng.normal(size=(20_000, 32)) + centres[rng.integers(0, 20, 20_000)]
    q = rng.normal(size=(500, 32)) + centres[rng.integers(0, 20, 500)]
    exact = knn_distance(train, q, k=20, search="exact")
    approx = knn_distance(train, q, k=20, search="ivf", nprobe=8)
    assert (approx >= exact - 1e-5).all()
    assert np.median(approx / exact - 1) < 0.01
    from scipy.stats import spearmanr
    assert spearmanr(approx, exact)[0] > 0.98
    assert np.allclose(knn_distance(train, q, k=20, search="ivf", nprobe=10_000), exact, atol=1e-5)  # all cells


def test_a_shifted_cluster_is_detected():
    # Like pooled features, the ID cloud sits away from the origin (cosine kNN sees directions only); the OOD
    # cluster is the same cloud moved along four other axes.
    rng = np.random.default_rng(2)
    centre = np.r_[np.zeros(4), np.full(12, 1.5)]
    train, y = rng.normal(size=(2000, 16)) + centre, rng.integers(0, 3, 2000)
    val, pool_id = rng.normal(size=(300, 16)) + centre, rng.normal(size=(300, 16)) + centre
    pool_ood = rng.normal(size=(300, 16)) + centre + np.r_[np.full(4, 3.5), np.zeros(12)]
    maha = Mahalanobis(train, y)
    for name, fn in (("mahalanobis", maha.score), ("knn", lambda x: knn_distance(train, x, k=50))):
        quality = detector_quality(fn(pool_ood), fn(pool_id))
        assert quality["auroc"] > 0.95 and quality["fpr_at_95_tpr"] < 0.3, (name, quality)
    pct_m = percentile(maha.score(val), maha.score(np.r_[pool_id, pool_ood]))
    pct_k = percentile(knn_distance(train, val), knn_distance(train, np.r_[pool_id, pool_ood]))
    chosen = select_top(combine(pct_m, pct_k, "mean"), 300)
    assert (chosen >= 300).mean() > 0.9  # the selection is mostly the shifted cluster


def test_percentile_and_combinations():
    ref = np.arange(1, 101, dtype=float)
    assert percentile(ref, np.array([0.0, 50.0, 100.0, 1e9])).tolist() == [0.0, 50.0, 100.0, 100.0]
    a, b = np.array([10.0, 90.0]), np.array([50.0, 20.0])
    assert combine(a, b, "mean").tolist() == [30.0, 55.0] and combine(a, b, "max").tolist() == [50.0, 90.0]
    assert combine(a, b, "knn").tolist() == [50.0, 20.0]
    with pytest.raises(ValueError, match=r"combination: 'sum' is not one of"):
        combine(a, b, "sum")


def test_selection_is_deterministic_and_respects_the_budget():
    scores = np.r_[np.zeros(50), np.ones(50)]  # 50 tied at the top: the seed breaks the tie
    a, b, c = select_top(scores, 20, seed=0), select_top(scores, 20, seed=0), select_top(scores, 20, seed=1)
    assert len(a) == 20 and np.array_equal(a, b) and (a >= 50).all() and not np.array_equal(a, c)
    assert len(select_top(scores, 0)) == 0 and len(select_top(scores, 100)) == 100
    with pytest.raises(ValueError, match=r"budget: 101 must be in \[0, 100\]"):
        select_top(scores, 101)
