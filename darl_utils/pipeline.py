"""From a RunConfig to results on disk: data -> split -> model -> training -> ID/OOD evaluation.

Each method is one function (run_ft, run_lpft) that returns its result record and leaves, under the cache,
a folder per run (weights, per-sample predictions, result.json) that later calls with the same settings reuse.

    python -m darl_utils ft --data train.csv.gz                   # CPU or one GPU
    python -m darl_utils lpft --data train.csv.gz --occ-lambda 0.5  # LPFT with OCC in the fine-tuning stage
    torchrun --nproc_per_node 4 -m darl_utils ft --data ...       # several GPUs (DDP); accelerate launch works too
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from safetensors.numpy import save_file
from safetensors.torch import load_file as load_torch
from safetensors.torch import save_file as save_torch
from safetensors.torch import save_model

from .cache import atomic_write, data_fingerprint, entry_lock, environment, processes_tag, weights_tag
from .config import LPFT_ONLY, RunConfig, method_name
from .dasa import augment_exclusions, augmented_train
from .data import cache_dir, load_pairs
from .distributed import broadcast, gather, is_main_process, wait_for_everyone
from .features import cached_features, text_hash
from .interpolation import choose_alpha, interpolate
from .losses import make_loss
from .metrics import evaluate_logits, softmax
from .modeling import RelevanceModel, encode_pairs, load_backbone, model_card
from .results import EVAL_PARTS, publish, stored_path
from .splits import Split, make_split, subsample
from .tokens import cached_encoding, tokenizer_tag
from .training import (
    Encoded,
    Runtime,
    head_logits,
    parameter_checksum,
    predict_logits,
    seed_everything,
    setup_runtime,
    train_model,
    train_probe,
)


def load_data(cfg: RunConfig):
    options = {}
    if cfg.dataset == "homedepot":
        options["scheme"] = cfg.scheme
    elif cfg.dataset == "csv":
        options.update(cfg.csv_columns)
    return load_pairs(cfg.dataset, cfg.data_path(), **options)


_MEMO: dict = {}  # per process: splits and tokenised parts, reused by every run of one notebook or command
MEMO_SIZE = 64


def _memo(key, make):
    """make() once per key in this process (a run never mutates what it gets)."""
    if key not in _MEMO:
        if len(_MEMO) >= MEMO_SIZE:
            _MEMO.pop(next(iter(_MEMO)))  # the oldest goes first
        _MEMO[key] = make()
    return _MEMO[key]


def prepare_split(cfg: RunConfig) -> Split:
    """The split for the config's data and protocol, saved with its summary under the cache (once)."""
    key = cfg.key("dataset", "data", "scheme", "csv_columns", "protocol", "held_out", "split_seed",
                  extra=data_fingerprint(cfg.data_path()))
    return _memo(("split", key, str(cache_dir())), lambda: _make_split(cfg, key))


def _make_split(cfg: RunConfig, key: str) -> Split:
    pairs = load_data(cfg)
    split = make_split(pairs.frame, cfg.split_config(), cfg.dataset)
    split.load_dropped = pairs.dropped
    split.directory = cache_dir() / "splits" / f"{cfg.dataset}-{cfg.protocol}-{key}"
    # under torchrun the others compute it in memory only
    if is_main_process() and not (split.directory / "split.json").exists():
        split.save(split.directory)
    return split


def sized_parts(split: Split, cfg: RunConfig) -> dict[str, pd.DataFrame]:
    """train, id_val, id_test and ood_test, sub-sampled by whole queries when the config asks."""
    salt = cfg.split_salt
    return {"train": subsample(split["train"], cfg.max_train_pairs, salt),
            **{p: subsample(split[p], cfg.max_eval_pairs, salt) for p in ("id_val", "id_test", "ood_test")}}


def encode(df: pd.DataFrame, tokenizer, kind: str, max_length: int) -> Encoded:
    return Encoded(encode_pairs(tokenizer, df["query"], df["item"], kind, max_length), df["label"].to_numpy())


@dataclass
class Context:
    """What every method needs once: the runtime, the backbone and its tokenizer, the split and its parts."""
    cfg: RunConfig
    runtime: Runtime
    backbone: torch.nn.Module
    tokenizer: object
    kind: str
    where: str
    split: Split
    parts: dict
    augmentation: dict | None = None  # what DASA or a control added to train (None: train as split)
    _encoded: dict = field(default_factory=dict)
    _tokenizer_tag: str | None = None

    def encoded(self, part: str) -> Encoded:
        """A part's tokens with its labels: from this process's memo, else the disk cache (tokens.py)."""
        if part not in self._encoded:
            frame = self.parts[part]
            key = ("encoded", self.where, self.kind, self.cfg.max_length, text_hash(frame),
                   hashlib.sha1(frame["label"].to_numpy().tobytes()).hexdigest())
            self._encoded[part] = _memo(key, lambda: Encoded(self._tokens(frame), frame["label"].to_numpy()))
        return self._encoded[part]

    def _tokens(self, frame: pd.DataFrame) -> list[dict]:
        if self._tokenizer_tag is None:
            self._tokenizer_tag = tokenizer_tag(self.tokenizer)
        return cached_encoding(frame, self.tokenizer, self._tokenizer_tag, self.kind, self.cfg.max_length)

    def new_model(self) -> RelevanceModel:
        seed_everything(self.cfg.seed)  # the head's initialisation depends on the seed only
        return RelevanceModel(self.backbone, self.kind, self.cfg.dropout)


def prepare(cfg: RunConfig) -> Context:
    runtime = setup_runtime(cfg.device)
    if not cfg.progress:
        from transformers.utils import logging as hf_logging
        hf_logging.disable_progress_bar()
    backbone, tokenizer, kind, where = load_backbone(cfg.backbone)  # first: a bad backbone fails fast
    split = prepare_split(cfg)
    parts, augmentation = sized_parts(split, cfg), None
    if cfg.augment != "none":  # DASA's source model is plain FT on train: run_ft trains or reuses it
        parts["train"], augmentation = augmented_train(cfg, split, parts, runtime, train_source=run_ft)
    return Context(cfg, runtime, backbone, tokenizer, kind, where, split, parts, augmentation)


def stage_loss(cfg: RunConfig, stage: str) -> torch.nn.Module:
    """The loss of one training stage (lp or ft): OCC where occ_stage says so, else cross-entropy."""
    if cfg.occ_lambda > 0 and cfg.occ_stage in (stage, "both"):
        return make_loss(cfg.occ_lambda, cfg.occ_rho, cfg.occ_prior, cfg.occ_direction)
    return torch.nn.CrossEntropyLoss()


def run_folder(method: str, cfg: RunConfig, exclude: tuple = ()) -> Path:
    """Where a run's weights, predictions and result live in the cache (shared by every notebook)."""
    exclude = tuple(exclude) + augment_exclusions(cfg)
    slug = method.lower().replace("+", "-")
    key = cfg.key(extra=data_fingerprint(cfg.data_path()) + processes_tag() + weights_tag(cfg.backbone),
                  exclude=exclude)
    return cache_dir() / "runs" / f"{slug}-{key}"


def predict_parts(model, ctx: Context, known: dict | None = None) -> dict[str, np.ndarray]:
    """Logits of every evaluated part; `known` holds those the caller already has (id_val from training)."""
    progress, known = ctx.cfg.progress and ctx.runtime.main, known or {}
    return {p: known[p] if p in known else predict_logits(model, ctx.encoded(p), ctx.tokenizer,
                                                          ctx.cfg.eval_batch_size, ctx.runtime, progress)
            for p in EVAL_PARTS}


def pretrained_features(model: RelevanceModel, ctx: Context, part: str) -> np.ndarray:
    """A part's features under the pretrained backbone (which `model` must still hold), cached on disk: LP
    trains on them, and every LPFT run on the same parts reads LP's predictions off them."""
    cfg = ctx.cfg
    return cached_features(model, f"pretrained|{ctx.where}|{ctx.kind}", ctx.parts[part], ctx.encoded(part),
                           ctx.tokenizer, cfg.max_length, cfg.eval_batch_size, ctx.runtime,
                           cfg.progress and ctx.runtime.main)


def probe_logits(model: RelevanceModel, ctx: Context) -> dict[str, np.ndarray]:
    """LP's logits (alpha = 0) on every evaluated part: the probed head on the pretrained features, no backbone
    pass once those are cached. Every process calls it (the feature cache is written by process 0)."""
    return {p: head_logits(model.head, pretrained_features(model, ctx, p), ctx.encoded(p), ctx.cfg.eval_batch_size,
                           ctx.runtime) for p in EVAL_PARTS}


def evaluate(logits: dict[str, np.ndarray], ctx: Context) -> dict:
    """Classification and confidence metrics per part, and the ID-OOD gap of macro-F1."""
    out = {p: evaluate_logits(logits[p], ctx.encoded(p).labels, ctx.parts[p]["query"].to_numpy()) for p in EVAL_PARTS}
    out["gap_macro_f1"] = out["id_test"]["macro_f1"] - out["ood_test"]["macro_f1"]
    return out


def prediction_tensors(logits: dict, ctx: Context, prefix: str = "") -> dict[str, np.ndarray]:
    """Per-sample probabilities and gold degrees of every evaluated part (entropy histograms read these)."""
    tensors = {}
    for p, values in logits.items():
        tensors[f"{prefix}{p}/probs"] = softmax(values).astype(np.float32)
        tensors[f"{prefix}{p}/labels"] = np.asarray(ctx.encoded(p).labels, dtype=np.int64)
        tensors[f"{prefix}{p}/queries"] = query_codes(ctx.parts[p]["query"])
    return tensors


def query_codes(queries: pd.Series) -> np.ndarray:
    """A stable 60-bit code per query text: the unit the bootstrap resamples, comparable across runs."""
    return np.array([int(hashlib.sha1(q.encode()).hexdigest()[:15], 16) for q in queries], dtype=np.int64)


def base_record(method: str, ctx: Context, folder: Path, started: float) -> dict:
    cfg, split = ctx.cfg, ctx.split
    return {"method": method, "run_key": folder.name.rsplit("-", 1)[1], "config": asdict(cfg),
            "model": model_card(ctx.where, ctx.kind),
            "sizes": {p: len(df) for p, df in ctx.parts.items()}, "split_dir": stored_path(split.directory),
            "held_out": split.held_out, "load_dropped": split.load_dropped,
            "leakage_dropped": split.leakage_dropped, "augmentation": ctx.augmentation, "world_size": ctx.runtime.world,
            "environment": environment(ctx.runtime.device), "seconds": round(time.time() - started, 1),
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S"), "checkpoint": stored_path(folder),
            "predictions": stored_path(folder / "predictions.safetensors")}


def _finished(folder: Path, cfg: RunConfig):
    """The stored result of this exact run, if it finished before and reuse is on."""
    path = folder / "result.json"
    return json.loads(path.read_text()) if cfg.reuse and path.exists() else None


def run_ft(cfg: RunConfig) -> dict:
    """FT: fresh head, all weights trained (cross-entropy, or OCC / label smoothing when occ_lambda > 0).
    Returns the result record (None on processes other than the first)."""
    cfg.validate()
    method = method_name("FT", cfg)
    folder = run_folder(method, cfg, exclude=LPFT_ONLY)
    setup_runtime(cfg.device)  # under torchrun: the processes join before they meet at the lock
    with entry_lock(folder):
        done = broadcast(_finished(folder, cfg))  # also after a wait: another job may have trained it meanwhile
        return publish(done, cfg.out_dir) if done else _train_ft(cfg, method, folder)


def _train_ft(cfg: RunConfig, method: str, folder: Path) -> dict:
    started = time.time()
    ctx = prepare(cfg)
    model = ctx.new_model()
    fit = train_model(model, ctx.encoded("train"), ctx.encoded("id_val"), ctx.tokenizer, cfg.train_settings(),
                      ctx.runtime, loss_fn=stage_loss(cfg, "ft"))
    checksums = gather(parameter_checksum(model))
    result = None
    if ctx.runtime.main:
        logits = predict_parts(model, ctx, known={"id_val": fit.id_val_logits})
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write(folder / "model.safetensors", lambda name: save_model(getattr(model, "module", model), name))
        atomic_write(folder / "predictions.safetensors", lambda name: save_file(prediction_tensors(logits, ctx), name))
        result = {**base_record(method, ctx, folder, started), "fit": fit.record, "param_checksums": checksums,
                  **evaluate(logits, ctx)}
        _store(result, folder)
        publish(result, cfg.out_dir)
    wait_for_everyone()  # the others return once process 0 has stored the run
    return result


def linear_probe(model: RelevanceModel, ctx: Context) -> dict:
    """LP: train model.head on cached features of the frozen pretrained backbone (process 0; the others receive
    the head). Cached itself, so LPFT runs that differ only after this stage share it."""
    cfg = ctx.cfg
    lp_loss = stage_loss(cfg, "lp")
    folder = cache_dir() / "runs" / "lp-{}".format(cfg.key(
        "dataset", "data", "scheme", "csv_columns", "protocol", "held_out", "split_seed", "max_train_pairs",
        "max_eval_pairs", "backbone", "max_length", "dropout", "weight_decay", "seed", "lp_epochs", "lp_lr",
        "lp_batch_size", "lp_patience", "lp_select", extra=f"{data_fingerprint(cfg.data_path())}|{lp_loss!r}"
        + weights_tag(cfg.backbone)
        + (f"|{ctx.augmentation['folder']}" if ctx.augmentation else "")))
    model.to(ctx.runtime.device)
    with entry_lock(folder):
        fit = _probe(model, ctx, folder, lp_loss)
    head = broadcast({k: v.cpu() for k, v in model.head.state_dict().items()} if ctx.runtime.main else None)
    model.head.load_state_dict(head)
    model.to(ctx.runtime.device)  # train_probe leaves the head on the CPU; fine-tuning goes on with it on the device
    return broadcast(fit)


def _probe(model: RelevanceModel, ctx: Context, folder: Path, lp_loss) -> dict | None:
    """The probed head from the cache, or trained on the frozen backbone's features and saved (process 0)."""
    cfg, fit = ctx.cfg, None
    if broadcast(cfg.reuse and (folder / "head.safetensors").exists()):
        model.head.load_state_dict(load_torch(str(folder / "head.safetensors")))
        fit = json.loads((folder / "fit.json").read_text())
    else:
        extraction = time.perf_counter()
        feats = {p: pretrained_features(model, ctx, p) for p in ("train", "id_val")}
        if ctx.runtime.main:
            fit = train_probe(model.head, feats["train"], ctx.encoded("train").labels, feats["id_val"],
                              ctx.encoded("id_val").labels, cfg.probe_settings(), lp_loss, ctx.runtime.device)
            fit["features_seconds"] = round(time.perf_counter() - extraction - fit["seconds"], 2)  # 0 when cached
            folder.mkdir(parents=True, exist_ok=True)
            atomic_write(folder / "fit.json", lambda name: Path(name).write_text(json.dumps(fit)))
            atomic_write(folder / "head.safetensors", lambda name: save_torch(model.head.state_dict(), name))
    return fit


def run_lpft(cfg: RunConfig) -> dict:
    """LPFT: LP, then FT from the probed head, then theta(alpha) for every alpha in cfg.alphas, evaluated on
    id_val, id_test and ood_test; alpha* is the best on id_val. alpha = 0 is LP itself (always evaluated).
    Returns the run record with the whole sweep (None on processes other than the first)."""
    cfg.validate()
    method = method_name("LPFT", cfg)
    folder = run_folder(method, cfg, exclude=("alphas",))  # a new alpha list re-evaluates, never retrains
    setup_runtime(cfg.device)
    with entry_lock(folder):
        done = broadcast(_finished(folder, cfg))
        if done and done["config"]["alphas"] == cfg.alphas:
            return publish(done, cfg.out_dir)
        return _train_lpft(cfg, method, folder)


def _train_lpft(cfg: RunConfig, method: str, folder: Path) -> dict:
    started = time.time()
    ctx = prepare(cfg)
    model = ctx.new_model()
    lp_fit = linear_probe(model, ctx)
    theta_lp = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    lp_logits = probe_logits(model, ctx)
    theta_ft, ft_fit, ft_known = _fine_tune_stage(model, ctx, folder)
    result = None
    if ctx.runtime.main:
        sweep = _alpha_sweep(model, ctx, theta_lp, theta_ft, lp_logits, ft_known, folder)
        alpha_star = choose_alpha([s for s in sweep if s["alpha"] in cfg.alphas])
        best = next(s for s in sweep if s["alpha"] == alpha_star)
        result = {**base_record(method, ctx, folder, started), "lp_fit": lp_fit, "fit": ft_fit,
                  "alpha_star": alpha_star, **{k: v for k, v in best.items() if k != "alpha"}, "sweep": sweep}
        _store(result, folder)
        publish(result, cfg.out_dir)
    wait_for_everyone()  # the process group itself is closed by the command line, once
    return result


def _fine_tune_stage(model: RelevanceModel, ctx: Context, folder: Path) -> tuple[dict, dict, dict]:
    """theta_FT from the probed head: from the cache, or trained and stored. Returns it, its fit record and the
    logits training already computed for it (id_val; none when read from the cache)."""
    cfg = ctx.cfg
    if broadcast(cfg.reuse and (folder / "model.safetensors").exists()):  # one decision for every process
        return load_torch(str(folder / "model.safetensors")), json.loads((folder / "ft_fit.json").read_text()), {}
    # The probed head is no longer random: by default it trains at the backbone's rate (head_lr is for fresh
    # heads); lpft_head_lr gives it its own.
    settings = replace(cfg.train_settings(), head_lr=cfg.lpft_head_lr)
    fit = train_model(model, ctx.encoded("train"), ctx.encoded("id_val"), ctx.tokenizer, settings, ctx.runtime,
                      loss_fn=stage_loss(cfg, "ft"))
    theta_ft = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    if ctx.runtime.main:  # the weights last: their presence means the FT stage is complete
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write(folder / "ft_fit.json", lambda name: Path(name).write_text(json.dumps(fit.record)))
        atomic_write(folder / "model.safetensors", lambda name: save_torch(theta_ft, name))
    return theta_ft, fit.record, {"id_val": fit.id_val_logits}


def _alpha_sweep(model: RelevanceModel, ctx: Context, theta_lp: dict, theta_ft: dict, lp_logits: dict,
                 ft_known: dict, folder: Path) -> list[dict]:
    """Every alpha of cfg.alphas, and 0, evaluated on every part; the predictions saved (process 0)."""
    sweep, tensors = [], {}
    for alpha in sorted(set(ctx.cfg.alphas) | {0.0}):
        if alpha == 0:
            logits = lp_logits
        else:  # theta(1) is theta_FT exactly (lerp), so training's id_val logits hold for it
            model.load_state_dict(interpolate(theta_lp, theta_ft, alpha))
            logits = predict_parts(model, ctx, known=ft_known if alpha == 1 else None)
        tensors.update(prediction_tensors(logits, ctx, prefix=f"alpha={alpha:g}/"))
        sweep.append({"alpha": alpha, **evaluate(logits, ctx)})
    atomic_write(folder / "predictions.safetensors", lambda name: save_file(tensors, name))
    return sweep


def _store(result: dict, folder: Path) -> None:
    # written last and at once: its presence means the run finished
    atomic_write(folder / "result.json", lambda name: Path(name).write_text(json.dumps(result, indent=2)))


def summary_line(result: dict) -> str:
    i, o = result["id_test"]["macro_f1"], result["ood_test"]["macro_f1"]
    alpha = f" alpha*={result['alpha_star']:g}" if "alpha_star" in result else ""
    return (f"{result['method']}{alpha} {result['config']['protocol']} seed {result['config']['seed']}: "
            f"ID macro-F1 {i:.4f}  OOD macro-F1 {o:.4f}  gap {i - o:+.4f}  "
            f"ID ECE {result['id_test']['confidence']['ece']:.4f}  ({result['seconds']} s)")

