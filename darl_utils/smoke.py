"""The smoke profile's assets: synthetic pairs and a tiny random-init encoder, built locally in seconds, so the
whole study runs end to end without real data or weights (the tests use them too).

In the synthetic pairs a colour word in the item tells the degree (a tiny model learns it in seconds); a third
of the queries carry a digit (OOD under query_form), and groups alternate for the department protocol.
"""
from __future__ import annotations

import random
from pathlib import Path

import pandas as pd

COLOURS = {"red": "strong", "blue": "weak", "green": "irrelevant"}


def synthetic_pairs(n_queries: int = 180, per_query: int = 4, seed: int = 0) -> pd.DataFrame:
    rng = random.Random(seed)
    nouns = ["lamp", "drill", "faucet", "tile", "door", "hose", "fan", "rug", "saw", "sink", "shelf", "pipe"]
    rows = []
    for q in range(n_queries):
        noun = rng.choice(nouns)
        tag = "".join("abcdefghij"[int(d)] for d in f"{q:03d}")  # distinct queries, no digits
        query = f"{noun} {rng.choice(['cheap', 'large', 'small', 'modern', 'white'])} {tag}"
        if q % 3 == 0:
            query += f" {rng.randint(2, 48)} in"
        for j in range(per_query):
            colour = rng.choice(list(COLOURS))
            rows.append({"query": query, "item": f"{colour} {noun} model {q}-{j}",
                         "label": COLOURS[colour], "group": f"g{q % 5}"})
    return pd.DataFrame(rows)


def tiny_model(folder: str | Path, config) -> str:
    """A random-init model of `config` with MiniLM's vocabulary (from the embedded package), saved in folder."""
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    from .modeling import resolve_backbone
    folder = Path(folder)
    if not (folder / "config.json").exists():
        import torch
        tokenizer = AutoTokenizer.from_pretrained(resolve_backbone("minilm"))
        config.vocab_size = tokenizer.vocab_size
        torch.manual_seed(0)  # the same tiny model every time, whatever ran before
        model = AutoModel.from_config(config)
        was_on = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()  # a one-shard bar on the runner's output says nothing
        try:
            model.save_pretrained(folder)
        finally:
            if was_on:
                hf_logging.enable_progress_bar()
        tokenizer.save_pretrained(folder)
    return str(folder)


def tiny_encoder(folder: str | Path) -> str:
    from transformers import BertConfig
    return tiny_model(folder, BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                         intermediate_size=64, max_position_embeddings=128))


def smoke_assets(folder: str | Path) -> dict:
    """The synthetic CSV and the tiny encoder under folder; returns the notebook parameters that use them."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    data = folder / "pairs.csv"
    if not data.exists():
        synthetic_pairs().to_csv(data, index=False)
    return {"dataset": "csv", "data": str(data), "csv_columns": {"group": "group"},
            "backbone": tiny_encoder(folder / "tiny-bert")}
