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


# A child process that runs one call with a hook: when `stage` starts it writes a marker file (and, with
# log, appends a line per call), then carries on; the parent kills it there.
CHILD = """
import json, signal, sys, time
from pathlib import Path
signal.signal(signal.SIGINT, signal.default_int_handler)  # Ctrl-C as in a terminal, even if launched in background
from darl_utils import dasa, pipeline, representations
from darl_utils.config import RunConfig
marker, log, stage, what = Path(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
cfg = RunConfig(**json.loads(sys.argv[5]))
module = {"train_model": pipeline, "extract": representations, "score_features": dasa}[stage]
real = getattr(module, stage)
def hooked(*a, **k):
    if log:
        with open(log, "a") as f:
            f.write(stage + "\\n")
    marker.write_text("started")
    time.sleep(float(sys.argv[6]))  # room for the parent's signal before the real work ends
    return real(*a, **k)
setattr(module, stage, hooked)
record = {"ft": pipeline.run_ft, "lpft": pipeline.run_lpft}[what](cfg)
print(json.dumps(record["id_test"]))
"""


def start_child(tmp_path, cfg, stage, what="ft", log="", pause=30.0, name="child"):
    import json
    import os
    import subprocess
    import sys
    marker = tmp_path / f"{name}.started"
    settings = {k: v for k, v in cfg.__dict__.items()}
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(marker), log, stage, what, json.dumps(settings),
                             str(pause)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return proc, marker


def wait_for(marker, proc, timeout=240):
    import time
    deadline = time.time() + timeout
    while not marker.exists():
        if proc.poll() is not None:
            pytest.fail(f"the child ended before its stage: {proc.stderr.read()[-2000:]}")
        if time.time() > deadline:
            proc.kill()
            pytest.fail("the child never reached its stage")
        time.sleep(0.2)


@pytest.mark.slow
@pytest.mark.parametrize("stage, what, sig", [("train_model", "ft", "SIGKILL"), ("train_model", "ft", "SIGINT"),
                                              ("extract", "ft", "SIGKILL"), ("score_features", "ft", "SIGKILL"),
                                              ("train_model", "lpft", "SIGKILL")])
def test_a_killed_run_resumes_and_gives_the_uninterrupted_numbers(pairs_csv, tiny_encoder, tmp_path, monkeypatch,
                                                                  stage, what, sig):
    """Killed while it fine-tunes, extracts DASA's features or scores the pool: the rerun finishes, reads no
    partial file, and gives the numbers of a run never interrupted (same seed, CPU)."""
    import signal
    augment = "none" if stage == "train_model" and what == "ft" else "dasa"
    cfg = tiny_config(pairs_csv, tiny_encoder, tmp_path / "out", epochs=2, augment=augment,
                      alphas=[0.0, 1.0], occ_lambda=0.5 if what == "lpft" else 0.0)
    monkeypatch.setenv("DARL_CACHE", str(tmp_path / "killed"))
    proc, marker = start_child(tmp_path, cfg, stage, what)
    wait_for(marker, proc)
    proc.send_signal(getattr(signal, sig))
    proc.communicate(timeout=120)
    assert proc.returncode != 0  # it did die in the middle
    run = {"ft": pipeline.run_ft, "lpft": pipeline.run_lpft}[what]
    resumed = run(cfg)
    monkeypatch.setenv("DARL_CACHE", str(tmp_path / "clean"))
    clean = run(cfg)
    assert resumed["id_test"] == clean["id_test"] and resumed["ood_test"] == clean["ood_test"]
    assert not list((tmp_path / "killed").rglob("*.tmp"))  # the rerun left no partial file behind either


@pytest.mark.slow
def test_two_processes_on_one_run_train_it_once(pairs_csv, tiny_encoder, tmp_path, monkeypatch):
    """Two runners on the same cache: the second waits for the first's run and reuses it."""
    import json
    cfg = tiny_config(pairs_csv, tiny_encoder, tmp_path / "out", epochs=2)
    monkeypatch.setenv("DARL_CACHE", str(tmp_path / "cache"))
    log = tmp_path / "trainings.log"
    first, marker = start_child(tmp_path, cfg, "train_model", log=str(log), pause=3.0, name="first")
    wait_for(marker, first)  # the first holds the run's lock and is training
    second, _ = start_child(tmp_path, cfg, "train_model", log=str(log), pause=3.0, name="second")
    out_first, err_first = first.communicate(timeout=300)
    out_second, err_second = second.communicate(timeout=300)
    assert first.returncode == second.returncode == 0, err_first[-2000:] + err_second[-2000:]
    assert log.read_text().splitlines() == ["train_model"]  # one training, not two
    assert "waiting for another process" in out_second
    assert json.loads(out_first.splitlines()[-1]) == json.loads(out_second.splitlines()[-1])


def test_a_full_disk_during_a_checkpoint_write_is_one_clear_error(pairs_csv, tiny_encoder, tmp_path, monkeypatch):
    """The disk fills while a run writes its weights (simulated): one error that names the file and the way
    out, no partial file left, and the runs finished before it untouched and still reused."""
    import errno

    from darl_utils.cache import CacheWriteError
    monkeypatch.setenv("DARL_CACHE", str(tmp_path / "cache"))
    cfg = tiny_config(pairs_csv, tiny_encoder, tmp_path / "out", epochs=1)
    finished = pipeline.run_ft(cfg)
    real_save = pipeline.save_model

    def fill_the_disk(model, name):
        Path(name).write_bytes(b"half a checkpoint")
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(pipeline, "save_model", fill_the_disk)
    with pytest.raises(CacheWriteError, match=r"cannot write model\.safetensors into the cache \(the disk is full\)"):
        pipeline.run_ft(replace(cfg, seed=1))
    assert not list((tmp_path / "cache").rglob("*.tmp"))
    monkeypatch.setattr(pipeline, "save_model", real_save)
    forbid_work(monkeypatch)
    assert pipeline.run_ft(cfg)["id_test"] == finished["id_test"]  # the earlier run: intact, reused
