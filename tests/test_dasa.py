"""DASA end to end on synthetic pairs: the pool's labels stay hidden until selection, the budget and the
controls, the record, the cache, and retraining (FT and LPFT+OCC) on the augmented train."""
import json
import os
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from darl_utils import dasa, pipeline, representations
from darl_utils.__main__ import main as cli
from darl_utils.config import ConfigError

from test_training import ROOT, tiny_config


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DARL_CACHE", str(tmp_path / "cache"))


def selection(cfg):
    """The augmented train of cfg (running what it needs) and its record."""
    ctx = pipeline.prepare(cfg)
    return ctx.parts["train"], ctx.augmentation


def test_budget_is_a_fraction_or_a_count():
    assert dasa.budget_size(0.1, 300, 1000) == 30 and dasa.budget_size(25.0, 300, 1000) == 25
    with pytest.raises(ConfigError, match=r"dasa_budget: 2000.0 asks for 2000 pairs but the pool holds 1000"):
        dasa.budget_size(2000.0, 300, 1000)


@pytest.mark.parametrize("name, value, message", [
    ("augment", "dsaa", r"augment: 'dsaa' is not one of none, dasa, random, oracle, length_matched; did you mean"),
    ("dasa_budget", 2.5, r"dasa_budget: 2.5 must be a fraction in \(0, 1\)"),
    ("dasa_budget", 0.0, r"dasa_budget: 0.0 must be a fraction"),
    ("dasa_combination", "sum", r"dasa_combination: 'sum' is not one of"),
    ("dasa_knn_search", "hnsw", r"dasa_knn_search: 'hnsw' is not one of"),
    ("dasa_k", 0, r"dasa_k: 0 must be >= 1"),
    ("dasa_mahalanobis", "whitened", r"dasa_mahalanobis: 'whitened' is not one of normalised, raw"),
    ("dasa_features", "pair_cls", r"dasa_features: 'pair_cls' is not one of"),
])
def test_bad_dasa_settings_are_refused(pairs_csv, tiny_encoder, tmp_path, name, value, message):
    with pytest.raises(ConfigError, match=message):
        tiny_config(pairs_csv, tiny_encoder, tmp_path / "out", **{name: value}).validate()


def test_a_budget_larger_than_the_pool_fails_before_training(pairs_csv, tiny_encoder, tmp_path, monkeypatch):
    monkeypatch.setattr(pipeline, "train_model", lambda *a, **k: pytest.fail("trained before the budget check"))
    cfg = tiny_config(pairs_csv, tiny_encoder, tmp_path / "out", augment="dasa", dasa_budget=5000.0)
    with pytest.raises(ConfigError, match=r"dasa_budget: 5000.0 asks for 5000 pairs but the pool holds \d+"):
        pipeline.run_ft(cfg)
    assert cli(["ft", "--data", str(pairs_csv), "--dataset", "csv", "--csv-columns", '{"group": "group"}',
                "--backbone", tiny_encoder, "--augment", "dasa", "--dasa-budget", "5000", "--no-progress",
                "--out-dir", str(tmp_path / "out"), "--device", "cpu"]) == 2


def test_pool_labels_are_read_only_after_selection(pairs_csv, tiny_encoder, tmp_path, monkeypatch):
    # Every frame that is turned into features must be label-free when it is the pool, and the annotator is
    # asked once, after scoring, for exactly the selected rows.
    events = []
    real_features, real_score, real_reveal = dasa.cached_representations, dasa.score_features, dasa.Annotator.reveal

    def features(model, model_id, frame, *a, **k):
        events.append(("features", "label" in frame.columns, len(frame)))
        return real_features(model, model_id, frame, *a, **k)

    def reveal(self, rows):
        events.append(("reveal", len(rows)))
        return real_reveal(self, rows)

    monkeypatch.setattr(dasa, "cached_representations", features)
    monkeypatch.setattr(dasa, "score_features", lambda *a, **k: events.append(("score",)) or real_score(*a, **k))
    monkeypatch.setattr(dasa.Annotator, "reveal", reveal)
    cfg = tiny_config(pairs_csv, tiny_encoder, tmp_path / "out", epochs=3, augment="dasa", dasa_budget=20.0)
    train, record = selection(cfg)
    pool_size = sum(record["pool_sizes"].values())
    pool_events = [e for e in events if e[0] == "features" and e[2] == pool_size]
    assert pool_events and not any(e[1] for e in pool_events)  # the pool was featurised without labels
    kinds = [e[0] for e in events]
    assert kinds.count("reveal") == 1 and kinds.index("score") < kinds.index("reveal")
    assert ("reveal", 20) in events and record["revealed"] == record["added"] == 20


def test_the_selection_does_not_depend_on_the_pool_labels(pairs_csv, tiny_encoder, tmp_path):
    # The same data with the pool's labels shuffled: the same pairs are chosen; only what is revealed differs.
    cfg = tiny_config(pairs_csv, tiny_encoder, tmp_path / "out", epochs=3, augment="dasa", dasa_budget=30.0)
    frame = pd.read_csv(pairs_csv)
    positions = _file_positions(frame, pipeline.prepare_split(cfg))
    shuffled = frame.copy()
    shuffled.loc[positions, "label"] = frame["label"].to_numpy()[np.random.default_rng(0).permutation(positions)]
    other = tmp_path / "shuffled.csv"
    shuffled.to_csv(other, index=False)
    assert not shuffled["label"].equals(frame["label"])

    first, _ = selection(cfg)
    second, _ = selection(replace(cfg, data=str(other)))
    a, b = (t[t["source"] != "train"] for t in (first, second))
    assert list(zip(a["query"], a["item"])) == list(zip(b["query"], b["item"]))
    assert not np.array_equal(a["label"].to_numpy(), b["label"].to_numpy())  # what the annotator said differs
    pd.testing.assert_frame_equal(first[first["source"] == "train"], second[second["source"] == "train"])


def _file_positions(frame: pd.DataFrame, split) -> np.ndarray:
    """Positions in the CSV of the pool pairs (matched on their text)."""
    pool = pd.concat([split["pool_id"], split["pool_ood"]])
    where = {(q, i): n for n, (q, i) in enumerate(zip(frame["query"], frame["item"]))}
    return np.array([where[(q, i)] for q, i in zip(pool["query"], pool["item"])])


def test_controls_respect_the_budget_and_are_deterministic(pairs_csv, tiny_encoder, tmp_path, monkeypatch):
    monkeypatch.setattr(pipeline, "train_model", lambda *a, **k: pytest.fail("a control needs no model"))
    cfg = tiny_config(pairs_csv, tiny_encoder, tmp_path / "out", augment="random", dasa_budget=0.1)
    train, record = selection(cfg)
    assert record["budget"] == round(0.1 * record["train_before"]) == record["added"]
    assert len(train) == record["train_before"] + record["added"] and record["detectors"] == {}
    again, _ = selection(replace(cfg, reuse=False))
    pd.testing.assert_frame_equal(train, again)  # same seed, same pairs
    other, _ = selection(replace(cfg, seed=1))
    assert set(other["item"]) != set(train["item"])
    oracle, rec = selection(replace(cfg, augment="oracle"))
    assert rec["ood_share"] == 1.0 and (oracle["source"] != "pool_id").all()
    # an oracle budget beyond pool_ood takes all of pool_ood, and says so
    big, rec = selection(replace(cfg, augment="oracle", dasa_budget=float(rec["pool_sizes"]["pool_ood"] + 5)))
    assert rec["added"] == rec["pool_sizes"]["pool_ood"] < rec["budget"]


def test_dasa_retraining_and_darl(pairs_csv, tiny_encoder, tmp_path, monkeypatch):
    cfg = tiny_config(pairs_csv, tiny_encoder, tmp_path / "out", epochs=4, augment="dasa")
    ft = pipeline.run_ft(cfg)
    aug = ft["augmentation"]
    assert ft["method"] == "FT+DASA"
    assert ft["sizes"]["train"] == aug["train_after"] == aug["train_before"] + aug["added"]
    assert aug["added"] == round(0.1 * aug["train_before"]) and 0 <= aug["ood_share"] <= 1
    for score in dasa.SCORES:
        assert 0 <= aug["detectors"][score]["auroc"] <= 1
    # the synthetic OOD queries carry digits the train queries never do: the detectors see them
    assert aug["detectors"]["mahalanobis"]["auroc"] > 0.8
    rows = pd.DataFrame(aug["representations"])  # every candidate representation, measured three ways
    assert len(rows) == 15 and set(rows["representation"]) == set(representations.REPRESENTATIONS)
    assert rows[["auroc", "auroc_within_length", "corr_tokens"]].notna().all().all()
    assert aug["ood_share"] > aug["pool_sizes"]["pool_ood"] / sum(aug["pool_sizes"].values())
    scores = dasa.load_scores(aug)
    assert scores["pool"]["selected"].sum() == aug["added"]
    chosen = scores["pool"]["combined"][scores["pool"]["selected"] == 1]
    assert chosen.min() >= scores["pool"]["combined"][scores["pool"]["selected"] == 0].max()  # the top B
    table = dasa.selected_pairs(aug, top=5)
    assert len(table) == 5 and table["score"].is_monotonic_decreasing
    # the source FT (train as split) was published beside it, and keeps the key it has without DASA
    lines = [json.loads(x) for x in (tmp_path / "out" / "results.jsonl").read_text().splitlines()]
    assert [x["method"] for x in lines] == ["FT", "FT+DASA"]
    assert pipeline.run_ft(replace(cfg, augment="none"))["run_key"] == lines[0]["run_key"]

    # a rerun reuses the selection: no features, no training
    monkeypatch.setattr(representations, "extract", lambda *a, **k: pytest.fail("features again"))
    monkeypatch.setattr(pipeline, "train_model", lambda *a, **k: pytest.fail("trained again"))
    assert pipeline.run_ft(cfg)["id_test"] == ft["id_test"]
    monkeypatch.undo()
    monkeypatch.setenv("DARL_CACHE", str(tmp_path / "cache"))
    # DaRL: DASA-augmented train, then LPFT with OCC in the fine-tuning stage, on the same selection
    darl = pipeline.run_lpft(replace(cfg, occ_lambda=0.5, alphas=[0.0, 0.5, 1.0]))
    assert darl["method"] == "LPFT+OCC+DASA" and darl["augmentation"] == aug
    assert darl["sizes"]["train"] == aug["train_after"]


def test_tables_of_data_text_are_escaped():
    from darl_utils.tables import escaped_table
    html = escaped_table(pd.DataFrame({"query": ["<script>alert(1)</script>"], "item": ["a & b"], "score": [99.5]}))
    assert "<script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html and "a &amp; b" in html
    assert "99.50" in html


def test_select_command_needs_an_augmentation(pairs_csv, tiny_encoder, tmp_path, capsys):
    args = ["select", "--data", str(pairs_csv), "--dataset", "csv", "--backbone", tiny_encoder,
            "--out-dir", str(tmp_path / "out"), "--device", "cpu", "--no-progress"]
    assert cli(args) == 2
    assert "augment: 'none' selects nothing" in capsys.readouterr().err
    assert cli(args + ["--augment", "random", "--dasa-budget", "12"]) == 0
    assert "random: added 12 of B=12 pool pairs" in capsys.readouterr().out


def test_normalised_mahalanobis_scores_unit_length_features():
    from darl_utils.ood import Mahalanobis
    rng = np.random.default_rng(0)
    train, y = rng.normal(size=(200, 5)) + 2, rng.integers(0, 3, 200)
    parts = {"id_val": rng.normal(size=(30, 5)) + 2, "pool": rng.normal(size=(40, 5)) * 3}
    unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731
    got = dasa.score_features(train, y, parts, k=5, search="exact", combination="mean", mahalanobis="normalised")
    expected = Mahalanobis(unit(train), y).score(unit(parts["pool"]))
    assert np.allclose(got["pool"]["mahalanobis_raw"], expected, rtol=1e-5)
    raw = dasa.score_features(train, y, parts, k=5, search="exact", combination="mean")
    assert np.array_equal(raw["pool"]["knn_raw"], got["pool"]["knn_raw"])  # kNN normalises either way
    assert not np.allclose(raw["pool"]["mahalanobis_raw"], got["pool"]["mahalanobis_raw"])


def test_dasa_under_two_processes(pairs_csv, tiny_encoder, tmp_path):
    """The source FT under DDP, features on process 0, selection on process 0, FT+DASA under DDP: no deadlock."""
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "darl_utils", "ft", "--dataset", "csv", "--data", str(pairs_csv), "--backbone", tiny_encoder,
           "--max-length", "32", "--epochs", "1", "--batch-size", "8", "--lr", "2e-3", "--device", "cpu",
           "--no-progress", "--out-dir", str(out), "--augment", "dasa", "--dasa-budget", "25"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DARL_CACHE": str(tmp_path / "cache")}
    run = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    [saved] = out.glob("ft-dasa-query_form-seed0-*.json")
    result = json.loads(saved.read_text())
    assert result["world_size"] == 2 and result["augmentation"]["added"] == 25
    assert [json.loads(x)["method"] for x in (out / "results.jsonl").read_text().splitlines()] == ["FT", "FT+DASA"]


def test_length_matched_rows_copy_the_token_counts_of_the_selection():
    rng = np.random.default_rng(0)
    tokens = rng.integers(5, 40, 2000)
    selected = np.flatnonzero(tokens < 12)[:100]  # a selection of short pairs
    rows = dasa.length_matched_rows(tokens, selected, seed=1)
    assert len(rows) == len(set(rows)) == 100
    assert np.array_equal(np.sort(tokens[rows]), np.sort(tokens[selected]))  # the same counts, exactly
    assert not np.array_equal(np.sort(rows), np.sort(selected))  # but other pairs, drawn at random
    assert np.array_equal(rows, dasa.length_matched_rows(tokens, selected, seed=1))
    few = np.array([5, 5, 9, 30, 30, 31])  # one pair of count 9, two wanted: the nearest count fills in
    assert sorted(few[dasa.length_matched_rows(few, np.array([2, 2]), seed=0)].tolist()) == [5, 9]


def test_a_score_that_only_measures_length_is_exposed():
    from darl_utils.representations import length_correlation, length_stratified_auroc
    rng = np.random.default_rng(0)
    is_ood = rng.random(4000) < 0.5
    tokens = rng.poisson(np.where(is_ood, 30, 22))  # OOD pairs are longer, as under query_form
    by_length = tokens + rng.normal(0, 0.1, len(tokens))  # a detector that sees only length
    overall = dasa.quality_by_length(by_length, is_ood, tokens)
    # held within a fifth of the pool's lengths, most of what it saw is gone (the rest: length inside a bin)
    assert overall["auroc"] > 0.85 and overall["auroc_within_length"] < overall["auroc"] - 0.2
    assert length_correlation(by_length, tokens) > 0.95
    knows = is_ood + rng.normal(0, 0.8, len(tokens))  # a detector that sees OOD, whatever the length
    assert length_stratified_auroc(knows, is_ood, tokens)["auroc_within_length"] > 0.75


def test_the_source_model_resets_every_occ_setting(pairs_csv, tiny_encoder, tmp_path):
    cfg = tiny_config(pairs_csv, tiny_encoder, tmp_path / "out", augment="dasa", occ_lambda=0.5, occ_rho=0.3,
                      occ_prior="uniform", occ_direction="forward", occ_stage="both")
    source, plain = dasa.source_config(cfg), tiny_config(pairs_csv, tiny_encoder, tmp_path / "out")
    assert source == plain  # plain FT on train: the same run, whatever OCC setting the augmented run uses
    assert pipeline.run_folder("FT", source, exclude=pipeline.LPFT_ONLY) == \
        pipeline.run_folder("FT", plain, exclude=pipeline.LPFT_ONLY)
