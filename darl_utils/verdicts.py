"""Verdicts on the paper's five claims (docs/STUDY.md sections 1 and 6), each resting on differences between two
models on the same test pairs with a 95 % paired-bootstrap interval over test queries (`intervals`).

A claim "holds" only when the interval lies on the claimed side of zero, "does not hold" when it lies on the other
side, and is "not distinguishable" when it contains zero. The tables these functions read name models as
`tables.comparison` does: FT, LP, FT+OCC, FT+fKL, FT+LS, FT+DASA, FT+random, FT+length-matched, FT+oracle,
LPFT (alpha*), LPFT (alpha 0.6), LPFT+OCC+DASA (alpha*) (DaRL) and its ablations; one row per model and seed, with the
result line in `record`.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from .data import DEGREES
from .intervals import (
    Difference,
    SeedPredictions,
    model_interval,
    paired_difference,
    paired_mean_difference,
    verdict_word,
)
from .results import predictions_of

RESAMPLES = 1000  # bootstrap resamples per comparison
BOOTSTRAP_SEED = 0  # the same table gives the same intervals
PARTS = {"ID": "id_test", "OOD": "ood_test"}
DARL = "LPFT+OCC+DASA (alpha*)"
ABLATIONS = {"DASA": "LPFT+OCC (alpha*)", "LPFT": "FT+OCC+DASA", "OCC": "LPFT+DASA (alpha*)"}  # DaRL without it
BASELINES = ("FT", "LP", "FT+LS")  # claim 5's baselines: no part of DaRL
OCC_CONTROLS = ("FT+fKL", "FT+LS")  # the forward KL with OCC's prior (one difference), then label smoothing


def seed_predictions(table: pd.DataFrame, a: str, b: str | None, part: str) -> list[SeedPredictions]:
    """Model a's and model b's predictions on `part`, one entry per seed both have (b None: a alone)."""
    rows_a = table[table["model"] == a].drop_duplicates("seed").set_index("seed")
    rows_b = table[table["model"] == (b or a)].drop_duplicates("seed").set_index("seed")
    out = []
    for seed in sorted(set(rows_a.index) & set(rows_b.index)):
        probs_a, labels, queries = predictions_of(rows_a.loc[seed, "record"], part)
        probs_b, labels_b, queries_b = predictions_of(rows_b.loc[seed, "record"], part)
        if not np.array_equal(queries, queries_b):
            raise ValueError(f"{a} and {b} were not evaluated on the same {part} pairs (seed {seed})")
        out.append(SeedPredictions(labels, queries, probs_a, probs_b, labels_b=labels_b))
    return out


def compare(table: pd.DataFrame, a: str, b: str, part: str, metric: str) -> Difference | None:
    """metric(a) - metric(b) on `part`, pooled over the seeds both have; None when one of them is missing."""
    seeds = seed_predictions(table, a, b, part)
    return paired_difference(seeds, metric, RESAMPLES, BOOTSTRAP_SEED) if seeds else None


def _has(table: pd.DataFrame, *models: str) -> bool:
    return all((table["model"] == m).any() for m in models)


def _combine(words: list[str]) -> str:
    """All hold: holds; any on the wrong side: does not hold; otherwise not distinguishable."""
    if all(w == "holds" for w in words):
        return "holds"
    return "does not hold" if "does not hold" in words else "not distinguishable"


def claim1(table: pd.DataFrame, model: str = "FT") -> str:
    """Claim 1: FT is over-confident (mean top probability above accuracy) and weakest on the middle degree."""
    if not _has(table, model):
        return f"Claim 1: not tested here ({model} missing)."
    gaps = {tag: model_interval(seed_predictions(table, model, None, part), "overconfidence", RESAMPLES,
                                BOOTSTRAP_SEED) for tag, part in PARTS.items()}
    word = _combine([verdict_word(g) for g in gaps.values()])
    rows = table[table["model"] == model]
    f1 = {d: np.mean([r["id_test"]["f1_per_degree"][d] for r in rows["record"]]) for d in DEGREES}
    weakest = min(f1, key=f1.get)
    return (f"Claim 1, over-confidence, {word}: {model}'s mean top probability minus its accuracy is "
            + ", ".join(f"{g.text()} {tag}" for tag, g in gaps.items())
            + f". Its weakest degree on id_test is {weakest} (F1 "
            + ", ".join(f"{d} {v:.3f}" for d, v in f1.items())
            + f"): the middle degree {'is' if weakest == 'weak' else 'is not'} the hardest here.")


def claim2(table: pd.DataFrame, lpft: str = "LPFT (alpha*)", base: str = "FT") -> str:
    """Claim 2: LPFT at alpha* balances ID and OOD better than FT: a higher mean of ID and OOD macro-F1."""
    if not _has(table, lpft, base):
        return f"Claim 2: not tested here ({lpft} or {base} missing)."
    parts = [seed_predictions(table, lpft, base, part) for part in PARTS.values()]
    balance = paired_mean_difference(parts, "macro_f1", RESAMPLES, BOOTSTRAP_SEED)
    each = {tag: compare(table, lpft, base, part, "macro_f1") for tag, part in PARTS.items()}
    alpha = table[table["model"] == lpft]["alpha"].mean()
    text = (f"Claim 2 {verdict_word(balance)}: {lpft} minus {base} (alpha* {alpha:.2f} on average over seeds), "
            f"mean of ID and OOD macro-F1: {balance.text()}; ID {each['ID'].text()}, OOD {each['OOD'].text()}.")
    if _has(table, "LPFT (alpha 0.6)"):
        paper = paired_mean_difference([seed_predictions(table, "LPFT (alpha 0.6)", base, p) for p in PARTS.values()],
                                       "macro_f1", RESAMPLES, BOOTSTRAP_SEED)
        text += f" At the paper's alpha = 0.6: {paper.text()} ({verdict_word(paper)})."
    if alpha == 0:
        text += " alpha* is 0: id_val preferred the probe to any mix with the fine-tuned weights."
    return text


def claim3(table: pd.DataFrame, occ: str = "FT+OCC", base: str = "FT", controls: tuple = OCC_CONTROLS) -> str:
    """Claim 3: OCC raises the entropy of the predictions (less over-confidence) without losing macro-F1. It holds
    when entropy's interval lies above zero and macro-F1's does not lie below it."""
    if not _has(table, occ, base):
        return f"Claim 3: not tested here ({occ} or {base} missing)."
    entropy = compare(table, occ, base, "id_test", "entropy")
    f1 = {tag: compare(table, occ, base, part, "macro_f1") for tag, part in PARTS.items()}
    ece = compare(table, occ, base, "id_test", "ece")
    lost = any(verdict_word(d) == "does not hold" for d in f1.values())
    word = "does not hold" if lost or verdict_word(entropy) == "does not hold" else verdict_word(entropy)
    text = (f"Claim 3 {word}: {occ} minus {base} on id_test: entropy {entropy.text()} nats, ECE {ece.text()}; "
            f"macro-F1 ID {f1['ID'].text()}, OOD {f1['OOD'].text()}.")
    for control in (c for c in controls if _has(table, c)):
        e, c_ece = compare(table, occ, control, "id_test", "entropy"), compare(table, occ, control, "id_test", "ece")
        c_f1 = compare(table, occ, control, "ood_test", "macro_f1")
        text += (f" Against {control} (ECE lower: {verdict_word(c_ece, 'lower')}): entropy {e.text()}, "
                 f"ECE {c_ece.text()}, OOD macro-F1 {c_f1.text()}.")
    return text


def claim4(table: pd.DataFrame) -> str:
    """Claim 4: DASA improves OOD macro-F1 over FT on train; read against as many random pool pairs (more data
    alone), random pairs of the same token counts (length alone) and the oracle (pool_ood pairs)."""
    if not _has(table, "FT+DASA", "FT"):
        return "Claim 4: not tested here (FT or FT+DASA missing)."
    gain = compare(table, "FT+DASA", "FT", "ood_test", "macro_f1")
    text = f"Claim 4 {verdict_word(gain)}: FT+DASA minus FT on ood_test macro-F1 {gain.text()}."
    readings = {"FT+random": "as many random pool pairs", "FT+length-matched": "random pool pairs of the same "
                "token counts", "FT+oracle": "as many pool_ood pairs (the oracle)"}
    for control, what in readings.items():
        if _has(table, control):
            d = compare(table, "FT+DASA", control, "ood_test", "macro_f1")
            text += f" Against {what}: {d.text()} ({verdict_word(d)})."
    shares = {m: np.mean([r["augmentation"]["ood_share"] for r in table[table["model"] == m]["record"]])
              for m in ("FT+DASA", "FT+random", "FT+length-matched") if _has(table, m)}
    if shares:
        text += " OOD share of the added pairs: " + ", ".join(f"{m} {v:.3f}" for m, v in shares.items()) + "."
    return text


def claim5(table: pd.DataFrame) -> str:
    """Claim 5: DaRL beats the best baseline (FT, LP, FT+LS) on both ID and OOD macro-F1; then what each part
    adds (DaRL minus DaRL without it)."""
    baselines = [b for b in BASELINES if _has(table, b)]
    if not _has(table, DARL) or not baselines:
        return "Claim 5: not tested here (DaRL or every baseline missing)."
    words, parts = [], []
    for tag, part in PARTS.items():
        best = max(baselines, key=lambda b: table[table["model"] == b][f"{tag.lower()}_macro_f1"].mean())
        d = compare(table, DARL, best, part, "macro_f1")
        words.append(verdict_word(d))
        parts.append(f"{tag} macro-F1 {d.text()} (against {best}, the best baseline there)")
    text = f"Claim 5 {_combine(words)}: DaRL minus the best baseline, " + "; ".join(parts) + "."
    gains = []
    for part_name, without in ABLATIONS.items():
        if _has(table, without):
            d = compare(table, DARL, without, "ood_test", "macro_f1")
            gains.append(f"{part_name} {d.text()} ({verdict_word(d)})")
    if gains:
        text += " What each part adds on OOD macro-F1 (DaRL minus DaRL without it): " + "; ".join(gains) + "."
    if (table[table["model"] == DARL]["alpha"] == 0).all():
        text += (" DaRL's alpha* is 0 on every seed: id_val preferred the probe to any mix with the fine-tuned "
                 "weights, so DaRL is LP on the augmented train, and OCC, which acts in the fine-tuning stage, "
                 "does not enter it.")
    return text + (" The paper's figures (ID 0.9349, OOD 0.6678) are on its private data and not comparable in "
                   "level; only the direction of the differences is.")


def differences_to(table: pd.DataFrame, reference: str = "FT", metric: str = "macro_f1") -> dict[str, dict]:
    """Per model: its macro-F1 minus the reference's, ID and OOD, as 'estimate [low, high]' text."""
    out = {}
    for model in dict.fromkeys(table["model"]):
        if model == reference or not _has(table, reference):
            continue
        out[model] = {f"{tag} macro-F1 − {reference} [95 % CI]": compare(table, model, reference, part, metric).text()
                      for tag, part in PARTS.items()}
    return out


def caveats(cfg, seeds: list, lead: str = "") -> str:
    """What limits the reading of a verdict: a sub-sample, a short training, the number of seeds."""
    notes = [lead] if lead else []
    if len(seeds) == 1:
        notes.append("One seed: the intervals cover the resampling of test queries, not the variation between "
                     "training runs or splits, so they are too narrow for a claim about the method.")
    if cfg.max_train_pairs:
        notes.append(f"Train is a sub-sample of at most {cfg.max_train_pairs:,} pairs and models train "
                     f"{cfg.epochs} epoch(s): a budget, not the full study.")
    return " ".join(notes) or "Full train split; intervals pool the seeds' paired bootstraps over test queries."
