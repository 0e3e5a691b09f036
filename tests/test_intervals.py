"""Paired bootstrap intervals over test queries (darl_utils.intervals): exact zeros for identical models, clear
verdicts for a clearly better model, narrowing with more queries, reproducibility, agreement of the metrics with
sklearn and torchmetrics, pooling over seeds, input checks, and the query (not the pair) as the resampled unit."""

import numpy as np
import pytest
import torch
from sklearn.metrics import f1_score
from torchmetrics.functional.classification import multiclass_calibration_error

from darl_utils.intervals import (
    METRICS,
    Difference,
    SeedPredictions,
    model_interval,
    paired_difference,
    paired_mean_difference,
    verdict_word,
)
from darl_utils.metrics import entropy


def predictions(labels, correct, rng):
    """Probabilities whose argmax is the gold degree where `correct`, another degree elsewhere; the top
    probability varies so calibration and entropy metrics have something to measure."""
    n = len(labels)
    predicted = np.where(correct, labels, (labels + rng.integers(1, 3, n)) % 3)
    top = rng.uniform(0.4, 0.95, n)
    probs = np.repeat(((1 - top) / 2)[:, None], 3, 1)
    probs[np.arange(n), predicted] = top
    return probs


def synthetic_seed(rng, n_queries, right_a=0.9, right_b=0.5, pairs=(3, 8)) -> SeedPredictions:
    """n_queries queries of pairs[0]..pairs[1] pairs; A right on about right_a of them, B on right_b."""
    queries = np.repeat(np.arange(n_queries), rng.integers(pairs[0], pairs[1] + 1, n_queries))
    labels = rng.integers(0, 3, len(queries))
    probs_a = predictions(labels, rng.random(len(labels)) < right_a, rng)
    probs_b = predictions(labels, rng.random(len(labels)) < right_b, rng)
    return SeedPredictions(labels, queries, probs_a, probs_b)


def random_probs(rng, n, scale=2.0):
    logits = rng.normal(size=(n, 3)) * scale
    return torch.softmax(torch.as_tensor(logits), -1).numpy()


# ------------------------------------------------------------------------------------------------ the bootstrap
@pytest.mark.parametrize("metric", sorted(METRICS))
def test_identical_predictions_give_an_exact_zero_interval(metric):
    rng = np.random.default_rng(0)
    seeds = []
    for _ in range(2):
        s = synthetic_seed(rng, 200)
        # float32 probabilities, as stored by the pipeline, to make float noise likely if the code allowed it
        probs = random_probs(rng, len(s.labels)).astype(np.float32)
        seeds.append(SeedPredictions(s.labels, s.queries, probs, probs.copy()))
    diff = paired_difference(seeds, metric)
    assert (diff.estimate, diff.low, diff.high) == (0.0, 0.0, 0.0)
    assert diff.side() == "contains zero"
    assert verdict_word(diff, "higher") == verdict_word(diff, "lower") == "not distinguishable"
    assert diff.text() == "+0.000 [+0.000, +0.000]"


@pytest.mark.parametrize("metric", ["macro_f1", "accuracy"])
def test_a_clearly_better_model_holds_and_swapped_does_not(metric):
    s = synthetic_seed(np.random.default_rng(1), 300, right_a=0.9, right_b=0.5)
    diff = paired_difference([s], metric)
    assert diff.low > 0.25 and diff.low < diff.estimate < diff.high  # about +0.4, far from zero
    assert diff.side() == "above" and verdict_word(diff, "higher") == "holds"
    assert verdict_word(diff, "lower") == "does not hold"
    swapped = paired_difference([SeedPredictions(s.labels, s.queries, s.probs_b, s.probs_a)], metric)
    assert swapped.side() == "below" and verdict_word(swapped, "higher") == "does not hold"
    # paired: swapping the models mirrors the resampled statistic, so the interval mirrors exactly
    assert swapped.estimate == pytest.approx(-diff.estimate, abs=1e-12)
    assert (swapped.low, swapped.high) == pytest.approx((-diff.high, -diff.low), abs=1e-12)
    assert diff.queries == 300 and diff.resamples == 1000 and diff.seeds == 1


def test_the_interval_narrows_with_more_queries():
    rng = np.random.default_rng(2)
    width = {}
    for n in (50, 800):
        diff = paired_difference([synthetic_seed(rng, n, right_a=0.7, right_b=0.6)], "accuracy")
        width[n] = diff.high - diff.low
    assert width[50] > 2.5 * width[800]  # sqrt(800 / 50) = 4 in theory


def test_the_same_seed_gives_the_same_interval_and_another_seed_another():
    s = synthetic_seed(np.random.default_rng(3), 100, right_a=0.7, right_b=0.6)
    first, again = paired_difference([s], "ece", seed=0), paired_difference([s], "ece", seed=0)
    other = paired_difference([s], "ece", seed=1)
    assert first == again
    assert (first.low, first.high) != (other.low, other.high)
    assert first.estimate == other.estimate  # the estimate does not depend on the resamples


def test_queries_may_be_any_hashable():
    s = synthetic_seed(np.random.default_rng(4), 120)
    as_text = [f"query {q}" for q in s.queries]  # same first-appearance order, hence the same codes
    as_tuples = [("home depot", int(q)) for q in s.queries]
    expected = paired_difference([s], "macro_f1", resamples=200)
    for queries in (as_text, as_tuples):
        again = SeedPredictions(s.labels, queries, s.probs_a, s.probs_b)
        assert paired_difference([again], "macro_f1", resamples=200) == expected


def reference(metric, probs, labels) -> float:
    """The metric from sklearn / torchmetrics, independent of the module under test."""
    if metric == "macro_f1":
        return f1_score(labels, probs.argmax(1), labels=[0, 1, 2], average="macro", zero_division=0)
    return float(multiclass_calibration_error(torch.as_tensor(probs), torch.as_tensor(labels), 3, n_bins=15))


def test_pooling_averages_the_per_seed_differences():
    rng = np.random.default_rng(5)
    seed_1 = synthetic_seed(rng, 150, right_a=0.9, right_b=0.5)
    seed_2 = synthetic_seed(rng, 90, right_a=0.6, right_b=0.55)
    for metric in ("macro_f1", "ece"):
        d1, d2 = (reference(metric, s.probs_a, s.labels) - reference(metric, s.probs_b, s.labels)
                  for s in (seed_1, seed_2))
        assert abs(d1 - d2) > 0.02  # the two seeds really differ, so the mean is a real check
        assert paired_difference([seed_1], metric, resamples=10).estimate == pytest.approx(d1, abs=1e-6)
        pooled = paired_difference([seed_1, seed_2], metric)
        assert pooled.estimate == pytest.approx((d1 + d2) / 2, abs=1e-6)
        assert pooled.queries == 240 and pooled.seeds == 2


def test_the_query_is_the_resampled_unit():
    """The same 400 pairs where A is right and B wrong, in one large query or spread over 100 queries, plus 400
    pairs (100 queries of 4) where both agree: the observed difference is the same, but the bootstrap over
    queries sees one large query come and go and gives a much wider interval. Resampling pairs would not."""
    rng = np.random.default_rng(6)
    labels = rng.integers(0, 3, 800)
    correct_b = np.r_[np.zeros(400, bool), np.ones(400, bool)]
    probs_a, probs_b = predictions(labels, np.ones(800, bool), rng), predictions(labels, correct_b, rng)
    agreeing = 1000 + np.arange(400) // 4
    one_query, spread = np.r_[np.zeros(400, int), agreeing], np.r_[np.arange(400) // 4, agreeing]

    def width(queries):
        diff = paired_difference([SeedPredictions(labels, queries, probs_a, probs_b)], "accuracy")
        assert diff.estimate == pytest.approx(0.5)
        return diff.high - diff.low

    assert width(one_query) > 3 * width(spread)
    by_pair = width(np.arange(800))  # every pair its own query: the pair bootstrap
    assert width(spread) > 1.5 * by_pair  # 4 perfectly correlated pairs a query: twice as wide in theory


def test_model_interval_and_the_mean_over_parts():
    rng = np.random.default_rng(3)
    labels, queries = rng.integers(0, 3, 1200), np.repeat(np.arange(300), 4)
    sure_and_wrong = np.eye(3)[(labels + 1) % 3] * 0.9 + 0.1 / 3  # top probability 0.933, accuracy 0
    one = model_interval(SeedPredictions(labels, queries, sure_and_wrong, sure_and_wrong), "overconfidence")
    assert one.estimate == pytest.approx(0.9 + 0.1 / 3) and one.low > 0.9 and one.side() == "above"
    good, bad = sure_and_wrong[:, [1, 2, 0]], sure_and_wrong  # the rolled one puts 0.93 on the gold degree
    part = [SeedPredictions(labels, queries, good, bad)]
    same = [SeedPredictions(labels, queries, bad, bad)]
    both = paired_mean_difference([part, same], "accuracy")
    assert both.estimate == pytest.approx(0.5) and both.low == pytest.approx(0.5) and both.high == pytest.approx(0.5)


# --------------------------------------------------------------------------------------------------- the metrics
def metric_cases():
    """Random draws (sharp and flat), one with a degree that is never the gold label, one where a degree is
    never predicted, and one with confidences exactly 1.0 and on or next to torchmetrics' float32 bin edges."""
    rng = np.random.default_rng(8)
    for n, scale in ((50, 0.5), (500, 2.0), (3000, 4.0), (7, 1.0)):
        yield random_probs(rng, n, scale), rng.integers(0, 3, n)
    yield random_probs(rng, 400), rng.integers(0, 2, 400)  # degree 2 never gold
    probs = random_probs(rng, 400)
    probs[:, 1] = 0  # degree 1 never predicted (nor gold, below)
    yield probs / probs.sum(1, keepdims=True), rng.choice([0, 2], 400)
    edges = torch.linspace(0, 1, 16).numpy().astype(np.float64)[6:]  # torchmetrics' edges, 0.4 .. 1.0
    # just below an edge in float64 but on it in float32 (torchmetrics bins float32), and 0.4 below its edge
    top = np.r_[edges, edges - 1e-9, np.ones(10), np.full(5, 0.4)]
    edge_probs = np.stack([top, (1 - top) / 2, (1 - top) / 2], 1)
    yield edge_probs, rng.integers(0, 3, len(top))


@pytest.mark.parametrize("case", range(7))
def test_the_metrics_agree_with_sklearn_and_torchmetrics(case):
    probs, labels = list(metric_cases())[case]
    predicted = probs.argmax(1)
    assert METRICS["macro_f1"](probs, labels) == pytest.approx(
        f1_score(labels, predicted, labels=[0, 1, 2], average="macro", zero_division=0), abs=1e-12)
    reference = multiclass_calibration_error(torch.as_tensor(probs), torch.as_tensor(labels), num_classes=3,
                                             n_bins=15, norm="l1")
    assert METRICS["ece"](probs, labels) == pytest.approx(float(reference), abs=1e-6)
    assert METRICS["accuracy"](probs, labels) == pytest.approx((predicted == labels).mean(), abs=1e-12)
    assert METRICS["confidence"](probs, labels) == pytest.approx(probs.max(1).mean(), abs=1e-12)
    assert METRICS["entropy"](probs, labels) == pytest.approx(entropy(probs).mean(), abs=1e-12)


def test_confidence_one_gets_its_own_calibration_bin():
    """torchmetrics puts a confidence of exactly 1.0 (a sure model's float32 softmax) in a bin of its own, so an
    over-confident 1.0 group is not averaged with an under-confident 0.95 group of the top bin."""
    probs = np.array([[1.0, 0, 0]] * 10 + [[0.95, 0.05, 0]] * 10)
    labels = np.r_[np.zeros(8, int), np.ones(2, int), np.zeros(10, int)]  # 8 of 10 right at 1.0, all at 0.95
    own_bin = (10 * abs(0.8 - 1.0) + 10 * abs(1.0 - 0.95)) / 20  # 0.125; one shared top bin would give 0.075
    assert METRICS["ece"](probs, labels) == pytest.approx(own_bin)
    assert reference("ece", probs, labels) == pytest.approx(own_bin)


# ------------------------------------------------------------------------------------------ inputs and the result
def test_mismatched_inputs_raise_a_clear_error():
    rng = np.random.default_rng(9)
    labels, queries = rng.integers(0, 3, 20), np.arange(20) // 4
    good = random_probs(rng, 20)
    with pytest.raises(ValueError, match=r"probs_b must be \(pairs, 3\) = \(20, 3\), got \(19, 3\)"):
        SeedPredictions(labels, queries, good, good[:19])
    with pytest.raises(ValueError, match=r"probs_a must be .* got \(20, 2\)"):
        SeedPredictions(labels, queries, good[:, :2], good)
    with pytest.raises(ValueError, match="queries must be one per pair: expected 20"):
        SeedPredictions(labels, queries[:-1], good, good)
    with pytest.raises(ValueError, match="labels_b differs from labels .1 pairs.: model B was not scored"):
        SeedPredictions(labels, queries, good, good, labels_b=np.where(np.arange(20) == 3, (labels + 1) % 3, labels))
    with pytest.raises(ValueError, match=r"labels must be degrees \[0, 1, 2\], got values \[3\]"):
        SeedPredictions(np.r_[labels[:-1], 3], queries, good, good)
    with pytest.raises(ValueError, match="probabilities in"):
        SeedPredictions(labels, queries, good * 3, good)
    seed = SeedPredictions(labels, queries, good, good, labels_b=labels.copy())
    with pytest.raises(ValueError, match="unknown metric 'f1'"):
        paired_difference([seed], "f1")
    with pytest.raises(ValueError, match="better must be"):
        verdict_word(paired_difference(seed, "accuracy", resamples=10), "more")


def test_difference_text_and_side():
    diff = Difference("macro_f1", 0.0214, 0.0041, 0.0383, 1000, 400, 3)
    assert diff.text() == "+0.021 [+0.004, +0.038]" and diff.text(2) == "+0.02 [+0.00, +0.04]"
    assert diff.side() == "above"
    lower = Difference("ece", -0.03, -0.05, -0.01, 1000, 400, 3)
    assert lower.side() == "below" and verdict_word(lower, "lower") == "holds"
    assert verdict_word(lower, "higher") == "does not hold"
    edge = Difference("ece", 0.01, 0.0, 0.02, 1000, 400, 3)  # low == 0 is not above zero
    assert edge.side() == "contains zero" and verdict_word(edge) == "not distinguishable"
