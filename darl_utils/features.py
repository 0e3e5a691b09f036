"""Pooled features of a model for a part of the data, extracted once and cached (LP trains on them and its
logits are read off them; DASA scores them).

The cache key is the model's identity, the text settings, the batch size, the precision and a hash of the pairs'
text, so any change to the data, the split, the sub-sample or the model gives a new entry, and nothing stale is
ever read. Labels are not stored: the pool's labels must stay hidden until DASA selects.
"""
from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd

from .cache import code_fingerprint, computed_once
from .data import cache_dir
from .training import Runtime, predict_logits


def text_hash(frame: pd.DataFrame) -> str:
    digest = hashlib.sha1()
    for q, item in zip(frame["query"], frame["item"]):
        digest.update(f"{q}\t{item}\n".encode())
    return digest.hexdigest()


def feature_path(model_id: str, frame: pd.DataFrame, max_length: int, batch_size: int,
                 precision: str = "cpu-float32"):
    """`precision` (runtime.precision): bf16 features on a GPU and float32 ones on a CPU are not the same.
    `batch_size`: another batching pads differently and may round differently, and LP's logits, read off these
    features, must equal a full pass at the run's own eval_batch_size bit for bit."""
    text = f"{model_id}|{max_length}|{batch_size}|{text_hash(frame)}|{precision}|{code_fingerprint()}"
    key = hashlib.sha1(text.encode()).hexdigest()[:16]
    return cache_dir() / "features" / f"{key}.safetensors"


def cached_features(model, model_id: str, frame: pd.DataFrame, data, tokenizer, max_length: int,
                    batch_size: int, runtime: Runtime, progress: bool = False) -> np.ndarray:
    """Features (n x hidden, float32) of `frame` (already encoded as `data`) under `model`, from the cache
    when there. `model_id` must change whenever the weights do (a backbone path, a checkpoint folder)."""
    path = feature_path(model_id, frame, max_length, batch_size, runtime.precision)
    features = computed_once(path, lambda: {"features": predict_logits(
        model, data, tokenizer, batch_size, runtime, progress, what="features").astype(np.float32)})["features"]
    if len(features) != len(frame):
        raise RuntimeError(f"feature cache {path.name} holds {len(features)} rows for {len(frame)} pairs")
    return features
