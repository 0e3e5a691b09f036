"""One configuration object per run: every setting, its default, its help text, and the values it may take, stated
once here as data beside the field (`setting(...)`).

The command line (its `--help` is these texts), the notebooks' parameter cells and the result files all use these
names. `validate()` checks everything that can be checked without training (names, types, choices, ranges, paths)
so a typo fails in a second, not after an hour.
"""
from __future__ import annotations

import copy
import difflib
import hashlib
import json
import math
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch

from .compilation import COMPILE_MODES
from .data import HOMEDEPOT_SCHEMES
from .losses import DIRECTIONS, PRIORS, check_occ
from .modeling import BackboneError, check_backbone
from .ood import COMBINATIONS, KNN_SEARCHES
from .representations import REPRESENTATIONS
from .splits import DEFAULT_PROTOCOL, PROTOCOLS, SplitConfig
from .training import PROBE_SELECTIONS, ProbeSettings, TrainSettings

AUGMENTS = ("none", "dasa", "random", "oracle", "length_matched")
CSV_OPTIONS = {"query", "item", "label", "group", "item_id", "sep", "encoding"}  # load_csv's options


class ConfigError(ValueError):
    """A bad setting; the message names it."""


def setting(default, help: str, *, choices=(), within: str = "", running: bool = False, lpft_only: bool = False):
    """A RunConfig field with its help text and checks as data: `choices` (the allowed values), `within` (a range,
    "[0, 1)", "(0, 1)", ">= 1" or "> 0"), `running` (changes how a run goes, not its result: left out of cache
    keys) and `lpft_only` (plain FT ignores it)."""
    if within:
        in_range(0, within)  # a malformed range fails at import, not at a user's first typo
    meta = {"help": help, "choices": tuple(choices), "within": within, "running": running, "lpft_only": lpft_only}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: copy.deepcopy(default), metadata=meta)
    return field(default=default, metadata=meta)


def in_range(value, within: str) -> bool:
    """Whether value lies in `within`: "[a, b]" with [ or ( and ] or ) for closed or open ends, or ">= a", "> a"."""
    if isinstance(value, float) and not math.isfinite(value):
        return False  # NaN and infinity are in no range here
    if within.startswith(">"):
        op, bound = within.split()
        return value >= float(bound) if op == ">=" else value > float(bound)
    low, high = (float(x) for x in within[1:-1].split(","))
    above_low = low <= value if within[0] == "[" else low < value
    below_high = value <= high if within[-1] == "]" else value < high
    return above_low and below_high


@dataclass
class RunConfig:
    # data
    dataset: str = setting("homedepot", "homedepot (a train.csv[.gz] file) | wands (a folder) | csv (a user's file)",
                           choices=("homedepot", "wands", "csv"))
    data: str = setting("", "where the data is; '' = the DARL_DATA environment variable")
    scheme: str = setting("strict", "Home Depot rating cut-offs: strict (< 2.0, < 2.67) or round (< 1.5, < 2.5)",
                          choices=sorted(HOMEDEPOT_SCHEMES))
    csv_columns: dict = setting({}, "csv: the column names {query, item, label, group, item_id}, and sep, encoding "
                                "(as JSON)")
    # split (docs/STUDY.md section 3)
    protocol: str = setting(DEFAULT_PROTOCOL, "how queries are cut into ID and OOD: department | query_form | "
                            "unseen_words", choices=PROTOCOLS)
    held_out: list[str] = setting([], "department protocol: the OOD groups; [] = the dataset's default")
    split_seed: int = setting(-1, "salt of the query hash that assigns parts; -1 = the run's seed, so the spread "
                              "over seeds includes split variance (>= 0 pins one split)", within=">= -1")
    max_train_pairs: int = setting(0, "sub-sample train to at most this many pairs (whole queries); 0 = all",
                                   within=">= 0")
    max_eval_pairs: int = setting(0, "the same for id_val, id_test and ood_test; 0 = all", within=">= 0")
    # model
    backbone: str = setting("minilm", "minilm | smollm2 | a local Hugging Face folder | a hub id")
    max_length: int = setting(64, "tokens per pair (Home Depot pairs average ~25)", within="[16, 4096]")
    dropout: float = setting(0.1, "dropout in the MLP head", within="[0, 1)")
    # training (fine-tuning)
    epochs: int = setting(2, "passes over train; the best epoch on id_val is kept", within=">= 1")
    batch_size: int = setting(32, "training batch per process", within=">= 1")
    eval_batch_size: int = setting(128, "batch of every prediction pass (id_val, tests, features)", within=">= 1",
                                   running=True)
    lr: float = setting(5e-5, "AdamW peak learning rate, linear warmup then linear decay", within="(0, 1)")
    head_lr: float = setting(1e-3, "peak learning rate of the fresh MLP head (0 = lr): it starts from random",
                             within="[0, 1)")
    weight_decay: float = setting(0.01, "AdamW weight decay", within=">= 0")
    warmup_ratio: float = setting(0.1, "share of the training steps spent warming the learning rate up",
                                  within="[0, 1)")
    max_grad_norm: float = setting(1.0, "gradients are clipped to this global norm", within="> 0")
    patience: int = setting(1, "stop after this many epochs without id_val gain (0 = never stop early)",
                            within=">= 0")
    length_buckets: int = setting(0, "batches of similar length from chunks of this many batches (0 = off)",
                                  within=">= 0")
    compile: str = setting("off", "torch.compile the training step: off | default | reduce-overhead (and CUDA "
                           "graphs); pays only where the host bounds a step; compiled dropout draws other masks, so "
                           "it is another run (darl_utils/compilation.py)", choices=COMPILE_MODES)
    seed: int = setting(0, "model initialisation and data order", within=">= 0")
    # LP and LPFT (docs/STUDY.md section 5): the head trained on cached features of the frozen backbone
    lp_epochs: int = setting(100, "LP: at most this many passes over the cached train features", within=">= 1",
                             lpft_only=True)
    lp_lr: float = setting(1e-3, "LP: AdamW learning rate of the head", within="(0, 1)", lpft_only=True)
    lp_batch_size: int = setting(256, "LP: batch of feature vectors", within=">= 1", lpft_only=True)
    lp_patience: int = setting(10, "LP: stop after this many epochs without id_val gain", within=">= 0",
                               lpft_only=True)
    lp_select: str = setting("loss", "LP: the epoch kept, the one with the lowest id_val cross-entropy (loss) or "
                             "the best id_val macro_f1 (lets the MLP head memorise train: docs/measurements.md)",
                             choices=PROBE_SELECTIONS, lpft_only=True)
    lpft_head_lr: float = setting(0.0, "LPFT's FT stage: learning rate of the probed head (0 = lr, as in LP-FT)",
                                  within="[0, 1)", lpft_only=True)
    alphas: list[float] = setting([i / 10 for i in range(11)], "LPFT: the interpolation coefficients evaluated; "
                                  "alpha* is the best on id_val", lpft_only=True)
    # OCC (docs/STUDY.md section 5): loss = CE + occ_lambda * KL(p || q_rho)
    occ_lambda: float = setting(0.0, "weight of the KL term; 0 = plain cross-entropy (DaRL uses 0.5)",
                                within=">= 0")
    occ_rho: float = setting(0.1, "prior mass moved off the gold degree", within="[0, 1)")
    occ_prior: str = setting("ordinal", "ordinal (spread by closeness on the degree scale) | uniform",
                             choices=PRIORS)
    occ_direction: str = setting("reverse", "reverse = KL(p || q), OCC | forward = KL(q || p): OCC's control "
                                 "(FT+fKL) with the ordinal prior, label smoothing (FT+LS) with the uniform one",
                                 choices=DIRECTIONS)
    occ_stage: str = setting("ft", "where LPFT uses the OCC loss: lp | ft | both (plain FT uses it unless lp)",
                             choices=("lp", "ft", "both"))
    # DASA (docs/STUDY.md section 5): the training set, as split or augmented with labelled pool pairs
    augment: str = setting("none", "none | dasa (top-B pool pairs by OOD score) | random (B random pool pairs) | "
                           "oracle (B pool_ood pairs) | length_matched (B random pool pairs with the token counts "
                           "of DASA's selection)", choices=AUGMENTS)
    dasa_budget: float = setting(0.1, "B: below 1 a fraction of the train size; from 1 up a whole number of pairs")
    dasa_combination: str = setting("mean", "how the two score percentiles combine: mean | max | mahalanobis | knn "
                                    "(one alone)", choices=COMBINATIONS)
    dasa_k: int = setting(50, "kNN score: distance to the k-th nearest train feature", within=">= 1")
    dasa_features: str = setting("query_first", "what DASA scores: query_first | query_mean (the query alone, "
                                 "encoded by the fine-tuned backbone) | pair_mean | pair_first | head_hidden "
                                 "(docs/STUDY.md section 5 has the measurements behind the default)",
                                 choices=REPRESENTATIONS)
    dasa_mahalanobis: str = setting("normalised", "Mahalanobis on L2-normalised features (as kNN) | raw",
                                    choices=("normalised", "raw"))
    dasa_knn_search: str = setting("auto", "exact | ivf (approximate) | auto (exact up to 1e9 pool x train pairs)",
                                   choices=KNN_SEARCHES)
    max_pool_pairs: int = setting(0, "sub-sample pool_id and pool_ood each to at most this many pairs; 0 = all",
                                  within=">= 0")
    # running
    device: str = setting("auto", "auto | cpu | cuda", choices=("auto", "cpu", "cuda"))
    progress: bool = setting(True, "progress bars (switch off for batch runs)", running=True)
    reuse: bool = setting(True, "take a finished run of the same settings from the cache, not train again",
                          running=True)
    out_dir: str = setting("reports/ft", "results (JSON per run and results.jsonl) go here", running=True)

    def data_path(self) -> Path:
        where = self.data or os.environ.get("DARL_DATA", "")
        if not where:
            raise ConfigError("data: no data location; pass --data PATH (in a profile or a notebook: data: PATH) "
                              "or set DARL_DATA")
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

    def probe_settings(self) -> ProbeSettings:
        return ProbeSettings(self.lp_epochs, self.lp_batch_size, self.lp_lr, self.weight_decay, self.lp_patience,
                             self.seed, self.lp_select)

    def key(self, *names: str, extra: str = "", exclude: tuple = ()) -> str:
        """A short hash of the named settings (when none: all but those that only steer the running, and
        `exclude`) and `extra`, to name cached artefacts and runs."""
        from .cache import code_fingerprint
        d = {**asdict(self), "split_seed": self.split_salt}  # -1 and the seed it stands for are one split
        names = names or tuple(k for k in sorted(d) if k not in RUNNING + tuple(exclude))
        chosen = {**{k: d[k] for k in names}, "extra": extra, "code": code_fingerprint()}
        return hashlib.sha1(json.dumps(chosen, sort_keys=True, default=str).encode()).hexdigest()[:12]

    def validate(self) -> "RunConfig":
        """Every field against its declared type, choices and range, then the rules that tie fields together,
        then the paths and the device; resolves `data` to the file actually read."""
        for f in fields(self):
            _check_field(f, getattr(self, f.name))
        self._check_rules()
        self._check_places()
        return self

    def _check_rules(self) -> None:
        def bad(name, why):
            raise ConfigError(f"{name}: {getattr(self, name)!r} {why}")
        if not self.alphas or not all(0 <= a <= 1 for a in self.alphas) or len(set(self.alphas)) < len(self.alphas):
            bad("alphas", "must be a non-empty list of distinct values in [0, 1]")
        if not (0 < self.dasa_budget < 1 or (self.dasa_budget >= 1 and float(self.dasa_budget).is_integer())):
            bad("dasa_budget", "must be a fraction in (0, 1) of the train size or a whole number of pairs >= 1")
        if self.held_out and self.protocol != "department":
            bad("held_out", f"names groups to hold out, which only the department protocol does (protocol is "
                            f"{self.protocol!r})")
        unknown = set(self.csv_columns) - CSV_OPTIONS
        if unknown:
            bad("csv_columns", f"has unknown key(s) {sorted(unknown)}; expected some of {sorted(CSV_OPTIONS)}")
        try:
            check_occ(self.occ_lambda, self.occ_rho, self.occ_prior, self.occ_direction)  # rho = 0 with reverse KL
        except ValueError as e:
            raise ConfigError(str(e)) from None

    def _check_places(self) -> None:
        """The data, the device, the output folder and the backbone exist and can be used."""
        path = self.data_path()
        if not path.exists() and self.dataset != "wands":  # WANDS downloads into a missing folder
            raise ConfigError(f"data: {path} does not exist")
        if path.exists() and path.is_dir() != (self.dataset == "wands"):
            raise ConfigError(f"data: {path} is a {'folder' if path.is_dir() else 'file'}; dataset "
                              f"{self.dataset!r} reads a {'folder' if self.dataset == 'wands' else 'file'}")
        self.data = str(path.resolve())  # results and cache keys record the file actually read
        if self.device == "cuda":
            if not torch.cuda.is_available():
                raise ConfigError("device: 'cuda' asked for, but torch sees no CUDA GPU")
        problem = folder_problem(Path(self.out_dir))  # checked, not created: results make it when they are written
        if problem:
            raise ConfigError(f"out_dir: {self.out_dir!r} cannot be written ({problem})")
        try:
            check_backbone(self.backbone, self.max_length)
        except BackboneError as e:
            raise ConfigError(str(e)) from None

    @classmethod
    def from_dict(cls, values: dict) -> "RunConfig":
        known = {f.name for f in fields(cls)}
        for name in values:
            if name not in known:
                near = difflib.get_close_matches(name, known, n=1)
                raise ConfigError(f"unknown setting {name!r}" + (f"; did you mean {near[0]!r}?" if near else ""))
        return cls(**values)


def folder_problem(folder: Path) -> str | None:
    """Why files cannot be written under folder, made with its parents where missing; None if they can. Nothing is
    created: its nearest existing parent must be a writable folder."""
    existing = next(p for p in [folder, *folder.parents] if p.exists())
    if not existing.is_dir():
        return f"{existing} is a file, not a folder"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"{existing} is not writable"
    return None


RUNNING = tuple(f.name for f in fields(RunConfig) if f.metadata["running"])  # left out of cache keys
LPFT_ONLY = tuple(f.name for f in fields(RunConfig) if f.metadata["lpft_only"])  # plain FT ignores these
OCC_FIELDS = tuple(f.name for f in fields(RunConfig) if f.name.startswith("occ_"))  # the OCC loss's settings


def setting_help(f) -> str:
    """A field's help text with its range, for --help."""
    within = f.metadata["within"]
    return f.metadata["help"] + (f"; {range_words(within)}" if within else "")


def range_words(within: str) -> str:
    return f"must be {within}" if within.startswith(">") else f"must be in {within}"


def _check_field(f, value) -> None:
    """One field against its declared type, its choices and its range."""
    _check_type(f.name, value, _declared_type(f))
    if _declared_type(f) is list:
        for v in value:
            _check_type(f.name, v, item_type(f))
    choices = f.metadata["choices"]
    if choices and value not in choices:
        near = difflib.get_close_matches(value, choices, n=1)
        raise ConfigError(f"{f.name}: {value!r} is not one of {', '.join(choices)}"
                          + (f"; did you mean {near[0]!r}?" if near else ""))
    if f.metadata["within"] and not in_range(value, f.metadata["within"]):
        raise ConfigError(f"{f.name}: {value!r} {range_words(f.metadata['within'])}")


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
        raise ConfigError(f"{name}: {value!r} is {type_words(type(value))}, expected {type_words(expected)}")


TYPE_WORDS = {"str": "a string", "int": "an integer", "float": "a number", "bool": "true or false", "list": "a list",
              "dict": "a mapping", "NoneType": "empty"}


def type_words(kind: type) -> str:
    """A type as a message says it: 'an integer', not 'int'."""
    return TYPE_WORDS.get(kind.__name__, f"a {kind.__name__}")


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
