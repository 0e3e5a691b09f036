"""Shared fixtures: tiny random-init backbones (built here, nothing from a hub) and small synthetic data."""
from __future__ import annotations

import os
import random
from pathlib import Path

import pandas as pd
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach a hub
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def homedepot_path() -> Path:
    where = os.environ.get("DARL_DATA")
    if not where or not Path(where).is_file():
        pytest.fail("set DARL_DATA to the Home Depot train.csv(.gz) to run the real-data tests "
                    "(.ci/run does)")
    return Path(where)


@pytest.fixture(scope="session")
def minilm_dir() -> str:
    from darl_utils.modeling import resolve_backbone
    return resolve_backbone("minilm")


def _tiny(tmp_root: Path, name: str, config, minilm_dir: str) -> str:
    from transformers import AutoModel, AutoTokenizer
    folder = tmp_root / name
    tokenizer = AutoTokenizer.from_pretrained(minilm_dir)  # a real vocabulary; weights random below
    config.vocab_size = tokenizer.vocab_size
    AutoModel.from_config(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="session")
def tiny_encoder(tmp_path_factory, minilm_dir) -> str:
    from transformers import BertConfig
    cfg = BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                     max_position_embeddings=128)
    return _tiny(tmp_path_factory.mktemp("models"), "tiny-bert", cfg, minilm_dir)


@pytest.fixture(scope="session")
def tiny_decoder(tmp_path_factory, minilm_dir) -> str:
    from transformers import LlamaConfig
    cfg = LlamaConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                      intermediate_size=64, max_position_embeddings=256, architectures=["LlamaForCausalLM"])
    return _tiny(tmp_path_factory.mktemp("models"), "tiny-llama", cfg, minilm_dir)


COLOURS = {"red": "strong", "blue": "weak", "green": "irrelevant"}


def synthetic_pairs(n_queries: int = 180, per_query: int = 4, seed: int = 0) -> pd.DataFrame:
    """Pairs whose degree is told by a colour word in the item: learnable by a tiny model in seconds.
    A third of the queries carry a digit (OOD under query_form); groups alternate for the department protocol."""
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


@pytest.fixture
def pairs_csv(tmp_path) -> Path:
    path = tmp_path / "pairs.csv"
    synthetic_pairs().to_csv(path, index=False)
    return path
