"""Candidate representations for DASA's OOD scores, and how to tell whether a detector merely measures length.

Of the model fine-tuned on train (docs/STUDY.md section 5):
- pair_mean:   the pair's last layer, mean-pooled (what the head reads; a decoder: its last real token);
- pair_first:  the pair's first token ([CLS]);
- head_hidden: the head's hidden layer (after its first Linear and GELU) on pair_mean;
- query_first: the query alone, encoded by the same backbone, first token;
- query_mean:  the query alone, mean-pooled.
For a decoder "first" reads the last real token instead (a causal model's first token sees nothing else).

Mean-pooled pair features grow more central as pairs get longer, so a detector on them can rank OOD pairs by
their length. `length_stratified_auroc` and `length_correlation` expose that: a detector that knows OOD from ID
keeps its AUROC within token-count quintiles and has a small correlation with the token count.
"""
from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd
import torch
from scipy.stats import spearmanr
from sklearn.metrics import roc_auc_score
from tqdm import tqdm

from .cache import code_fingerprint, computed_once
from .data import cache_dir
from .features import text_hash
from .modeling import Collator, encode_pairs, pool
from .training import HostChunks, Runtime

REPRESENTATIONS = ("query_first", "query_mean", "pair_mean", "pair_first", "head_hidden")
QUERY_SIDE = ("query_first", "query_mean")
LENGTH_BINS = 5  # token-count quantile bins for the length-stratified AUROC


def _batches(encoded: list[dict], batch_size: int):
    """Index arrays of length-sorted batches (less padding), in a fixed order."""
    order = np.argsort([len(e["input_ids"]) for e in encoded], kind="stable")
    return [order[s:s + batch_size] for s in range(0, len(order), batch_size)]


@torch.no_grad()
def _pooled(model, encoded: list[dict], tokenizer, hows: dict, batch_size: int, runtime: Runtime,
            progress: bool, head_hidden: bool = False) -> dict[str, np.ndarray]:
    """Per name in `hows` (name -> pooling), the pooled last layer of every encoded text; with head_hidden also
    the head's hidden layer on the model's own pooling."""
    names = [*hows, *(["head_hidden"] if head_hidden else [])]
    collate, out = Collator(tokenizer), {name: HostChunks() for name in names}
    model = getattr(model, "module", model)
    was_training = model.training
    model.eval()
    batches = _batches(encoded, batch_size)
    for rows in tqdm(batches, disable=not progress, desc="representations"):
        batch = {k: v.to(runtime.device) for k, v in collate([encoded[i] for i in rows]).items()}
        with runtime.autocast:
            hidden = model.hidden_states(**batch)
            for name, how in hows.items():
                out[name].add(pool(hidden, batch["attention_mask"], how).float())
            if head_hidden:
                own = pool(hidden, batch["attention_mask"], model.pooling)
                with torch.autocast(device_type=own.device.type, enabled=False):  # the head runs in float32
                    out["head_hidden"].add(model.head[:3](own.float()))  # dropout (off), Linear, GELU
    model.train(was_training)
    order = np.concatenate(batches) if batches else np.zeros(0, dtype=np.int64)
    result = {}
    for name, collected in out.items():
        chunks = collected.on_host()
        values = torch.cat(chunks).numpy() if chunks else np.zeros((0, 0), np.float32)
        result[name] = np.empty_like(values)
        result[name][order] = values
    return result


def extract(model, frame: pd.DataFrame, tokenizer, max_length: int, batch_size: int, runtime: Runtime,
            progress: bool = False) -> dict[str, np.ndarray]:
    """Every representation of REPRESENTATIONS for the pairs of `frame`, plus `tokens` (the pair's token count)."""
    kind = getattr(model, "module", model).kind
    first = "last" if kind == "decoder" else "first"
    pairs = encode_pairs(tokenizer, frame["query"], frame["item"], kind, max_length)
    own = "last" if kind == "decoder" else "mean"
    out = _pooled(model, pairs, tokenizer, {"pair_mean": own, "pair_first": first}, batch_size, runtime, progress,
                  head_hidden=True)
    queries, index = np.unique(frame["query"].to_numpy(dtype=str), return_inverse=True)  # each query once
    enc = tokenizer(list(queries), truncation=True, max_length=max_length)
    keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc]
    encoded = [{k: enc[k][i] for k in keys} for i in range(len(queries))]
    alone = _pooled(model, encoded, tokenizer, {"query_first": first, "query_mean": own}, batch_size, runtime,
                    progress)
    out.update({name: values[index] for name, values in alone.items()})
    out["tokens"] = np.array([len(p["input_ids"]) for p in pairs], dtype=np.int64)
    return out


def representation_path(model_id: str, frame: pd.DataFrame, max_length: int, precision: str = "cpu-float32"):
    """`precision` (runtime.precision): bf16 features on a GPU and float32 ones on a CPU are not the same."""
    text = f"{model_id}|{max_length}|{text_hash(frame)}|{precision}|{code_fingerprint()}"
    key = hashlib.sha1(text.encode()).hexdigest()
    return cache_dir() / "representations" / f"{key[:16]}.safetensors"


def cached_representations(model, model_id: str, frame: pd.DataFrame, tokenizer, max_length: int, batch_size: int,
                           runtime: Runtime, progress: bool = False) -> dict[str, np.ndarray]:
    """`extract`, from the cache when there (process 0 computes; the others read). `model_id` must change
    whenever the weights do."""
    path = representation_path(model_id, frame, max_length, runtime.precision)
    values = computed_once(path, lambda: extract(model, frame, tokenizer, max_length, batch_size, runtime, progress))
    if len(values["tokens"]) != len(frame):
        raise RuntimeError(f"representation cache {path.name} holds {len(values['tokens'])} rows for {len(frame)}")
    return values


def length_bins(tokens: np.ndarray, bins: int = LENGTH_BINS) -> np.ndarray:
    """Token-count quantile bin of each pair (fewer bins where counts tie across a quantile)."""
    return pd.qcut(pd.Series(tokens).rank(method="first"), bins, labels=False).to_numpy() if len(tokens) >= bins \
        else np.zeros(len(tokens), dtype=np.int64)


def length_stratified_auroc(scores: np.ndarray, is_ood: np.ndarray, tokens: np.ndarray,
                            bins: int = LENGTH_BINS) -> dict:
    """AUROC of `scores` for pool_ood vs pool_id within each token-count quintile, and their mean.

    Quintiles of the rank, so ties in token count are split at the edges: each bin holds a fifth of the pool."""
    which, per_bin = length_bins(tokens, bins), []
    for b in range(bins):
        inside = which == b
        labels = np.asarray(is_ood)[inside]
        ok = labels.any() and not labels.all()
        per_bin.append(float(roc_auc_score(labels, np.asarray(scores)[inside])) if ok else float("nan"))
    return {"auroc_within_length": float(np.nanmean(per_bin)) if not np.isnan(per_bin).all() else float("nan"),
            "auroc_per_length_bin": per_bin}


def length_correlation(scores: np.ndarray, tokens: np.ndarray) -> float:
    """Spearman correlation of a score with the pair's token count (0 = the score ignores length)."""
    if np.ptp(tokens) == 0 or np.ptp(scores) == 0:
        return 0.0
    return float(spearmanr(scores, tokens).statistic)
