"""One configuration object per run: every setting, its default and what it means, stated once here.

The command line, the notebooks' parameter cells and the result files all use these names. `validate()` checks
everything that can be checked without training (names, ranges, paths) so a typo fails in a second, not after
an hour.
"""
from __future__ import annotations

import difflib
import hashlib
import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from .data import HOMEDEPOT_SCHEMES
from .splits import DEFAULT_PROTOCOL, PROTOCOLS, SplitConfig
from .training import TrainSettings

RUNNING = ("progress", "reuse", "out_dir", "eval_batch_size")  # change how a run goes, not its result
LPFT_ONLY = ("lp_epochs", "lp_lr", "lp_batch_size", "lp_patience", "lpft_head_lr", "alphas")  # plain FT ignores these
AUGMENTS = ("none", "dasa", "random", "oracle", "length_matched")
CSV_OPTIONS = {"query", "item", "label", "group", "item_id", "sep", "encoding"}  # load_csv's options


class ConfigError(ValueError):
    """A bad setting; the message names it."""


@dataclass
class RunConfig:
    # data
    dataset: str = "homedepot"      # homedepot (a train.csv[.gz] file) | wands (a folder) | csv (a user's file)
    data: str = ""                  # where the data is; "" = the DARL_DATA environment variable
    scheme: str = "strict"          # Home Depot rating cut-offs: strict (< 2.0, < 2.67) or round (< 1.5, < 2.5)
    csv_columns: dict = field(default_factory=dict)  # csv: {query, item, label, group, item_id} names, sep, encoding
    # split (docs/STUDY.md section 3)
    protocol: str = DEFAULT_PROTOCOL  # department | query_form | unseen_words
    held_out: list[str] = field(default_factory=list)  # department protocol: OOD groups; [] = dataset default
    split_seed: int = -1            # salt of the query hash that assigns parts; -1 = the run's seed, so the
                                    # spread over seeds includes split variance (>= 0 pins one split)
    max_train_pairs: int = 0        # sub-sample train to at most this many pairs (whole queries); 0 = all
    max_eval_pairs: int = 0         # same for id_val, id_test and ood_test; 0 = all
    # model
    backbone: str = "minilm"        # minilm | smollm2 | a local Hugging Face folder | a hub id
    max_length: int = 64            # tokens per pair (Home Depot pairs average ~25)
    dropout: float = 0.1            # in the MLP head
    # training (fine-tuning)
    epochs: int = 2                 # passes over train; the best epoch on id_val is kept
    batch_size: int = 32            # per process
    eval_batch_size: int = 128
    lr: float = 5e-5                # AdamW peak learning rate, linear warmup then linear decay
    head_lr: float = 1e-3           # peak learning rate of the fresh MLP head (0 = lr): it starts from random
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    max_grad_norm: float = 1.0
    patience: int = 1               # stop after this many epochs without id_val gain (0 = never stop early)
    length_buckets: int = 0         # batches of similar length from chunks of this many batches (0 = off)
    seed: int = 0                   # model initialisation and data order
    # LP and LPFT (docs/STUDY.md section 5): the head trained on cached features of the frozen backbone
    lp_epochs: int = 100            # LP: at most this many passes over the cached train features
    lp_lr: float = 1e-3             # LP: AdamW learning rate of the head
    lp_batch_size: int = 256        # LP: batch of feature vectors
    lp_patience: int = 10           # LP: stop after this many epochs without id_val gain
    lpft_head_lr: float = 0.0       # LPFT's FT stage: learning rate of the probed head (0 = lr, as in LP-FT)
    alphas: list[float] = field(default_factory=lambda: [i / 10 for i in range(11)])  # LPFT: alphas; alpha* on id_val
    # OCC (docs/STUDY.md section 5): loss = CE + occ_lambda * KL(p || q_rho)
    occ_lambda: float = 0.0         # weight of the KL term; 0 = plain cross-entropy (DaRL uses 0.5)
    occ_rho: float = 0.1            # prior mass moved off the gold degree, in [0, 1)
    occ_prior: str = "ordinal"      # ordinal (spread by closeness on the degree scale) | uniform
    occ_direction: str = "reverse"  # reverse = KL(p || q), OCC | forward = KL(q || p), label smoothing
    occ_stage: str = "ft"           # where LPFT uses the OCC loss: lp | ft | both (plain FT uses it unless lp)
    # DASA (docs/STUDY.md section 5): the training set, as split or augmented with labelled pool pairs
    augment: str = "none"           # none | dasa (top-B pool pairs by OOD score) | random (B random pool pairs) |
                                    # oracle (B pool_ood pairs) | length_matched (B random pool pairs with the
                                    # token counts of DASA's selection)
    dasa_budget: float = 0.1        # B: below 1 a fraction of the train size; from 1 up a whole number of pairs
    dasa_combination: str = "mean"  # how the two score percentiles combine: mean | max | mahalanobis | knn (one alone)
    dasa_k: int = 50                # kNN score: distance to the k-th nearest train feature
    dasa_features: str = "query_first"  # what DASA scores: query_first | query_mean (the query alone, encoded by
                                        # the fine-tuned backbone) | pair_mean | pair_first | head_hidden
                                        # (docs/STUDY.md section 5 has the measurements behind the default)
    dasa_mahalanobis: str = "normalised"  # Mahalanobis on L2-normalised features (as kNN) | raw
    dasa_knn_search: str = "auto"   # exact | ivf (approximate) | auto (exact up to 1e9 pool x train pairs)
    max_pool_pairs: int = 0         # sub-sample pool_id and pool_ood each to at most this many pairs; 0 = all
    # running
    device: str = "auto"            # auto | cpu | cuda
    progress: bool = True           # progress bars (switch off for batch runs)
    reuse: bool = True              # take a finished run of the same settings from the cache, not train again
    out_dir: str = "reports/ft"     # results (JSON per run and results.jsonl) go here

    def data_path(self) -> Path:
        where = self.data or os.environ.get("DARL_DATA", "")
        if not where:
            raise ConfigError("data: no data location; pass --data PATH or set DARL_DATA")
        return Path(where).expanduser()

    def split_config(self) -> SplitConfig:
        return SplitConfig(protocol=self.protocol, held_out=tuple(self.held_out), seed=self.split_salt)

    @property
    def split_salt(self) -> int:
        """The salt that assigns queries to parts and draws sub-samples: split_seed, or the run's seed."""
        return self.seed if self.split_seed < 0 else self.split_seed

    def train_settings(self) -> TrainSettings:
        names = {f.name for f in fields(TrainSettings)}
        return TrainSettings(**{k: v for k, v in asdict(self).items() if k in names})

    def key(self, *names: str, extra: str = "", exclude: tuple = ()) -> str:
        """A short hash of the named settings (when none: all but those that only steer the running, and
        `exclude`) and `extra`, to name cached artefacts and runs."""
        from .cache import code_fingerprint
        d = {**asdict(self), "split_seed": self.split_salt}  # -1 and the seed it stands for are one split
        names = names or tuple(k for k in sorted(d) if k not in RUNNING + tuple(exclude))
        chosen = {**{k: d[k] for k in names}, "extra": extra, "code": code_fingerprint()}
        return hashlib.sha1(json.dumps(chosen, sort_keys=True, default=str).encode()).hexdigest()[:12]

    def validate(self) -> "RunConfig":
        def bad(name, why):
            raise ConfigError(f"{name}: {getattr(self, name)!r} {why}")
        for f in fields(self):
            _check_type(f.name, getattr(self, f.name), _declared_type(f))
            if _declared_type(f) is list:
                for v in getattr(self, f.name):
                    _check_type(f.name, v, item_type(f))
        if self.dataset not in ("homedepot", "wands", "csv"):
            bad("dataset", "is not one of homedepot, wands, csv")
        if self.scheme not in HOMEDEPOT_SCHEMES:
            bad("scheme", f"is not one of {sorted(HOMEDEPOT_SCHEMES)}")
        if self.protocol not in PROTOCOLS:
            bad("protocol", f"is not one of {list(PROTOCOLS)}")
        if self.device not in ("auto", "cpu", "cuda"):
            bad("device", "is not one of auto, cpu, cuda")
        for name in ("max_train_pairs", "max_eval_pairs", "patience", "seed", "length_buckets"):
            if getattr(self, name) < 0:
                bad(name, "must be >= 0")
        if self.split_seed < -1:
            bad("split_seed", "must be >= 0, or -1 for the run's seed")
        for name in ("epochs", "batch_size", "eval_batch_size"):
            if getattr(self, name) < 1:
                bad(name, "must be >= 1")
        if not 16 <= self.max_length <= 4096:
            bad("max_length", "must be in [16, 4096]")
        if not 0 < self.lr < 1:
            bad("lr", "must be in (0, 1)")
        for name in ("head_lr", "lpft_head_lr"):
            if not 0 <= getattr(self, name) < 1:
                bad(name, "must be in [0, 1)")
        for name in ("dropout", "warmup_ratio"):
            if not 0 <= getattr(self, name) < 1:
                bad(name, "must be in [0, 1)")
        if self.weight_decay < 0 or self.max_grad_norm <= 0:
            bad("weight_decay" if self.weight_decay < 0 else "max_grad_norm", "is out of range")
        if self.lp_epochs < 1 or self.lp_batch_size < 1 or self.lp_patience < 0:
            bad("lp_epochs" if self.lp_epochs < 1 else "lp_batch_size" if self.lp_batch_size < 1 else "lp_patience",
                "is out of range")
        if not 0 < self.lp_lr < 1:
            bad("lp_lr", "must be in (0, 1)")
        if not self.alphas or not all(0 <= a <= 1 for a in self.alphas) or len(set(self.alphas)) < len(self.alphas):
            bad("alphas", "must be a non-empty list of distinct values in [0, 1]")
        from .ood import COMBINATIONS, KNN_SEARCHES
        if self.augment not in AUGMENTS:
            bad("augment", f"is not one of {list(AUGMENTS)}")
        if self.dasa_combination not in COMBINATIONS:
            bad("dasa_combination", f"is not one of {list(COMBINATIONS)}")
        from .representations import REPRESENTATIONS
        if self.dasa_features not in REPRESENTATIONS:
            bad("dasa_features", f"is not one of {list(REPRESENTATIONS)}")
        if self.dasa_mahalanobis not in ("raw", "normalised"):
            bad("dasa_mahalanobis", "is not one of raw, normalised")
        if self.dasa_knn_search not in KNN_SEARCHES:
            bad("dasa_knn_search", f"is not one of {list(KNN_SEARCHES)}")
        if not (0 < self.dasa_budget < 1 or (self.dasa_budget >= 1 and float(self.dasa_budget).is_integer())):
            bad("dasa_budget", "must be a fraction in (0, 1) of the train size or a whole number of pairs >= 1")
        if self.dasa_k < 1 or self.max_pool_pairs < 0:
            bad("dasa_k" if self.dasa_k < 1 else "max_pool_pairs", "is out of range")
        if self.occ_stage not in ("lp", "ft", "both"):
            bad("occ_stage", "is not one of lp, ft, both")
        from .losses import check_occ
        try:
            check_occ(self.occ_lambda, self.occ_rho, self.occ_prior, self.occ_direction)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        unknown = set(self.csv_columns) - CSV_OPTIONS
        if unknown:
            bad("csv_columns", f"has unknown key(s) {sorted(unknown)}; expected some of {sorted(CSV_OPTIONS)}")
        path = self.data_path()
        if not path.exists() and self.dataset != "wands":  # WANDS downloads into a missing folder
            raise ConfigError(f"data: {path} does not exist")
        if path.exists() and path.is_dir() != (self.dataset == "wands"):
            raise ConfigError(f"data: {path} is a {'folder' if path.is_dir() else 'file'}; dataset "
                              f"{self.dataset!r} reads a {'folder' if self.dataset == 'wands' else 'file'}")
        self.data = str(path.resolve())  # results and cache keys record the file actually read
        if self.device == "cuda":
            import torch
            if not torch.cuda.is_available():
                bad("device", "asked for, but torch sees no CUDA GPU")
        out = Path(self.out_dir)
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            bad("out_dir", f"cannot be created ({e.strerror})")
        if not os.access(out, os.W_OK):
            bad("out_dir", "is not writable")
        from .modeling import BackboneError, resolve_backbone
        try:
            if self.backbone.lower() != "smollm2":  # smollm2 converts on first use: not a check
                resolve_backbone(self.backbone)
        except BackboneError as e:
            raise ConfigError(str(e)) from None
        return self

    @classmethod
    def from_dict(cls, values: dict) -> "RunConfig":
        known = {f.name for f in fields(cls)}
        for name in values:
            if name not in known:
                near = difflib.get_close_matches(name, known, n=1)
                raise ConfigError(f"unknown setting {name!r}" + (f"; did you mean {near[0]!r}?" if near else ""))
        return cls(**values)


TYPES = {"str": str, "int": int, "float": float, "bool": bool, "dict": dict, "list": list}


def _declared_type(f) -> type:
    return TYPES[f.type.split("[")[0]]


def item_type(f) -> type:
    """The element type of a list setting (list[float] -> float)."""
    return TYPES[f.type.split("[")[1].rstrip("]")] if "[" in f.type else str


def type_matches(value, expected: type) -> bool:
    """isinstance, except that a bool is no int and an int will do for a float."""
    if isinstance(value, bool) and expected is not bool:
        return False
    return isinstance(value, expected) or (expected is float and isinstance(value, int))


def _check_type(name: str, value, expected: type) -> None:
    if not type_matches(value, expected):
        raise ConfigError(f"{name}: {value!r} is a {type(value).__name__}, expected {expected.__name__}")


AUGMENT_TAGS = {"none": "", "dasa": "+DASA", "random": "+random", "oracle": "+oracle",
                "length_matched": "+length-matched"}


def method_name(base: str, cfg: RunConfig) -> str:
    """FT, LP or LPFT, with the loss of a stage that uses the OCC term: +OCC (reverse KL, OCC itself), +fKL (the
    forward KL with the ordinal prior: OCC's control) or +LS (the forward KL with the uniform prior: label
    smoothing); then the augmentation of train."""
    stages = {"FT": ("ft", "both"), "LP": ("lp", "both"), "LPFT": ("lp", "ft", "both")}[base]
    uses = cfg.occ_lambda > 0 and cfg.occ_stage in stages
    loss = "+OCC" if cfg.occ_direction == "reverse" else "+fKL" if cfg.occ_prior == "ordinal" else "+LS"
    return base + (loss if uses else "") + AUGMENT_TAGS[cfg.augment]
