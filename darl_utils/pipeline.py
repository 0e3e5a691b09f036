"""From a RunConfig to results on disk: data -> split -> model -> fine-tuning -> ID/OOD evaluation.

    python -m darl_utils ft --data train.csv.gz                   # CPU or one GPU
    torchrun --nproc_per_node 4 -m darl_utils ft --data ...       # several GPUs (DDP); accelerate launch works too
"""
from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import asdict
from pathlib import Path

import pandas as pd
import torch
from safetensors.torch import save_model

from .config import RunConfig
from .data import cache_dir, load_pairs
from .metrics import classification_metrics
from .modeling import RelevanceModel, encode_pairs, load_backbone, model_card
from .splits import Split, make_split, subsample
from .training import (Encoded, gather, parameter_checksum, predict_logits, seed_everything, setup_runtime,
                       train_model)


def load_data(cfg: RunConfig):
    options = {}
    if cfg.dataset == "homedepot":
        options["scheme"] = cfg.scheme
    elif cfg.dataset == "csv":
        options.update(cfg.csv_columns)
    return load_pairs(cfg.dataset, cfg.data_path(), **options)


def data_fingerprint(path: Path) -> str:
    """Size and modification time of the data (every file of a folder): a changed file gets a new cache key."""
    files = sorted(path.rglob("*")) if path.is_dir() else [path]
    return ";".join(f"{f.name}:{f.stat().st_size}:{int(f.stat().st_mtime)}" for f in files if f.is_file())


def prepare_split(cfg: RunConfig) -> Split:
    """The split for the config's data and protocol, saved with its summary under the cache (once)."""
    pairs = load_data(cfg)
    split = make_split(pairs.frame, cfg.split_config(), cfg.dataset)
    split.load_dropped = pairs.dropped
    key = cfg.key("dataset", "data", "scheme", "csv_columns", "protocol", "held_out", "split_seed",
                  extra=data_fingerprint(cfg.data_path()))
    split.directory = cache_dir() / "splits" / f"{cfg.dataset}-{cfg.protocol}-{key}"
    first = int(os.environ.get("RANK", "0")) == 0  # under torchrun the others compute it in memory only
    if first and not (split.directory / "split.json").exists():
        split.save(split.directory)
    return split


def sized_parts(split: Split, cfg: RunConfig) -> dict[str, pd.DataFrame]:
    """train, id_val, id_test and ood_test, sub-sampled by whole queries when the config asks."""
    return {"train": subsample(split["train"], cfg.max_train_pairs, cfg.split_seed),
            **{p: subsample(split[p], cfg.max_eval_pairs, cfg.split_seed) for p in ("id_val", "id_test", "ood_test")}}


def encode(df: pd.DataFrame, tokenizer, kind: str, max_length: int) -> Encoded:
    return Encoded(encode_pairs(tokenizer, df["query"], df["item"], kind, max_length), df["label"].to_numpy())


def evaluate(model, parts: dict, tokenizer, kind: str, cfg: RunConfig, runtime) -> dict:
    out = {}
    for name in ("id_test", "ood_test"):
        data = encode(parts[name], tokenizer, kind, cfg.max_length)
        logits = predict_logits(model, data, tokenizer, cfg.eval_batch_size, runtime, cfg.progress and runtime.main)
        out[name] = classification_metrics(data.labels, logits.argmax(1))
    return out


def environment() -> dict:
    """What a reader needs to place a timing or a figure: the machine and the versions."""
    import transformers
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"device": gpu or f"CPU ({platform.machine()}, {os.cpu_count()} cores)", "cuda": torch.version.cuda,
            "python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "cpu_threads": torch.get_num_threads()}


def run_ft(cfg: RunConfig) -> dict:
    """Plain fine-tuning (FT): fresh head, all weights trained with cross-entropy. Returns the result record."""
    cfg.validate()
    runtime = setup_runtime(cfg.device)
    started = time.time()
    if not cfg.progress:
        from transformers.utils import logging as hf_logging
        hf_logging.disable_progress_bar()
    seed_everything(cfg.seed)
    backbone, tokenizer, kind, where = load_backbone(cfg.backbone)  # first: a bad backbone fails fast
    split = prepare_split(cfg)
    parts = sized_parts(split, cfg)
    model = RelevanceModel(backbone, kind, cfg.dropout)
    train, val = (encode(parts[p], tokenizer, kind, cfg.max_length) for p in ("train", "id_val"))
    fit = train_model(model, train, val, tokenizer, cfg.train_settings(), runtime)
    checksums = gather(parameter_checksum(model))
    result = None
    if runtime.main:
        metrics = evaluate(model, parts, tokenizer, kind, cfg, runtime)
        result = {"method": "FT", "run_key": cfg.key(), "config": asdict(cfg), "model": model_card(where, kind),
                  "sizes": {p: len(df) for p, df in parts.items()}, "split_dir": str(split.directory),
                  "held_out": split.held_out, "load_dropped": split.load_dropped,
                  "leakage_dropped": split.leakage_dropped, "fit": fit, **metrics,
                  "gap_macro_f1": metrics["id_test"]["macro_f1"] - metrics["ood_test"]["macro_f1"],
                  "world_size": runtime.world, "param_checksums": checksums,
                  "environment": environment(), "seconds": round(time.time() - started, 1),
                  "finished": time.strftime("%Y-%m-%dT%H:%M:%S")}
        result["checkpoint"] = str(save_checkpoint(model, cfg))
        write_result(result, Path(cfg.out_dir))
    if torch.distributed.is_initialized():
        torch.distributed.barrier()  # the process group itself is closed by the command line, once
    return result


def save_checkpoint(model, cfg: RunConfig) -> Path:
    where = cache_dir() / "checkpoints" / f"ft-{cfg.key(extra=data_fingerprint(cfg.data_path()))}"
    where.mkdir(parents=True, exist_ok=True)
    save_model(getattr(model, "module", model), str(where / "model.safetensors"))
    (where / "config.json").write_text(json.dumps(asdict(cfg), indent=2))
    return where


def write_result(result: dict, out_dir: Path) -> Path:
    """One JSON file per run and one line in results.jsonl (plots and tables are made from those lines)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    c = result["config"]
    name = f"{result['method'].lower()}-{c['protocol']}-seed{c['seed']}-{result['run_key']}"
    (out_dir / f"{name}.json").write_text(json.dumps(result, indent=2))
    with open(out_dir / "results.jsonl", "a") as f:
        f.write(json.dumps(result) + "\n")
    return out_dir / f"{name}.json"


def summary_line(result: dict) -> str:
    i, o = result["id_test"]["macro_f1"], result["ood_test"]["macro_f1"]
    return (f"{result['method']} {result['config']['protocol']} seed {result['config']['seed']}: "
            f"ID macro-F1 {i:.4f}  OOD macro-F1 {o:.4f}  gap {i - o:+.4f}  ({result['seconds']} s)")
