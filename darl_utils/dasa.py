"""DASA (docs/STUDY.md section 5): score the unlabelled pool with two OOD detectors on a representation of the
model fine-tuned on train, take the B pairs that train covers worst, reveal their labels, and add them to train.

The representation is `dasa_features` (by default the query alone, encoded by the fine-tuned backbone: pair
features mostly measured the pair's length). Every candidate representation is measured on each selection (AUROC
overall and within token-count quintiles, correlation with length) and recorded beside it.

Controls with the same B: `random` pool pairs; `length_matched`, random pool pairs with the token counts of
DASA's selection (does DASA select OOD pairs, or pairs of some length?); `oracle`, pool_ood pairs (an upper
bound: it knows which pairs are OOD); `none`, train as split.

The pool's labels live in an `Annotator` and come out only through `reveal`, called once, after the selection:
the frame that is scored has no label column. Which part a pool pair came from (pool_id or pool_ood) is kept
beside it for the detector quality, the OOD share of the selection and the oracle, never for scoring.

    augmented = augmented_train(cfg, split, parts, runtime, run_ft)  # (train frame, record); cached by settings
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
from safetensors.numpy import load_file, save_file

from .cache import atomic_write, data_fingerprint, entry_lock, processes_tag, weights_tag
from .config import LPFT_ONLY, OCC_FIELDS, ConfigError, RunConfig
from .data import DEGREES, cache_dir
from .distributed import broadcast, wait_for_everyone
from .ood import Mahalanobis, combine, detector_quality, knn_distance, l2_normalise, percentile, select_top
from .representations import (
    QUERY_SIDE,
    REPRESENTATIONS,
    cached_representations,
    length_correlation,
    length_stratified_auroc,
    representation_path,
)
from .results import cached_path, stored_path
from .splits import Split, subsample
from .training import Runtime

POOL_PARTS = ("pool_id", "pool_ood")
SCORED_PARTS = ("id_val", "id_test", "ood_test", "pool")  # train is the reference; id_val the percentile scale
SCORES = ("mahalanobis", "knn", "combined")
DETECTED = ("mahalanobis_raw", "knn_raw", "combined")  # what each detector's AUROC is of: raw scores, untied
# settings the random and oracle controls ignore
SCORE_ONLY = ("dasa_combination", "dasa_k", "dasa_knn_search", "dasa_mahalanobis", "dasa_features")
DASA_FIELDS = ("augment", "dasa_budget", "max_pool_pairs") + SCORE_ONLY


def augment_exclusions(cfg: RunConfig) -> tuple:
    """Settings that do not change this run's training set, so they stay out of its cache key (plain runs
    keep the keys they had before DASA existed)."""
    return DASA_FIELDS if cfg.augment == "none" else () if cfg.augment in ("dasa", "length_matched") else SCORE_ONLY


class Annotator:
    """The simulated annotator: holds the pool's gold labels and hands out only the rows asked for."""

    def __init__(self, labels):
        self._labels = np.asarray(labels).copy()
        self.revealed = 0

    def reveal(self, rows: np.ndarray) -> np.ndarray:
        self.revealed += len(rows)
        return self._labels[np.asarray(rows, dtype=np.int64)]


@dataclass
class Pool:
    frame: pd.DataFrame    # query, item and ids: no label
    is_ood: np.ndarray     # from pool_ood: for evaluation, the oracle and the OOD share only
    annotator: Annotator


def unlabelled_pool(split: Split, max_pairs: int, seed: int) -> Pool:
    frames = [subsample(split[p], max_pairs, seed) for p in POOL_PARTS]
    pool = pd.concat(frames, ignore_index=True)
    return Pool(pool.drop(columns=["label"]), np.repeat([False, True], [len(f) for f in frames]),
                Annotator(pool["label"].to_numpy()))


def budget_size(budget: float, train_size: int, pool_size: int) -> int:
    """B as a number of pairs: a fraction of the train size below 1, else the number itself."""
    size = int(round(budget * train_size)) if budget < 1 else int(budget)
    if size > pool_size:
        raise ConfigError(f"dasa_budget: {budget!r} asks for {size} pairs but the pool holds {pool_size}")
    return size


def choose(augment: str, pool: Pool, size: int, seed: int, combined: np.ndarray | None = None) -> np.ndarray:
    """Pool rows to label: the top `size` by combined score (dasa), `size` at random, or `size` pool_ood rows
    (all of them when there are fewer)."""
    rng = np.random.default_rng(seed)
    if augment == "dasa":
        return select_top(combined, size, seed)
    if augment == "random":
        return np.sort(rng.choice(len(pool.frame), size, replace=False))
    ood_rows = np.flatnonzero(pool.is_ood)
    return np.sort(rng.choice(ood_rows, min(size, len(ood_rows)), replace=False))


def length_matched_rows(tokens: np.ndarray, selected: np.ndarray, seed: int) -> np.ndarray:
    """Pool rows drawn at random with the token counts of `selected` (DASA's rows): for each selected pair one
    pool pair of the same count, else of the nearest count still available. Separates "selects OOD pairs" from
    "selects pairs of some length"."""
    rng = np.random.default_rng(seed)
    available = {t: list(rng.permutation(np.flatnonzero(tokens == t))) for t in np.unique(tokens)}
    chosen = []
    for t in rng.permutation(np.asarray(tokens)[selected]):
        nearest = min((c for c, rows in available.items() if rows), key=lambda c: (abs(c - t), c))
        chosen.append(available[nearest].pop())
    return np.sort(np.asarray(chosen, dtype=np.int64))


def raw_scores(train_x: np.ndarray, train_y: np.ndarray, features: dict[str, np.ndarray], k: int, search: str,
               mahalanobis: str = "raw", knn_reference: np.ndarray | None = None) -> dict[str, dict]:
    """Per part: the raw Mahalanobis and kNN scores. mahalanobis "normalised" scores unit-length features (the
    norm of a pooled feature can carry the shift). kNN searches `knn_reference` (default train_x): with query
    features, train's distinct queries, as a query repeated over its pairs would fill the k nearest itself."""
    maha = mahalanobis_scores(train_x, train_y, features, mahalanobis)
    knn = knn_scores(train_x, features, k, search, knn_reference)
    return {p: {"mahalanobis": maha[p], "knn": knn[p]} for p in features}


def mahalanobis_scores(train_x, train_y, features: dict, variant: str = "raw") -> dict[str, np.ndarray]:
    """Per part: Mahalanobis on the features as they are (raw) or L2-normalised."""
    prepare = (lambda x: l2_normalise(x).numpy()) if variant == "normalised" else (lambda x: x)
    maha = Mahalanobis(prepare(train_x), train_y)
    return {p: maha.score(prepare(x)) for p, x in features.items()}


def knn_scores(train_x, features: dict, k: int, search: str, reference=None) -> dict[str, np.ndarray]:
    """Per part: the distance to the k-th nearest of `reference` (default train_x)."""
    reference = train_x if reference is None else reference
    # k counts train pairs; among distinct queries the same coverage is k scaled by their share of the pairs
    k = max(1, min(round(k * len(reference) / len(train_x)), len(reference)))
    return {p: knn_distance(reference, x, k, search) for p, x in features.items()}


def distinct_rows(queries: np.ndarray) -> np.ndarray:
    """The first row of each distinct query."""
    return np.sort(np.unique(np.asarray(queries, dtype=str), return_index=True)[1])


def score_features(train_x: np.ndarray, train_y: np.ndarray, features: dict[str, np.ndarray], k: int,
                   search: str, combination: str, mahalanobis: str = "raw",
                   knn_reference: np.ndarray | None = None) -> dict[str, dict[str, np.ndarray]]:
    """Per part: raw Mahalanobis and kNN scores, their percentiles against id_val, and the combined score."""
    raw = raw_scores(train_x, train_y, features, k, search, mahalanobis, knn_reference)
    out = {}
    for p, r in raw.items():
        pct = {s: percentile(raw["id_val"][s], v) for s, v in r.items()}
        out[p] = {**{f"{s}_raw": v for s, v in r.items()}, **pct,
                  "combined": combine(pct["mahalanobis"], pct["knn"], combination)}
    return out


def selection_folder(cfg: RunConfig) -> Path:
    # its source FT differs per process count and per MiniLM copy
    key = cfg.key(extra=data_fingerprint(cfg.data_path()) + processes_tag() + weights_tag(cfg.backbone),
                  exclude=LPFT_ONLY + OCC_FIELDS + augment_exclusions(cfg))
    return cache_dir() / "augment" / f"{cfg.augment}-{key}"


def source_config(cfg: RunConfig) -> RunConfig:
    """The model whose features DASA scores: plain FT (cross-entropy, every OCC setting at its default) on train
    as split, otherwise the same settings."""
    plain = RunConfig()
    return replace(cfg, augment="none", **{name: getattr(plain, name) for name in OCC_FIELDS})


def pool_features(cfg: RunConfig, parts: dict, pool: Pool, runtime: Runtime,
                  train_source: Callable[[RunConfig], dict]) -> tuple[dict, dict, dict]:
    """Every candidate representation (and token counts) of train, the scored parts and the pool under the
    source FT model (`train_source` trains it or takes it from the cache and returns its record), the cache
    files that hold them, and the source run's record."""
    from safetensors.torch import load_model

    from .modeling import RelevanceModel, load_backbone
    source = broadcast(train_source(source_config(cfg)))
    checkpoint = cached_path(source["checkpoint"]) / "model.safetensors"
    backbone, tokenizer, kind, _ = load_backbone(cfg.backbone)
    model = RelevanceModel(backbone, kind, cfg.dropout).to(runtime.device)
    load_model(model, str(checkpoint), device=str(runtime.device))
    # relative to the cache and stamped by the run record (not the file mtime): a copied cache keeps its
    # entries, a retrained checkpoint is a new model
    model_id = f"run|{source['checkpoint']}|{source['finished']}"
    frames = {**{p: parts[p] for p in ("train", "id_val", "id_test", "ood_test")}, "pool": pool.frame}
    features, files = {}, {}
    for p, frame in frames.items():
        files[p] = stored_path(representation_path(model_id, frame, cfg.max_length, runtime.precision))
        features[p] = cached_representations(model, model_id, frame, tokenizer, cfg.max_length,
                                             cfg.eval_batch_size, runtime, cfg.progress and runtime.main)
    return features, files, source


def representation_table(features: dict, train_y: np.ndarray, train_queries: np.ndarray, is_ood: np.ndarray,
                         k: int, search: str) -> list[dict]:
    """For every candidate representation and detector: AUROC (pool_ood vs pool_id) overall and within
    token-count quintiles, and the score's Spearman correlation with the token count."""
    rows, tokens = [], features["pool"]["tokens"]
    for name in REPRESENTATIONS:
        train_x = features["train"][name]
        reference = train_x[distinct_rows(train_queries)] if name in QUERY_SIDE else None
        pool = {"pool": features["pool"][name]}
        scores = {f"mahalanobis ({m})": mahalanobis_scores(train_x, train_y, pool, m)["pool"]
                  for m in ("raw", "normalised")}
        scores["knn"] = knn_scores(train_x, pool, k, search, reference)["pool"]  # once: it normalises either way
        rows += [{"representation": name, "detector": detector, **quality_by_length(values, is_ood, tokens)}
                 for detector, values in scores.items()]
    return rows


def quality_by_length(scores: np.ndarray, is_ood: np.ndarray, tokens: np.ndarray) -> dict:
    """AUROC and FPR95 of a score, its AUROC within token-count quintiles and its correlation with length."""
    return {**detector_quality(scores[is_ood], scores[~is_ood]), **length_stratified_auroc(scores, is_ood, tokens),
            "corr_tokens": length_correlation(scores, tokens)}


def augmented_train(cfg: RunConfig, split: Split, parts: dict, runtime: Runtime,
                    train_source: Callable[[RunConfig], dict]) -> tuple[pd.DataFrame, dict]:
    """Train plus the pool pairs that cfg.augment chooses, with their labels revealed, and the record of what
    was added. Saved under the cache (train.csv.gz, scores.safetensors, selection.json written last).
    `train_source(config)` gives the record of the FT run whose features DASA scores (pipeline.run_ft)."""
    folder = selection_folder(cfg)
    with entry_lock(folder):  # a second process waits, then reads the first one's selection
        if not broadcast(cfg.reuse and (folder / "selection.json").exists()):
            _select(cfg, split, parts, runtime, train_source, folder)
    record = json.loads((folder / "selection.json").read_text())
    return read_train(folder), record


def _select(cfg: RunConfig, split: Split, parts: dict, runtime: Runtime, train_source, folder: Path) -> None:
    started = time.time()
    pool = unlabelled_pool(split, cfg.max_pool_pairs, cfg.split_salt)
    size = budget_size(cfg.dasa_budget, len(parts["train"]), len(pool.frame))  # before any training
    matched = None
    if cfg.augment == "length_matched":  # DASA's own selection first: its token counts are the target
        matched = augmented_train(replace(cfg, augment="dasa"), split, parts, runtime, train_source)[1]
    features, files, source = (pool_features(cfg, parts, pool, runtime, train_source) if cfg.augment == "dasa"
                               else (None, {}, None))
    if runtime.main:
        _select_and_save(cfg, parts, pool, size, features, source, folder, started, files, matched)
    wait_for_everyone()  # the others read the selection process 0 wrote


def read_train(folder: Path) -> pd.DataFrame:
    """The saved augmented train: text kept as written ("NA" is a query, not a missing value)."""
    return pd.read_csv(folder / "train.csv.gz", keep_default_na=False, na_values={"score": [""]},
                       dtype={"query": str, "item": str, "item_id": str, "group": str})


def _dasa_scores(cfg: RunConfig, parts: dict, pool: Pool, features: dict) -> tuple[dict, dict, list]:
    """The scores of the chosen representation on every scored part, each detector's quality on the pool, and
    the table of every candidate representation."""
    name, train_y = cfg.dasa_features, parts["train"]["label"].to_numpy()
    train_queries, tokens = parts["train"]["query"].to_numpy(), features["pool"]["tokens"]
    train_x = features["train"][name]
    reference = train_x[distinct_rows(train_queries)] if name in QUERY_SIDE else None
    scores = score_features(train_x, train_y, {p: features[p][name] for p in SCORED_PARTS}, cfg.dasa_k,
                            cfg.dasa_knn_search, cfg.dasa_combination, cfg.dasa_mahalanobis, reference)
    scores["pool"]["tokens"] = tokens
    detectors = {s: quality_by_length(scores["pool"][raw], pool.is_ood, tokens) for s, raw in zip(SCORES, DETECTED)}
    table = representation_table(features, train_y, train_queries, pool.is_ood, cfg.dasa_k, cfg.dasa_knn_search)
    return scores, detectors, table


def _matched_rows(cfg: RunConfig, dasa_record: dict) -> tuple[np.ndarray, dict]:
    """Rows of the length-matched control and how well their token counts match DASA's selection."""
    scores = load_scores(dasa_record)["pool"]
    tokens, selected = scores["tokens"], np.flatnonzero(scores["selected"] == 1)
    rows = length_matched_rows(tokens, selected, cfg.seed)
    match = {"dasa_mean_tokens": float(tokens[selected].mean()), "mean_tokens": float(tokens[rows].mean()),
             "pool_mean_tokens": float(tokens.mean()),
             "same_count_share": float(np.mean(np.sort(tokens[rows]) == np.sort(tokens[selected]))),
             "dasa_selection": dasa_record["folder"]}
    return rows, match


def _select_and_save(cfg, parts, pool: Pool, size: int, features, source, folder: Path, started: float,
                     files: dict, matched: dict | None = None) -> None:
    scores, detectors, table, seconds, lengths = None, {}, [], {}, {}
    if features is not None:
        t = time.perf_counter()
        scores, detectors, table = _dasa_scores(cfg, parts, pool, features)
        seconds["scoring"] = round(time.perf_counter() - t, 2)
    if matched is not None:
        rows, lengths = _matched_rows(cfg, matched)
    else:
        rows = choose(cfg.augment, pool, size, cfg.seed, None if scores is None else scores["pool"]["combined"])
    if scores is not None:
        tokens = scores["pool"]["tokens"]
        lengths = {"selected_mean_tokens": float(tokens[rows].mean()), "pool_mean_tokens": float(tokens.mean())}
    labels = pool.annotator.reveal(rows)  # the only read of pool labels
    added = pool.frame.iloc[rows].assign(label=labels, source=np.where(pool.is_ood[rows], "pool_ood", "pool_id"),
                                         pool_row=rows)
    train_rows = parts["train"].assign(source="train", pool_row=-1)
    if scores is not None:
        added = added.assign(score=scores["pool"]["combined"][rows])
    train = pd.concat([train_rows, added], ignore_index=True)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write(folder / "train.csv.gz", lambda name: train.to_csv(name, index=False, compression="gzip"))
    if scores is not None:
        tensors = {f"{p}/{name}": np.asarray(v, dtype=np.float64) for p, d in scores.items() for name, v in d.items()
                   if name != "tokens"}
        tensors.update({"pool/is_ood": pool.is_ood.astype(np.int64), "pool/tokens": scores["pool"]["tokens"],
                        "pool/selected": np.isin(np.arange(len(pool.frame)), rows).astype(np.int64)})
        atomic_write(folder / "scores.safetensors", lambda name: save_file(tensors, name))
    record = {"augment": cfg.augment, "budget": size, "added": len(rows), "revealed": pool.annotator.revealed,
              "train_before": len(parts["train"]), "train_after": len(train),
              "pool_sizes": {"pool_id": int((~pool.is_ood).sum()), "pool_ood": int(pool.is_ood.sum())},
              "ood_share": float(pool.is_ood[rows].mean()) if len(rows) else 0.0,
              "added_degrees": {d: int((labels == i).sum()) for i, d in enumerate(DEGREES)},
              "detectors": detectors, "representations": table, "lengths": lengths,
              "source_run": source and source["checkpoint"], "features": files,
              "folder": stored_path(folder), "seconds": {**seconds, "total": round(time.time() - started, 1)},
              "settings": {k: getattr(cfg, k) for k in DASA_FIELDS}}
    # last and atomic: its presence means the selection is complete
    atomic_write(folder / "selection.json", lambda name: Path(name).write_text(json.dumps(record, indent=2)))


def load_scores(record: dict) -> dict[str, dict[str, np.ndarray]]:
    """The stored scores of a dasa selection: {part: {score name: values}}, plus pool is_ood and selected."""
    flat = load_file(str(cached_path(record["folder"]) / "scores.safetensors"))
    out: dict = {}
    for name, values in flat.items():
        part, score = name.split("/", 1)
        out.setdefault(part, {})[score] = values
    return out


def selected_pairs(record: dict, top: int = 20) -> pd.DataFrame:
    """The added pairs with the highest scores (dasa) or the first added (controls), for a table."""
    train = read_train(cached_path(record["folder"]))
    added = train[train["source"] != "train"].copy()
    added["label"] = [DEGREES[i] for i in added["label"]]
    if "score" in added:
        added = added.sort_values("score", ascending=False)
    return added.head(top)[[c for c in ("query", "item", "label", "source", "score") if c in added]]


def selection_line(record: dict) -> str:
    detectors = "\n".join(f"  {name}: AUROC {q['auroc']:.3f} (within length quintiles "
                          f"{q.get('auroc_within_length', float('nan')):.3f}), FPR95 {q['fpr_at_95_tpr']:.3f}, "
                          f"corr with tokens {q.get('corr_tokens', float('nan')):+.2f}"
                          for name, q in record["detectors"].items())
    text = (f"{record['augment']}: added {record['added']} of B={record['budget']} pool pairs to "
            f"{record['train_before']} train pairs; OOD share {record['ood_share']:.3f} (pool "
            f"{record['pool_sizes']['pool_ood'] / sum(record['pool_sizes'].values()):.3f})")
    if record.get("lengths"):
        text += "\n  tokens: " + ", ".join(f"{k} {v:.1f}" for k, v in record["lengths"].items()
                                           if isinstance(v, float))
    if detectors:
        text += f"\n{detectors}"
    if record.get("representations"):
        table = pd.DataFrame(record["representations"]).set_index(["representation", "detector"])
        text += "\n" + table[["auroc", "auroc_within_length", "corr_tokens"]].round(3).to_string()
    return text
