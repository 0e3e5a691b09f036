"""Cache keys carry the code that computes results: a change to it recomputes, a change elsewhere does not."""
import shutil
from dataclasses import replace

import pytest

from darl_utils import cache, dasa, pipeline
from darl_utils.cache import COMPUTING_MODULES, PACKAGE, code_fingerprint
from darl_utils.config import RunConfig


@pytest.fixture
def package_copy(tmp_path):
    target = tmp_path / "darl_utils"
    shutil.copytree(PACKAGE, target, ignore=shutil.ignore_patterns("__pycache__"))
    return target


def _edit(path, old, new):
    text = path.read_text()
    assert old in text, f"{old!r} not in {path.name}"
    path.write_text(text.replace(old, new, 1))


def test_the_copy_has_the_same_fingerprint(package_copy):
    assert code_fingerprint(package_copy) == code_fingerprint(PACKAGE)


@pytest.mark.parametrize("module, old, new", [
    ("losses.py", "return ce + self.lam * kl.mean()", "return ce + 2 * self.lam * kl.mean()"),
    ("metrics.py", "ECE_BINS = 15", "ECE_BINS = 10"),
    ("splits.py", "def make_split(", "def _unused():\n    return 1\n\n\ndef make_split("),
    ("training.py", "def seed_everything(seed: int) -> None:\n",
     "def seed_everything(seed: int) -> None:\n    seed += 1\n"),
    ("ood.py", "return np.sort(order[:budget])", "return np.sort(order[:budget])"),  # control: same code
])
def test_a_change_to_the_computing_code_changes_the_fingerprint(package_copy, module, old, new):
    before = code_fingerprint(package_copy)
    _edit(package_copy / module, old, new)
    code_fingerprint.cache_clear()
    changed = code_fingerprint(package_copy) != before
    assert changed == (old != new), module


@pytest.mark.parametrize("module, old, new", [
    ("runner.py", "def study_notebooks()", "def study_notebooks_renamed()"),  # the runner
    ("tables.py", "def escaped_table(", "def escaped_html_table("),  # the report rendering
    ("losses.py", "    \"\"\"Raise ValueError naming the bad OCC setting.\"\"\"", "    \"\"\"Another docstring.\"\"\""),
    ("losses.py", "PRIORS = (\"ordinal\", \"uniform\")", "PRIORS = (\"ordinal\", \"uniform\")  # a new comment"),
])
def test_prose_runner_and_rendering_keep_the_fingerprint(package_copy, module, old, new):
    before = code_fingerprint(package_copy)
    _edit(package_copy / module, old, new)
    code_fingerprint.cache_clear()
    assert code_fingerprint(package_copy) == before


def test_the_fingerprint_covers_the_computing_modules():
    for name in ("data", "splits", "modeling", "training", "losses", "metrics", "interpolation", "ood", "dasa",
                 "features", "pipeline", "umap_map"):
        assert name in COMPUTING_MODULES and (PACKAGE / f"{name}.py").exists()
    assert "runner" not in COMPUTING_MODULES and "index_page" not in COMPUTING_MODULES


def test_every_cache_key_moves_with_the_code(pairs_csv, tmp_path, monkeypatch):
    cfg = RunConfig(dataset="csv", data=str(pairs_csv), out_dir=str(tmp_path / "out"), augment="dasa")
    split_key = lambda c: c.key("dataset", "data", "protocol", "split_seed")  # noqa: E731 (as prepare_split)
    before = (pipeline.run_folder("FT", cfg), dasa.selection_folder(cfg), split_key(cfg))
    monkeypatch.setattr(cache, "code_fingerprint", lambda *a, **k: "another-code")
    after = (pipeline.run_folder("FT", cfg), dasa.selection_folder(cfg), split_key(cfg))
    assert all(a != b for a, b in zip(before, after))


def test_the_split_follows_the_seed_unless_pinned(pairs_csv):
    cfg = RunConfig(dataset="csv", data=str(pairs_csv))
    assert cfg.split_salt == 0 and replace(cfg, seed=3).split_salt == 3
    assert replace(cfg, seed=3, split_seed=1).split_salt == 1
    # -1 and the seed it stands for are the same split, so they share one cache key
    assert replace(cfg, seed=2).key("split_seed") == replace(cfg, seed=2, split_seed=2).key("split_seed")


def test_a_minilm_stand_in_gets_its_own_run_keys(tmp_path, monkeypatch, pairs_csv):
    """DARL_MINILM (the GPU bundle's float16 copy) is other weights than the package's MiniLM: its runs, probes
    and selections must not be found under the package's keys, and other backbones are unaffected."""
    from darl_utils.cache import weights_tag
    from darl_utils.pipeline import run_folder
    cfg = RunConfig(dataset="csv", data=str(pairs_csv), backbone="minilm")
    before = run_folder("FT", cfg)
    copy = tmp_path / "minilm"
    copy.mkdir()
    (copy / "model.safetensors").write_bytes(b"\0" * 10)
    monkeypatch.setenv("DARL_MINILM", str(copy))
    assert weights_tag("minilm") == weights_tag("all-MiniLM-L6-v2") == "|minilm-weights=10"
    assert run_folder("FT", cfg) != before
    assert weights_tag(str(tmp_path / "other-model")) == ""


def test_two_jobs_wanting_one_entry_compute_it_once(tmp_path):
    """The second caller waits on the entry's lock, then reads what the first one wrote."""
    import threading
    import time

    import numpy as np

    from darl_utils.cache import computed_once
    calls, results = [], []

    def compute():
        calls.append(1)
        time.sleep(0.5)  # long enough for the other caller to arrive while this one computes
        return {"features": np.arange(6, dtype=np.float32).reshape(2, 3)}

    path = tmp_path / "features" / "entry.safetensors"
    workers = [threading.Thread(target=lambda: results.append(computed_once(path, compute))) for _ in range(2)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert len(calls) == 1
    assert len(results) == 2 and all(np.array_equal(r["features"], results[0]["features"]) for r in results)


@pytest.mark.parametrize("held, says_waiting", [(0.05, False), (1.5, True)])
def test_only_a_real_wait_says_waiting(tmp_path, capsys, held, says_waiting):
    """A report's worker tests a run's lock by taking it for an instant (entry_busy): a notebook that meets the
    lock then is not told it waits for another process. A lock held by a run in training is a real wait."""
    import threading
    import time
    folder = tmp_path / "runs" / "ft-0123"
    taken, release = threading.Event(), threading.Event()

    def holder():
        with cache.entry_lock(folder):
            taken.set()
            release.wait(held)

    thread = threading.Thread(target=holder)
    thread.start()
    taken.wait(10)
    capsys.readouterr()
    started = time.monotonic()
    with cache.entry_lock(folder):
        waited = time.monotonic() - started
    thread.join()
    assert ("waiting for another process to finish ft-0123" in capsys.readouterr().out) == says_waiting
    assert waited >= held - 0.05 - 0.01  # the lock was really held until the holder let go
