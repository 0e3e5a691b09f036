"""Results as files (docs/STUDY.md section 6): a JSON record per run and one results.jsonl line per evaluated
model, in the out_dir of the notebook or command that asked for the run; per-pair predictions beside the run in
the cache. This module is their one writer and reader: the pipeline writes, notebooks, tables, verdicts, the
runner and the benchmarks read.

Paths stored in a record that point into the cache are relative to it, so a cache copied elsewhere (and named by
DARL_CACHE) still serves every record.
"""
from __future__ import annotations

import functools
import json
import os
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file

from .config import RunConfig, method_name
from .data import cache_dir
from .distributed import is_main_process

EVAL_PARTS = ("id_val", "id_test", "ood_test")


def stored_path(path: str | Path) -> str:
    """How a record names a file: relative to the cache when it lies inside it, else as given."""
    path, root = Path(path).resolve(), cache_dir().resolve()
    return str(path.relative_to(root)) if path.is_relative_to(root) else str(path)


def cached_path(stored: str) -> Path:
    """The file a record names: a relative path is inside the current cache (an absolute one, from records made
    before paths were stored relative, is taken as is)."""
    return Path(stored) if Path(stored).is_absolute() else cache_dir() / stored


def sweep_lines(result: dict) -> list[dict]:
    """One results.jsonl line per evaluated model of an LPFT run: LP (alpha = 0) and LPFT at every swept alpha."""
    common = {k: v for k, v in result.items() if k not in ("sweep", "lp_fit", "fit") + EVAL_PARTS}
    lines, alphas = [], result["config"]["alphas"]
    for s in result["sweep"]:
        if s["alpha"] == 0:
            lines.append({**common, "method": method_name("LP", RunConfig(**result["config"])), "alpha": 0.0,
                          "selected": False, **s})
        if s["alpha"] in alphas:
            lines.append({**common, "alpha": s["alpha"], "selected": s["alpha"] == result["alpha_star"], **s})
    return lines


def lines_of(records: list[dict]) -> list[dict]:
    """The evaluation lines of run records: an LPFT run gives LP and one line per alpha, others themselves."""
    return [line for r in records for line in (sweep_lines(r) if "sweep" in r else [r])]


def publish(result: dict, out_dir: str | Path) -> dict:
    """Write the run's JSON into out_dir and its evaluation lines into out_dir/results.jsonl, once per run:
    taking a finished run from the cache into the same folder again adds nothing. Process 0 only."""
    if not is_main_process():
        return result
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    c = result["config"]
    slug = result["method"].lower().replace("+", "-")
    path = out_dir / f"{slug}-{c['protocol']}-seed{c['seed']}-{result['run_key']}.json"
    text = json.dumps(result, indent=2)
    if path.exists() and path.read_text() == text:
        return result
    path.write_text(text)
    with open(out_dir / "results.jsonl", "a") as f:
        for line in lines_of([result]):
            f.write(json.dumps(line) + "\n")
    return result


def read_records(path: str | Path) -> list[dict]:
    """The lines of a results.jsonl, a later line of the same evaluation (run, method, alpha) replacing an
    earlier one."""
    latest = {}
    for line in Path(path).read_text().splitlines():
        if line.strip():
            r = json.loads(line)
            # older lines carry no run_key: the settings themselves identify the run
            run = r.get("run_key") or json.dumps([r["method"], r["config"]], sort_keys=True)
            latest[(run, r["method"], r.get("alpha"))] = r
    return list(latest.values())


def report_records(report: str | Path) -> list[dict]:
    """Every evaluation line of a report's notebooks (report/results/<notebook>/results.jsonl), not the
    previous run's (<notebook>.previous) that the runner keeps beside them."""
    paths = sorted(Path(report).glob("results/*/results.jsonl"))
    return [r for path in paths if not path.parent.name.endswith(".previous") for r in read_records(path)]


def run_records(out_dir: str | Path) -> list[dict]:
    """The run records (one JSON per run) that a notebook or command wrote into out_dir."""
    return [json.loads(p.read_text()) for p in sorted(Path(out_dir).glob("*.json"))]


@functools.lru_cache(maxsize=256)
def _saved(path: str, stamp: tuple) -> dict:
    return load_file(path)  # stamp (mtime, size) is part of the cache key: a rewritten file is read again


def saved_predictions(record: dict, part: str, names: tuple = ("probs", "labels")) -> tuple[np.ndarray, ...]:
    """Arrays of one evaluated model's saved predictions on `part` (an LPFT line: at its alpha)."""
    prefix = f"alpha={record['alpha']:g}/" if record.get("alpha") is not None else ""
    path = cached_path(record["predictions"])
    stat = os.stat(path)
    saved = _saved(str(path), (stat.st_mtime_ns, stat.st_size))
    return tuple(saved[f"{prefix}{part}/{name}"] for name in names)


def predictions_of(record: dict, part: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-pair probabilities, gold degrees and query codes of one evaluated model (an LPFT line: its alpha)."""
    try:
        return saved_predictions(record, part, ("probs", "labels", "queries"))
    except KeyError:
        raise ValueError(f"{record['method']}: its predictions ({record['predictions']}) carry no query codes; "
                         "they predate the intervals: clear data/cache/runs and rerun") from None
