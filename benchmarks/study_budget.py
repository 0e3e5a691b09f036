"""How a profile's time adds up, before it runs: the training runs each notebook makes, their training and
inference samples from the split's real part sizes, and the time at measured (or given) samples per second.

    python benchmarks/study_budget.py --profile quick --data train.csv.gz          # rates measured here
    python benchmarks/study_budget.py --profile full --data train.csv.gz \\
        --train-rate 11500 --infer-rate 27000 --overhead 15 \\
        --run-seconds 1 --probe-seconds 14 --first 05                              # as measured on an H100

A run another notebook already trained with the same settings is counted once (the cache shares it). Training
counts every epoch (early stopping can only make it shorter), inference every backbone pass: id_val after each
epoch, then id_test and ood_test (id_val's logits come from training). An LPFT run adds the probe's pretrained
features not cached by an earlier run (train as it augments it, and the three evaluated parts, off which LP's
logits are read) and each alpha strictly between 0 and 1 on all three parts. DASA's source model scores train
and both pools once per seed and representation pass (the selection is then shared by every notebook).
`--overhead` is the seconds per notebook outside the runs (kernel start, imports, model load, figures);
`--run-seconds` per run and `--probe-seconds` per LPFT run that trains its probe are what the samples leave out
(docs/measurements.md fits them to the H100 run: about 1 s and 14 s).
`--first 05` plans the order that `report --first 05` runs: 05 then trains the runs it shares with the others.
The run plan is darl_utils/plan.py's, which tests/test_runner.py checks against the runs that a real smoke-profile
report trains.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

from darl_utils import pipeline
from darl_utils.config import RunConfig
from darl_utils.dasa import budget_size, unlabelled_pool
from darl_utils.notebooks import study_config
from darl_utils.plan import planned_runs
from darl_utils.runner import (
    load_profile,
    notebook_parameters,
    resolve,
    run_order,
    study_notebooks,
    with_synthetic_assets,
)

REPRESENTATION_PASSES = 2  # DASA's representations: one pass over the pairs, one over the queries alone (upper bound)


def profile_parameters(spec: dict) -> dict[str, dict]:
    """Each notebook's parameters as it will run them: its defaults, then the profile's (checked by the runner)."""
    return notebook_parameters(resolve(spec, study_notebooks(), Path("reports")))


def part_sizes(cfg: RunConfig) -> dict[str, int]:
    split = pipeline.prepare_split(cfg)
    sizes = {part: len(frame) for part, frame in pipeline.sized_parts(split, cfg).items()}
    pool = unlabelled_pool(split, cfg.max_pool_pairs, cfg.split_salt)  # as DASA draws it: whole queries
    sizes["pool_id"], sizes["pool_ood"] = int((~pool.is_ood).sum()), int(pool.is_ood.sum())
    sizes["added"] = budget_size(cfg.dasa_budget, sizes["train"], len(pool.frame))
    return sizes


def probe_features(cfg: RunConfig, sizes: dict[str, int]) -> dict[str, int]:
    """The pretrained features an LPFT run reads (pairs per cache entry): train as this run augments it, and the
    three evaluated parts, which every LPFT run on the same split shares (LP's logits are read off them)."""
    train = sizes["train"] + (sizes["added"] if cfg.augment != "none" else 0)
    return {f"train/{cfg.augment}": train, **{p: sizes[p] for p in ("id_val", "id_test", "ood_test")}}


def run_samples(kind: str, cfg: RunConfig, sizes: dict[str, int], cached: frozenset = frozenset()) -> tuple[int, int]:
    """(training samples, inference samples) of one run: the samples its backbone passes see, the probe features
    named in `cached` (probe_features) being on disk already (tests/test_benchmarks.py counts them in real runs)."""
    train = sizes["train"] + (sizes["added"] if cfg.augment != "none" else 0)
    tests = sizes["id_test"] + sizes["ood_test"]
    inference = cfg.epochs * sizes["id_val"] + tests
    if kind == "lpft":
        probe = sum(n for entry, n in probe_features(cfg, sizes).items() if entry not in cached)
        sweep = len(set(cfg.alphas) - {0.0, 1.0}) * (sizes["id_val"] + tests)
        inference += probe + sweep - (0 if 1.0 in cfg.alphas else tests)  # theta_FT is tested only at alpha 1
    return cfg.epochs * train, inference


def budget(params: dict[str, dict]) -> list[dict]:
    """One row per notebook: runs, training and inference samples (DASA's scoring included)."""
    rows, sized, featured, scored = [], {}, {}, set()  # the caches persist from one notebook to the next
    for name, runs in planned_runs(params).items():
        row = {"notebook": name, "runs": len(runs), "probes": 0, "train_samples": 0, "infer_samples": 0}
        for kind, cfg in runs:
            key = cfg.key("dataset", "data", "protocol", "split_seed", "seed", "max_train_pairs", "max_eval_pairs",
                          "max_pool_pairs", "dasa_budget")
            sizes = sized.setdefault(key, part_sizes(cfg))
            on_disk = featured.setdefault(key + cfg.key("backbone", "max_length", "eval_batch_size"), set())
            train, infer = run_samples(kind, cfg, sizes, frozenset(on_disk))
            row["probes"] += kind == "lpft" and f"train/{cfg.augment}" not in on_disk  # else its probe is cached
            on_disk.update(probe_features(cfg, sizes) if kind == "lpft" else {})
            row["train_samples"] += train
            row["infer_samples"] += infer
            selection = key + cfg.key("backbone", "max_length", "dasa_features")
            if cfg.augment != "none" and selection not in scored:  # the source model scores train and the pools
                scored.add(selection)
                row["infer_samples"] += REPRESENTATION_PASSES * (sizes["train"] + sizes["pool_id"]
                                                                 + sizes["pool_ood"])
        rows.append(row)
    return rows


def measured_rates(cfg: RunConfig, steps: int = 4) -> tuple[float, float]:
    """Training and inference samples per second of this machine at the config's batch sizes (real pairs)."""
    from darl_utils.training import predict_logits, train_model
    ctx = pipeline.prepare(replace(cfg, progress=False))
    train = ctx.encoded("train")
    head = type(train)(train.features[: steps * cfg.batch_size], train.labels[: steps * cfg.batch_size])
    val = type(train)(train.features[:cfg.batch_size], train.labels[:cfg.batch_size])
    settings = replace(cfg.train_settings(), epochs=1, patience=0, progress=False)
    train_model(ctx.new_model(), val, val, ctx.tokenizer, settings, ctx.runtime)  # warm-up, not timed
    started = time.perf_counter()
    train_model(ctx.new_model(), head, val, ctx.tokenizer, settings, ctx.runtime)
    train_rate = len(head) / (time.perf_counter() - started)
    started = time.perf_counter()
    predict_logits(ctx.new_model(), head, ctx.tokenizer, cfg.eval_batch_size, ctx.runtime)
    return train_rate, len(head) / (time.perf_counter() - started)


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("--profile", default="full", help="smoke | quick | full | a YAML file")
    parser.add_argument("--data", default="", help="the data file (else DARL_DATA)")
    parser.add_argument("--train-rate", type=float, default=0, help="training samples/s (0: measure here)")
    parser.add_argument("--infer-rate", type=float, default=0, help="inference samples/s (0: measure here)")
    parser.add_argument("--overhead", type=float, default=12.0, help="seconds per notebook outside the runs")
    parser.add_argument("--run-seconds", type=float, default=0.0,
                        help="seconds per training run beside its samples (model load, metrics, saving)")
    parser.add_argument("--probe-seconds", type=float, default=0.0,
                        help="seconds more per LPFT run that trains its probe (one not cached by an earlier run)")
    parser.add_argument("--first", nargs="+", default=[], metavar="NOTEBOOK",
                        help="as report --first: these notebooks run first and train the runs they share")
    args = parser.parse_args(argv)
    name, spec = load_profile(args.profile)
    spec = with_synthetic_assets(spec, Path(tempfile.mkdtemp(prefix="darl-budget-")))  # smoke: its tiny model
    if args.data:
        spec.setdefault("all", {})["data"] = args.data
    params = profile_parameters(spec)
    params = {nb.stem: params[nb.stem] for nb in run_order(study_notebooks(), args.first)}  # the report's order
    rows = budget(params)
    train_rate, infer_rate = args.train_rate, args.infer_rate
    if not (train_rate and infer_rate):
        measured = measured_rates(study_config(next(iter(params.values()))))
        train_rate, infer_rate = train_rate or measured[0], infer_rate or measured[1]
    totals = defaultdict(float)
    for row in rows:
        row["seconds"] = round(row["train_samples"] / train_rate + row["infer_samples"] / infer_rate
                               + args.overhead + row["runs"] * args.run_seconds
                               + row["probes"] * args.probe_seconds, 1)
        for k in ("runs", "train_samples", "infer_samples", "seconds"):
            totals[k] += row[k]
        row["done_after_seconds"] = round(totals["seconds"], 1)  # where a job with a time limit stands
        print(f"{row['notebook']:<22} {row['runs']:>3} runs  {row['train_samples']:>10,} train  "
              f"{row['infer_samples']:>10,} inference samples  ~{row['seconds']:>7.1f} s  "
              f"(done after ~{row['done_after_seconds']:.0f} s)")
    print(f"{'total':<22} {int(totals['runs']):>3} runs  {int(totals['train_samples']):>10,} train  "
          f"{int(totals['infer_samples']):>10,} inference samples  ~{totals['seconds'] / 60:>6.1f} min "
          f"(train {train_rate:,.0f}/s, inference {infer_rate:,.0f}/s, {args.overhead:g} s per notebook, "
          f"{args.run_seconds:g} s per run, {args.probe_seconds:g} s more per probe)")
    print(json.dumps({"profile": name, "train_rate": train_rate, "infer_rate": infer_rate, "rows": rows}))
    return rows


if __name__ == "__main__":
    main()
