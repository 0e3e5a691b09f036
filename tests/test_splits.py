import json
import random
import re
from pathlib import Path

import pandas as pd
import pytest

from darl_utils.data import DataError, load_csv, load_homedepot
from darl_utils.smoke import synthetic_pairs
from darl_utils.splits import (
    DROP_RULES,
    HELD_OUT_PARTS,
    OOD_PARTS,
    PARTS,
    POOL_PARTS,
    TEST_PARTS,
    SplitConfig,
    item_department,
    make_split,
    normalise_title,
    stable_unit,
    subsample,
    unseen_word_queries,
)


@pytest.fixture(scope="module")
def homedepot(homedepot_path):
    return load_homedepot(homedepot_path).frame


@pytest.fixture
def synthetic(pairs_csv):
    return load_csv(pairs_csv, group="group").frame


@pytest.fixture
def shared_products(tmp_path):
    """The synthetic CSV (group column) with two of each query's four items drawn from a small catalogue, spelt
    two ways: products repeat across queries, and only the normalised title ties the spellings together
    (without an item_id column, the id is the raw title)."""
    df = synthetic_pairs()
    rng = random.Random(1)
    shared = (df.groupby("query").cumcount() < 2).to_numpy()
    picks = [rng.randrange(120) for _ in range(int(shared.sum()))]
    df.loc[shared, "item"] = [f"Shared-Product No. {k}" if rng.random() < 0.5 else f"shared product no {k}"
                              for k in picks]
    df.to_csv(tmp_path / "shared.csv", index=False)
    return load_csv(tmp_path / "shared.csv", group="group").frame


def queries(df):
    return set(df["query"])


def products(df):
    return set(df["item_id"]), set(normalise_title(df["item"]))


def assert_leak_free(split, pairs, unfiltered):
    """The leakage rules' promises: no product of train elsewhere, none of a pool in a test part, query-disjoint
    parts, and every pair assigned to a part either kept or counted under one rule."""
    for i, p in enumerate(PARTS):
        for q in PARTS[i + 1:]:
            assert not queries(split[p]) & queries(split[q]), (p, q)
    for sources, targets in ((("train",), HELD_OUT_PARTS), (POOL_PARTS, TEST_PARTS)):
        ids, titles = products(pd.concat([split[p] for p in sources]))
        for part in targets:
            part_ids, part_titles = products(split[part])
            assert not part_ids & ids and not part_titles & titles, (sources, part)
    frame = split.dropped_frame()
    for part in PARTS:  # kept + each rule's drops = what the hash assigned to the part
        kept_and_dropped = len(split[part]) + sum(split.dropped(part, rule) for rule in DROP_RULES)
        assert kept_and_dropped == len(unfiltered[part]) == frame.loc[part, "pairs before"], part
        assert frame.loc[part, "pairs after"] == len(split[part])
    assert sum(len(split[p]) for p in PARTS) + split.total_dropped() == len(pairs)
    assert set(split.leakage_dropped) == set(HELD_OUT_PARTS)
    assert all(set(counts) == set(DROP_RULES) for counts in split.leakage_dropped.values())
    assert all(split.dropped(p, "pool_product") == 0 for p in ("train", *POOL_PARTS))  # rule 2: test parts only


def test_normalise_title():
    titles = pd.Series(["3/4 in. PVC  Elbow", "3-4 in pvc elbow", "  Hex_Nut (10-Pack) "])
    assert normalise_title(titles).tolist() == ["3 4 in pvc elbow", "3 4 in pvc elbow", "hex nut 10 pack"]


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
    unfiltered = make_split(homedepot, SplitConfig(protocol=protocol, drop_leakage=False), "homedepot")
    assert unfiltered.total_dropped() == 0
    assert_leak_free(a, homedepot, unfiltered)
    shares = a.summary()["pairs"] / len(homedepot)
    # department: ood_test keeps 4.6 % of all pairs; its held-out products recur in pool_ood (31 % dropped)
    assert 0.4 < shares["train"] < 0.55 and shares["ood_test"] > 0.04


def test_leakage_rules_with_group_column(shared_products):
    cfg = dict(protocol="department", held_out=("g1", "g3"))
    s, unfiltered = make_split(shared_products, SplitConfig(**cfg)), make_split(shared_products,
                                                                              SplitConfig(**cfg, drop_leakage=False))
    assert_leak_free(s, shared_products, unfiltered)
    for rule in DROP_RULES:  # the data repeats products across queries, so both rules have work to do
        assert sum(s.dropped(p, rule) for p in HELD_OUT_PARTS) > 0, rule
    # Only the normalised title ties "Shared-Product No. 7" to "shared product no 7" (their ids differ): some
    # product reaches train under the other spelling only, and assert_leak_free saw it gone all the same.
    train, others = unfiltered["train"], pd.concat([unfiltered[p] for p in HELD_OUT_PARTS])
    title_only = ~others["item_id"].isin(train["item_id"]) & normalise_title(others["item"]).isin(
        normalise_title(train["item"]))
    assert title_only.any()
    assert s.dropped_frame().loc[list(TEST_PARTS), "pairs after"].gt(0).all()


def test_leakage_rules_on_unshared_products(synthetic):
    # Every product of the synthetic CSV belongs to one query: nothing to drop, and zeros are still reported.
    s = make_split(synthetic, SplitConfig(protocol="department", held_out=("g1", "g3")))
    assert s.leakage_dropped == {p: {"train_product": 0, "pool_product": 0} for p in HELD_OUT_PARTS}


def test_empty_part_after_leakage_rules(shared_products):
    one_product = shared_products.assign(item="Shared Product", item_id="Shared Product")
    with pytest.raises(DataError, match=r"part 'id_val' is empty under protocol 'department'.*leakage rules "
                                        r"dropped \d+ of its pairs"):
        make_split(one_product, SplitConfig(protocol="department", held_out=("g1",)))
    kept = make_split(one_product, SplitConfig(protocol="department", held_out=("g1",), drop_leakage=False))
    assert kept.total_dropped() == 0 and len(kept["id_val"]) > 0


# query_form, seed 0, measured with the leakage rules of docs/STUDY.md section 3 (product in train, then in a pool).
PINNED_DROPS = {"id_val": {"train_product": 1606, "pool_product": 400},
                "id_test": {"train_product": 2393, "pool_product": 657},
                "pool_id": {"train_product": 2322, "pool_product": 0},
                "ood_test": {"train_product": 2038, "pool_product": 1070},
                "pool_ood": {"train_product": 2157, "pool_product": 0}}


def test_split_sizes_pinned(homedepot):
    # Fixed by sha1 of the query text: the same on every machine and in every process (PYTHONHASHSEED-proof).
    s = make_split(homedepot, SplitConfig(protocol="query_form"), "homedepot")
    assert s.summary()["pairs"].to_dict() == {"train": 33473, "id_val": 3584, "id_test": 5345, "pool_id": 6022,
                                              "ood_test": 5697, "pool_ood": 7294}
    assert s.summary().loc["train", "queries"] == 5193
    assert s.leakage_dropped == PINNED_DROPS


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
    assert 0.15 < share < 0.27  # about 21 % of pairs (docs/STUDY.md section 3)


def test_department_protocol_on_homedepot(homedepot):
    depts = item_department(pd.Series(["GE 23.2 cu. ft. Bottom Freezer Refrigerator", "Hampton Bay 52 in. Ceiling Fan",
                                       "Delta Bathroom Faucet", "Everbilt 1/4 in. Zinc Hex Nut", "Mystery Widget"]))
    assert depts.tolist() == ["appliances", "lighting & fans", "bath", "hardware", "other"]
    s = make_split(homedepot, SplitConfig(protocol="department"), "homedepot")
    assert s.held_out == ["appliances", "lighting & fans"]
    ood_share = (sum(len(s[p]) for p in OOD_PARTS) + s.total_dropped(OOD_PARTS)) / len(homedepot)
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
    expected = {f"{p}.csv.gz" for p in PARTS} | {"summary.csv", "split.json"}
    assert {p.name for p in (tmp_path / "split").iterdir()} == expected
    summary = pd.read_csv(tmp_path / "split" / "summary.csv", index_col="part")
    assert summary.loc["train", "pairs"] == len(s["train"])
    assert set(summary.columns) >= {"queries", "% irrelevant", "% weak", "% strong", *DROP_RULES.values()}
    meta = json.loads((tmp_path / "split" / "split.json").read_text())
    assert meta["leakage_dropped"] == s.leakage_dropped


def test_a_split_saved_by_another_process_meanwhile_is_kept(synthetic, tmp_path, monkeypatch):
    """A report's workers may build the same split at once: the one that moves its copy in second finds the
    first one's there (the same split) and keeps it, instead of failing."""
    s = make_split(synthetic, SplitConfig(protocol="query_form"))
    target = tmp_path / "split"
    move = Path.replace

    def another_process_first(self, to):
        if Path(to) == target:
            s.save(tmp_path / "other")  # the other process's copy lands first
            (tmp_path / "other").rename(target)
        return move(self, to)

    monkeypatch.setattr(Path, "replace", another_process_first)
    assert s.save(target) == target
    assert (target / "split.json").exists() and not list(tmp_path.glob("split.part*"))
    monkeypatch.setattr(Path, "replace", lambda self, to: (_ for _ in ()).throw(OSError("disk")))
    with pytest.raises(OSError, match="disk"):  # any other failure still raises
        s.save(tmp_path / "third")
