"""Tokenised parts on disk (darl_utils/tokens.py): read back exactly as tokenised, keyed by all they depend on,
written by process 0 only, and an unreadable entry is tokenised again."""
import pandas as pd
import pytest

from darl_utils import pipeline, tokens
from darl_utils.modeling import encode_pairs, load_backbone
from darl_utils.smoke import synthetic_pairs

from test_training import tiny_config


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DARL_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("RANK", raising=False)


def frame(n: int = 40) -> pd.DataFrame:
    return synthetic_pairs().head(n)


def forbid_tokenising(monkeypatch):
    monkeypatch.setattr(tokens, "encode_pairs", lambda *a, **k: pytest.fail("tokenised on a cache hit"))


@pytest.mark.parametrize("model", ["tiny_encoder", "tiny_decoder"])
def test_read_back_equals_tokenised(model, request, monkeypatch):
    _, tokenizer, kind, _ = load_backbone(request.getfixturevalue(model))
    pairs, tag = frame(), tokens.tokenizer_tag(tokenizer)
    first = tokens.cached_encoding(pairs, tokenizer, tag, kind, 24)
    assert first == encode_pairs(tokenizer, pairs["query"], pairs["item"], kind, 24)
    assert tokens.tokens_path(pairs, tag, kind, 24).exists()
    forbid_tokenising(monkeypatch)
    assert tokens.cached_encoding(pairs, tokenizer, tag, kind, 24) == first


def test_the_key_names_text_tokenizer_kind_and_length(tiny_encoder):
    _, tokenizer, kind, _ = load_backbone(tiny_encoder)
    pairs, tag = frame(), tokens.tokenizer_tag(tokenizer)
    base = tokens.tokens_path(pairs, tag, kind, 24)
    assert tokens.tokens_path(pairs, tag, kind, 32) != base
    assert tokens.tokens_path(pairs, tag, "decoder", 24) != base
    assert tokens.tokens_path(frame(39), tag, kind, 24) != base
    tokenizer.add_tokens(["drywallscrew"])  # another vocabulary
    assert tokens.tokens_path(pairs, tokens.tokenizer_tag(tokenizer), kind, 24) != base


def test_an_unreadable_entry_is_tokenised_again(tiny_encoder):
    _, tokenizer, kind, _ = load_backbone(tiny_encoder)
    pairs, tag = frame(), tokens.tokenizer_tag(tokenizer)
    good = tokens.cached_encoding(pairs, tokenizer, tag, kind, 24)
    path = tokens.tokens_path(pairs, tag, kind, 24)
    path.write_bytes(b"not a safetensors file")
    assert tokens.cached_encoding(pairs, tokenizer, tag, kind, 24) == good
    assert tokens.from_arrays(tokens.load_file(str(path))) == good  # written over


def test_only_process_0_writes_and_empty_parts_are_not_stored(tiny_encoder, monkeypatch):
    _, tokenizer, kind, _ = load_backbone(tiny_encoder)
    tag = tokens.tokenizer_tag(tokenizer)
    assert tokens.cached_encoding(frame().head(0), tokenizer, tag, kind, 24) == []
    monkeypatch.setenv("RANK", "1")
    tokens.cached_encoding(frame(), tokenizer, tag, kind, 24)
    assert not (tokens.cache_dir() / "tokens").exists()


def test_a_new_process_reads_a_runs_parts_from_disk(pairs_csv, tiny_encoder, tmp_path, monkeypatch):
    cfg = tiny_config(pairs_csv, tiny_encoder, tmp_path / "out", epochs=1)
    monkeypatch.setattr(pipeline, "_MEMO", {})  # nothing from earlier tests of this process
    pipeline.run_ft(cfg)
    assert len(list((tokens.cache_dir() / "tokens").glob("*.safetensors"))) == 4  # train and 3 evaluated parts
    before = {p: pipeline.prepare(cfg).encoded(p) for p in ("train", "id_test")}
    monkeypatch.setattr(pipeline, "_MEMO", {})  # as in a new notebook kernel
    forbid_tokenising(monkeypatch)
    ctx = pipeline.prepare(cfg)
    for part, encoded in before.items():
        again = ctx.encoded(part)
        assert again.features == encoded.features and again.labels == encoded.labels
