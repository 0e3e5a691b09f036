"""What survives what (docs/STUDY.md section 7): a cache copied elsewhere keeps every hit; paths stored in records
are relative to the cache."""
import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from darl_utils import pipeline, representations, results, training

from test_training import tiny_config


def darl_config(pairs_csv, tiny_encoder, out):
    return tiny_config(pairs_csv, tiny_encoder, out, epochs=2, augment="dasa", occ_lambda=0.5, alphas=[0.0, 1.0])


def forbid_work(monkeypatch):
    """Any training, probe or feature extraction from here on fails the test."""
    for module, name in ((pipeline, "train_model"), (pipeline, "train_probe"), (representations, "extract"),
                         (training, "train_model")):
        monkeypatch.setattr(module, name, lambda *a, _n=name, **k: pytest.fail(f"{_n} ran on a cache hit"))


def test_a_moved_cache_keeps_every_hit(pairs_csv, tiny_encoder, tmp_path, monkeypatch):
    first = tmp_path / "first-cache"
    monkeypatch.setenv("DARL_CACHE", str(first))
    cfg = darl_config(pairs_csv, tiny_encoder, tmp_path / "out")
    darl = pipeline.run_lpft(cfg)  # DaRL: the source FT, DASA's selection, LP, LPFT+OCC and its sweep
    for stored in (darl["checkpoint"], darl["predictions"], darl["split_dir"], darl["augmentation"]["folder"],
                   darl["augmentation"]["source_run"], *darl["augmentation"]["features"].values()):
        assert not Path(stored).is_absolute(), stored
    # copied without its timestamps, and the original gone: nothing may point back to it
    moved = tmp_path / "elsewhere" / "cache"
    shutil.copytree(first, moved, copy_function=shutil.copy)
    shutil.rmtree(first)
    monkeypatch.setenv("DARL_CACHE", str(moved))
    forbid_work(monkeypatch)
    again = pipeline.run_lpft(cfg)
    assert again["id_test"] == darl["id_test"] and again["alpha_star"] == darl["alpha_star"]
    assert pipeline.prepare(cfg).augmentation == darl["augmentation"]  # the selection, not a new one
    probs, labels, queries = results.predictions_of({**darl, "alpha": darl["alpha_star"]}, "ood_test")
    assert len(probs) == len(labels) == len(queries) == darl["ood_test"]["n"]


def test_a_moved_cache_reuses_the_probe_and_the_selection(pairs_csv, tiny_encoder, tmp_path, monkeypatch):
    """With the LPFT run itself gone, a rerun in the moved cache trains its FT stage only: the probe's key (which
    names DASA's selection) and the selection are found where they were copied."""
    first = tmp_path / "first-cache"
    monkeypatch.setenv("DARL_CACHE", str(first))
    cfg = darl_config(pairs_csv, tiny_encoder, tmp_path / "out")
    darl = pipeline.run_lpft(cfg)
    moved = tmp_path / "moved"
    shutil.copytree(first, moved, copy_function=shutil.copy)
    shutil.rmtree(first)
    shutil.rmtree(moved / darl["checkpoint"])  # the LPFT run's folder (stored relative to the cache)
    monkeypatch.setenv("DARL_CACHE", str(moved))
    trained = []
    real_train = pipeline.train_model
    monkeypatch.setattr(pipeline, "train_probe", lambda *a, **k: pytest.fail("the probe was trained again"))
    monkeypatch.setattr(representations, "extract", lambda *a, **k: pytest.fail("DASA's features again"))
    monkeypatch.setattr(pipeline, "train_model", lambda *a, **k: trained.append(1) or real_train(*a, **k))
    again = pipeline.run_lpft(replace(cfg, out_dir=str(tmp_path / "out2")))
    assert len(trained) == 1  # LPFT's FT stage only: the source FT and the probe came from the copy
    assert again["lp_fit"] == darl["lp_fit"] and again["augmentation"] == darl["augmentation"]
    assert again["id_test"] == darl["id_test"]  # the same seed retrains to the same weights
