"""Shared fixtures: tiny random-init backbones (built here, nothing from a hub) and small synthetic data."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from darl_utils.smoke import synthetic_pairs, tiny_model

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


@pytest.fixture(scope="session")
def tiny_encoder(tmp_path_factory) -> str:
    from darl_utils.smoke import tiny_encoder as build
    return build(tmp_path_factory.mktemp("models") / "tiny-bert")


@pytest.fixture(scope="session")
def tiny_decoder(tmp_path_factory) -> str:
    from transformers import LlamaConfig
    cfg = LlamaConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                      intermediate_size=64, max_position_embeddings=256, architectures=["LlamaForCausalLM"])
    return tiny_model(tmp_path_factory.mktemp("models") / "tiny-llama", cfg)


@pytest.fixture
def pairs_csv(tmp_path) -> Path:
    path = tmp_path / "pairs.csv"
    synthetic_pairs().to_csv(path, index=False)
    return path
