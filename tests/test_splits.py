import re

import pandas as pd
import pytest

from darl_utils.data import DataError, load_csv, load_homedepot
from darl_utils.splits import (OOD_PARTS, PARTS, SplitConfig, item_department, make_split, stable_unit,
                               subsample, unseen_word_queries)


@pytest.fixture(scope="module")
def homedepot(homedepot_path):
    return load_homedepot(homedepot_path).frame


@pytest.fixture
def synthetic(pairs_csv):
    return load_csv(pairs_csv, group="group").frame


def queries(df):
    return set(df["query"])


def test_stable_hash_is_fixed():
    # sha1-based: the same on every machine and run (Python's hash() is salted per process)
    assert stable_unit("angle bracket", "part0") == pytest.approx(0.23253, abs=1e-5)
    assert stable_unit("angle bracket", "part1") != stable_unit("angle bracket", "part0")


@pytest.mark.parametrize("protocol", ["department", "query_form", "unseen_words"])
def test_split_deterministic_disjoint_and_leak_free(homedepot, protocol):
    cfg = SplitConfig(protocol=protocol)
    a, b = make_split(homedepot, cfg, "homedepot"), make_split(homedepot, SplitConfig(protocol=protocol),
                                                                "homedepot")
    for part in PARTS:
        pd.testing.assert_frame_equal(a[part], b[part])
    for i, p in enumerate(PARTS):  # query-disjoint
        for q in PARTS[i + 1:]:
            assert not queries(a[p]) & queries(a[q]), (p, q)
    train_items = set(a["train"]["item_id"])
    for part in OOD_PARTS:  # no leakage
        assert not set(a[part]["item_id"]) & train_items
    kept = sum(len(a[p]) for p in PARTS) + sum(a.leakage_dropped.values())
    assert kept == len(homedepot)  # nothing lost silently
    shares = a.summary()["pairs"] / len(homedepot)
    assert 0.4 < shares["train"] < 0.55 and shares["ood_test"] > 0.05


def test_split_sizes_pinned(homedepot):
    # Fixed by sha1 of the query text: the same on every machine and in every process (PYTHONHASHSEED-proof).
    s = make_split(homedepot, SplitConfig(protocol="query_form"), "homedepot")
    assert s.summary()["pairs"].to_dict() == {"train": 33473, "id_val": 5590, "id_test": 8395, "pool_id": 8344,
                                              "ood_test": 6768, "pool_ood": 7296}
    assert s.summary().loc["train", "queries"] == 5193
    assert s.leakage_dropped == {"ood_test": 2037, "pool_ood": 2155}


def test_split_seed_changes_parts(homedepot):
    a = make_split(homedepot, SplitConfig(seed=0), "homedepot")
    b = make_split(homedepot, SplitConfig(seed=1), "homedepot")
    assert queries(a["train"]) != queries(b["train"])


def test_query_form_protocol(homedepot):
    s = make_split(homedepot, SplitConfig(protocol="query_form"), "homedepot")
    assert all(re.search(r"\d", q) for q in queries(s["ood_test"]) | queries(s["pool_ood"]))
    assert not any(re.search(r"\d", q) for p in ("train", "id_val", "id_test", "pool_id") for q in queries(s[p]))


def test_unseen_words_protocol(homedepot):
    flags = unseen_word_queries(homedepot)
    assert flags["lawn sprkinler"] and not flags["angle bracket"]
    share = homedepot["query"].map(flags).mean()
    assert 0.15 < share < 0.27  # about 21 % of pairs (STUDY.md section 3)


def test_department_protocol_on_homedepot(homedepot):
    depts = item_department(pd.Series(["GE 23.2 cu. ft. Bottom Freezer Refrigerator", "Hampton Bay 52 in. Ceiling Fan",
                                       "Delta Bathroom Faucet", "Everbilt 1/4 in. Zinc Hex Nut", "Mystery Widget"]))
    assert depts.tolist() == ["appliances", "lighting & fans", "bath", "hardware", "other"]
    s = make_split(homedepot, SplitConfig(protocol="department"), "homedepot")
    assert s.held_out == ["appliances", "lighting & fans"]
    ood_share = (sum(len(s[p]) for p in OOD_PARTS) + sum(s.leakage_dropped.values())) / len(homedepot)
    assert 0.1 < ood_share < 0.25


def test_department_protocol_with_group_column(synthetic):
    s = make_split(synthetic, SplitConfig(protocol="department", held_out=("g1", "g3")))
    ood_groups = set(pd.concat([s["ood_test"], s["pool_ood"]])["group"])
    assert ood_groups == {"g1", "g3"} and "g1" not in set(s["train"]["group"])
    auto = make_split(synthetic, SplitConfig(protocol="department"))
    assert auto.held_out and set(auto.held_out) <= {f"g{i}" for i in range(5)}


def test_department_errors(synthetic):
    with pytest.raises(DataError, match=r"held_out: unknown group\(s\) \['g9'\]"):
        make_split(synthetic, SplitConfig(protocol="department", held_out=("g9",)))
    with pytest.raises(DataError, match="needs a group column"):
        make_split(synthetic.assign(group=None), SplitConfig(protocol="department"))
    with pytest.raises(ValueError, match="protocol: unknown 'colour'"):
        make_split(synthetic, SplitConfig(protocol="colour"))


def test_subsample_keeps_whole_queries(homedepot):
    small = subsample(homedepot, 500)
    assert 400 < len(small) <= 500
    full_counts = homedepot["query"].value_counts()
    small_counts = small["query"].value_counts()
    assert (small_counts == full_counts[small_counts.index]).all()
    assert subsample(homedepot, 500).equals(small)


def test_split_saved_with_summary(synthetic, tmp_path):
    s = make_split(synthetic, SplitConfig(protocol="query_form"))
    s.save(tmp_path / "split")
    assert {p.name for p in (tmp_path / "split").iterdir()} == {f"{p}.csv.gz" for p in PARTS} | {"summary.csv", "split.json"}
    summary = pd.read_csv(tmp_path / "split" / "summary.csv", index_col="part")
    assert summary.loc["train", "pairs"] == len(s["train"])
    assert set(summary.columns) >= {"queries", "% irrelevant", "% weak", "% strong", "leakage dropped"}
