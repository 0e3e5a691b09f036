"""Verdicts read intervals, not point differences: synthetic predictions with known effects."""
import numpy as np
import pandas as pd
import pytest
from safetensors.numpy import save_file

from darl_utils import verdicts
from darl_utils.pipeline import query_codes

QUERIES, PER_QUERY = 150, 4


def predictions(path, accuracy: dict, seed: int, sure: float = 0.8) -> dict:
    """A record whose model is right on `accuracy[part]` of each part's pairs (same pairs for every model)."""
    tensors, rng = {}, np.random.default_rng(seed)  # the pairs depend on the seed only: shared by all models
    for part in ("id_test", "ood_test"):
        labels = rng.integers(0, 3, QUERIES * PER_QUERY)
        queries = query_codes(pd.Series([f"{part} query {q}" for q in range(QUERIES) for _ in range(PER_QUERY)]))
        # which pairs a model gets right depends on its accuracy and the seed only (never on Python's salted
        # hash): two models of the same accuracy make the same predictions, and every run draws the same
        right = np.random.default_rng([seed, round(1000 * accuracy[part])]).random(len(labels)) < accuracy[part]
        guess = np.where(right, labels, (labels + 1) % 3)
        probs = np.full((len(labels), 3), (1 - sure) / 2)
        probs[np.arange(len(labels)), guess] = sure
        tensors.update({f"{part}/probs": probs.astype(np.float32), f"{part}/labels": labels.astype(np.int64),
                        f"{part}/queries": queries})
    save_file(tensors, str(path))
    f1 = {p: float(a) for p, a in accuracy.items()}  # stand-ins for the table's mean columns
    return {"method": path.stem, "predictions": str(path), "id_test": {"f1_per_degree": {"irrelevant": 0.3,
            "weak": 0.2, "strong": 0.6}}, "augmentation": {"ood_share": 0.5}, "id_macro_f1": f1["id_test"],
            "ood_macro_f1": f1["ood_test"]}


@pytest.fixture
def table_of(tmp_path):
    tables = iter(range(100))

    def build(models: dict, seeds=(0, 1)) -> pd.DataFrame:
        rows, where = [], tmp_path / f"table{next(tables)}"
        where.mkdir()
        for model, accuracy in models.items():
            for seed in seeds:
                path = where / f"{model.replace(' ', '_').replace('*', 'star')}-{seed}.safetensors"
                record = predictions(path, accuracy, seed)
                rows.append({"model": model, "seed": seed, "record": record, "alpha": 0.5 if "alpha" in model else None,
                             "id_macro_f1": record["id_macro_f1"], "ood_macro_f1": record["ood_macro_f1"]})
        return pd.DataFrame(rows)
    return build


def acc(id_value, ood_value):
    return {"id_test": id_value, "ood_test": ood_value}


def test_claim5_holds_only_when_both_intervals_clear_zero(table_of):
    base = {"FT": acc(0.5, 0.4), "LP": acc(0.45, 0.42), "FT+LS": acc(0.5, 0.4)}
    better = table_of({**base, verdicts.DARL: acc(0.8, 0.75)})
    text = verdicts.claim5(better)
    assert text.startswith("Claim 5 holds: DaRL minus the best baseline, ID macro-F1 +0.")
    assert "(against FT, the best baseline there); OOD macro-F1 +0." in text and "(against LP, " in text
    same = table_of({**base, verdicts.DARL: acc(0.5, 0.4)})
    assert verdicts.claim5(same).startswith("Claim 5 not distinguishable")
    worse = table_of({**base, verdicts.DARL: acc(0.8, 0.1)})
    assert verdicts.claim5(worse).startswith("Claim 5 does not hold")
    assert verdicts.claim5(table_of(base)).startswith("Claim 5: not tested here")


def test_claim4_reads_dasa_against_each_control(table_of):
    table = table_of({"FT": acc(0.5, 0.4), "FT+DASA": acc(0.5, 0.7), "FT+random": acc(0.5, 0.7),
                      "FT+length-matched": acc(0.5, 0.4)})
    text = verdicts.claim4(table)
    assert text.startswith("Claim 4 holds: FT+DASA minus FT")
    assert "Against as many random pool pairs" in text and "(not distinguishable)" in text
    assert "Against random pool pairs of the same token counts" in text and text.count("(holds)") == 1


def test_identical_models_differ_by_an_exact_zero(table_of):
    table = table_of({"FT": acc(0.6, 0.5), "FT+OCC": acc(0.6, 0.5)})
    table.loc[table["model"] == "FT+OCC", "record"] = table.loc[table["model"] == "FT", "record"].to_numpy()
    diffs = verdicts.differences_to(table)
    assert diffs == {"FT+OCC": {"ID macro-F1 − FT [95 % CI]": "+0.000 [+0.000, +0.000]",
                                "OOD macro-F1 − FT [95 % CI]": "+0.000 [+0.000, +0.000]"}}


def test_claim1_over_confidence_is_an_interval(table_of):
    text = verdicts.claim1(table_of({"FT": acc(0.4, 0.3)}))  # 0.8 sure, right 40 % / 30 %: over-confident
    assert text.startswith("Claim 1, over-confidence, holds") and "weakest degree on id_test is weak" in text
    calm = verdicts.claim1(table_of({"FT": acc(0.95, 0.95)}))  # 0.8 sure, right 95 %: under-confident
    assert calm.startswith("Claim 1, over-confidence, does not hold")


def test_claim2_uses_the_mean_of_id_and_ood(table_of):
    table = table_of({"FT": acc(0.6, 0.3), "LPFT (alpha*)": acc(0.5, 0.6)})  # ID -0.1, OOD +0.3: mean +0.1
    assert verdicts.claim2(table).startswith("Claim 2 holds")


def test_predictions_without_query_codes_are_named(tmp_path):
    save_file({"id_test/probs": np.ones((2, 3), np.float32) / 3, "id_test/labels": np.zeros(2, np.int64)},
              str(tmp_path / "old.safetensors"))
    with pytest.raises(ValueError, match="carry no query codes"):
        verdicts.predictions_of({"method": "FT", "predictions": str(tmp_path / "old.safetensors")}, "id_test")
