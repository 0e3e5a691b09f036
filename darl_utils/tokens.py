"""Tokenised parts on disk: every notebook kernel needs the same parts' token ids, and reading them back takes a
fraction of tokenising them (benchmarks/token_cache.py, full Home Depot train part of 33,473 pairs on a 2-core
CPU: 1.7-2.1 s to tokenise, 0.15-0.5 s to read back).

An entry is keyed by the pairs' text, the tokenizer (its class, vocabulary and special tokens), the model kind,
max_length and the code fingerprint (the decoder prompt lives in modeling.py). Ids are stored concatenated,
with each pair's offset; every key of the tokenizer's output (input_ids, attention_mask, token_type_ids) alike.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
from safetensors import SafetensorError
from safetensors.numpy import load_file, save_file

from .cache import atomic_write, code_fingerprint
from .data import cache_dir
from .distributed import is_main_process
from .features import text_hash
from .modeling import encode_pairs


def tokenizer_tag(tokenizer) -> str:
    """What the ids depend on besides the text: the tokenizer's class, vocabulary and special tokens."""
    vocab = json.dumps(sorted(tokenizer.get_vocab().items()))
    specials = json.dumps(tokenizer.special_tokens_map, sort_keys=True, default=str)
    return hashlib.sha1(f"{type(tokenizer).__name__}|{specials}|{vocab}".encode()).hexdigest()[:16]


def tokens_path(frame: pd.DataFrame, tag: str, kind: str, max_length: int) -> Path:
    text = f"{text_hash(frame)}|{tag}|{kind}|{max_length}|{code_fingerprint()}"
    return cache_dir() / "tokens" / f"{hashlib.sha1(text.encode()).hexdigest()[:16]}.safetensors"


def to_arrays(encoded: list[dict]) -> dict[str, np.ndarray]:
    """Per-pair id lists as one int32 array per key plus the offsets where each pair starts."""
    lengths = np.array([len(e["input_ids"]) for e in encoded], dtype=np.int64)
    arrays = {"offsets": np.concatenate([[0], np.cumsum(lengths)])}
    for key in encoded[0]:
        arrays[key] = np.fromiter((t for e in encoded for t in e[key]), dtype=np.int32, count=int(lengths.sum()))
    return arrays


def from_arrays(arrays: dict[str, np.ndarray]) -> list[dict]:
    offsets = arrays["offsets"]
    keys = [k for k in arrays if k != "offsets"]
    lists = {k: arrays[k].tolist() for k in keys}
    return [{k: lists[k][a:b] for k in keys} for a, b in zip(offsets[:-1], offsets[1:])]


def cached_encoding(frame: pd.DataFrame, tokenizer, tag: str, kind: str, max_length: int) -> list[dict]:
    """encode_pairs of the frame's pairs, from the disk cache when there (process 0 writes it)."""
    if frame.empty:  # the tokenizer takes no empty batch
        return []
    path = tokens_path(frame, tag, kind, max_length)
    if path.exists():
        try:
            encoded = from_arrays(load_file(str(path)))
            if len(encoded) == len(frame):
                return encoded
        except (SafetensorError, KeyError, OSError):
            pass  # unreadable: tokenised again and written over
    encoded = encode_pairs(tokenizer, frame["query"], frame["item"], kind, max_length)
    if is_main_process():
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda name: save_file(to_arrays(encoded), name))
    return encoded
