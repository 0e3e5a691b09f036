"""Tables the notebooks and the index show (docs/STUDY.md section 6): frames made from splits and from result
lines (`results`), named and ordered for reading, and their escaped HTML."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .data import DEGREES
from .results import read_records
from .splits import PARTS, PROTOCOLS, SplitConfig, make_split
from .verdicts import differences_to

PART_LABELS = {"id_val": "id_val (selects alpha*)", "id_test": "id_test (ID)", "ood_test": "ood_test (OOD)"}


def read_results(path: str | Path) -> pd.DataFrame:
    """One row per evaluated model of a results.jsonl, headline metrics as columns."""
    return results_frame(read_records(path))


def results_frame(records: list[dict]) -> pd.DataFrame:
    """One row per evaluated model (result lines), headline metrics as columns (confidence ones where recorded)."""
    rows = []
    for r in records:
        row = {"run_key": r.get("run_key"), "method": r["method"], "alpha": r.get("alpha"),
               "selected": r.get("selected"), **{k: r["config"][k] for k in ("protocol", "seed", "backbone")},
               "id_macro_f1": r["id_test"]["macro_f1"], "ood_macro_f1": r["ood_test"]["macro_f1"],
               "gap": r["id_test"]["macro_f1"] - r["ood_test"]["macro_f1"],
               **{f"ood_f1_{d}": r["ood_test"]["f1_per_degree"][d] for d in DEGREES},
               **{f"id_f1_{d}": r["id_test"]["f1_per_degree"][d] for d in DEGREES},
               "id_accuracy": r["id_test"]["accuracy"], "ood_accuracy": r["ood_test"]["accuracy"],
               "train_pairs": r["sizes"]["train"], "device": r["environment"]["device"], "seconds": r["seconds"]}
        if "id_val" in r:
            row["val_macro_f1"] = r["id_val"]["macro_f1"]
        for part, tag in (("id_test", "id"), ("ood_test", "ood")):
            for name in ("ece", "nll", "brier", "entropy", "confidence"):
                if "confidence" in r[part]:
                    row[f"{tag}_{name}"] = r[part]["confidence"][name]
            row[f"{tag}_ndcg"] = r[part].get("ranking", {}).get("ndcg@10", np.nan)  # runs cached before nDCG: NaN
        augmentation = r.get("augmentation") or {}
        row.update(augment=r["config"].get("augment", "none"), added=augmentation.get("added", 0),
                   added_ood_share=augmentation.get("ood_share", np.nan))
        rows.append({**row, "rho": r["config"].get("occ_rho"), "record": r})
    return pd.DataFrame(rows)


def mean_sd(results: pd.DataFrame, by: list[str], columns: list[str]) -> pd.DataFrame:
    """'mean +- sd (n)' per group: every number reported with its spread over seeds. Counts (integer columns)
    keep no decimals; a value a method does not have (an added OOD share without added pairs) reads '–'."""
    grouped = results.groupby(by)[columns]
    mean, sd, n = grouped.mean(), grouped.std(ddof=1), grouped.size()
    table = pd.DataFrame(index=mean.index)
    for column in columns:
        digits = 0 if pd.api.types.is_integer_dtype(results[column]) else 4
        table[column] = [("–" if pd.isna(m) else f"{m:.{digits}f}") + ("" if pd.isna(d) else f" ± {d:.{digits}f}")
                         for m, d in zip(mean[column], sd[column])]
    table["seeds"] = n  # one seed: no spread to show
    return table


def protocol_overview(pairs: pd.DataFrame, dataset: str, seed: int = 0) -> tuple[pd.DataFrame, dict[str, str]]:
    """Per protocol: share of pairs and queries that are OOD, and the degree mix in and out; and, for a protocol
    these pairs cannot be split by, why (whole sentences, not a table cell cut short)."""
    rows, notes = [], {}
    for protocol in PROTOCOLS:
        try:
            split = make_split(pairs, SplitConfig(protocol=protocol, seed=seed), dataset)
        except ValueError as e:  # e.g. no group column for 'department'
            rows.append({"protocol": protocol})
            notes[protocol] = str(e)
            continue
        ood = pd.concat([split["ood_test"], split["pool_ood"]])
        ind = pd.concat([split[p] for p in ("train", "id_val", "id_test", "pool_id")])
        ood_leaked = split.total_dropped(("ood_test", "pool_ood"))  # OOD share: read before the leakage rules
        rows.append({"protocol": protocol, "held out": ", ".join(map(str, split.held_out)) or "-",
                     "% OOD pairs (before leakage removal)": round(100 * (len(ood) + ood_leaked) / len(pairs), 1),
                     "OOD queries": split.ood_queries, "leakage dropped": split.total_dropped(),
                     **{f"% {d} ID": round(100 * (ind["label"] == i).mean(), 1) for i, d in enumerate(DEGREES)},
                     **{f"% {d} OOD": round(100 * (ood["label"] == i).mean(), 1) for i, d in enumerate(DEGREES)}})
    return pd.DataFrame(rows).set_index("protocol").astype(object).fillna("–"), notes


def text_lengths(split) -> pd.DataFrame:
    """Words per query and per item, for each part (long format, for plotting)."""
    frames = []
    for part in PARTS:
        df = split[part]
        frames.append(pd.DataFrame({"part": part, "query words": df["query"].str.split().str.len(),
                                    "item words": df["item"].str.split().str.len()}))
    return pd.concat(frames, ignore_index=True)


def sweep_frame(runs: list[dict]) -> pd.DataFrame:
    """One row per (LPFT run, alpha): macro-F1 and ECE per part, the gap, and whether alpha is the run's alpha*."""
    rows = []
    for r in runs:
        for s in r["sweep"]:
            if s["alpha"] not in r["config"]["alphas"]:
                continue
            rows.append({"method": r["method"], "seed": r["config"]["seed"], "alpha": s["alpha"],
                         "alpha_star": r["alpha_star"], **{f"{p}_macro_f1": s[p]["macro_f1"] for p in PART_LABELS},
                         "id_test_ece": s["id_test"]["confidence"]["ece"],
                         "ood_test_ece": s["ood_test"]["confidence"]["ece"], "gap": s["gap_macro_f1"]})
    return pd.DataFrame(rows)


def comparison(frame: pd.DataFrame) -> pd.DataFrame:
    """Rows named for the comparison tables: FT..., LP..., LPFT (alpha*), LPFT (alpha 0.6), LPFT (alpha 1)."""
    picked = []
    for _, row in frame.iterrows():
        if not str(row["method"]).startswith("LPFT"):
            picked.append({**row, "model": row["method"]})
            continue
        if row["selected"]:
            picked.append({**row, "model": f"{row['method']} (alpha*)"})
        if np.isclose(row["alpha"], 0.6):
            picked.append({**row, "model": f"{row['method']} (alpha 0.6)"})
        if np.isclose(row["alpha"], 1.0):
            picked.append({**row, "model": f"{row['method']} (alpha 1)"})
    return pd.DataFrame(picked)


def detector_frame(records: list[dict]) -> pd.DataFrame:
    """AUROC and FPR at 95 % TPR of each score (pool_ood vs pool_id) per seed, from FT+DASA records."""
    rows = [{"seed": r["config"]["seed"], "score": score, **quality}
            for r in records for score, quality in r["augmentation"]["detectors"].items()]
    return pd.DataFrame(rows)


def representation_frame(records: list[dict]) -> pd.DataFrame:
    """Every candidate representation x detector of each DASA selection (one per seed): AUROC overall and within
    token-count quintiles, correlation with the token count."""
    return pd.DataFrame([{"seed": r["config"]["seed"], **row} for r in records
                         for row in r["augmentation"].get("representations", [])])


def escaped_table(frame: pd.DataFrame, digits: int = 2) -> str:
    """HTML of a table of data text: every cell escaped, so a title with markup shows as text."""
    return frame.to_html(index=False, escape=True, float_format=lambda v: f"{v:.{digits}f}")


# model as comparison() names it -> the name the table shows; DaRL = DASA-augmented train, LPFT with OCC
MAIN_MODELS = {
    "FT": "FT",
    "LP": "LP",
    "LPFT (alpha*)": "LPFT (alpha*)",
    "LPFT (alpha 0.6)": "LPFT (alpha 0.6)",
    "FT+LS": "FT + label smoothing",
    "FT+fKL": "FT + forward KL (OCC's control)",
    "FT+OCC": "FT + OCC",
    "FT+DASA": "FT + DASA",
    "FT+random": "FT + random pool pairs",
    "FT+length-matched": "FT + length-matched pool pairs",
    "LPFT+OCC+DASA (alpha*)": "DaRL (DASA + LPFT + OCC)",
    "LPFT+OCC (alpha*)": "DaRL without DASA",
    "FT+OCC+DASA": "DaRL without LPFT",
    "LPFT+DASA (alpha*)": "DaRL without OCC",
}


DARL = "DaRL (DASA + LPFT + OCC)"


# column -> (heading, which mean is best: max, min, or closest to zero)
MAIN_COLUMNS = {"id_macro_f1": ("ID macro-F1", "max"), "ood_macro_f1": ("OOD macro-F1", "max"),
                "gap": ("ID − OOD gap", "zero"), "id_ece": ("ID ECE", "min"), "ood_ece": ("OOD ECE", "min"),
                "id_ndcg": ("ID nDCG@10", "max"), "ood_ndcg": ("OOD nDCG@10", "max")}


DEGREE_COLUMNS = {f"{tag}_f1_{d}": (f"{tag.upper()} F1 {d}", "max") for tag in ("id", "ood") for d in DEGREES}


def verdict_names(table: pd.DataFrame) -> pd.DataFrame:
    """The main table with the names the verdicts read (comparison's), not the names shown."""
    return table.assign(model=table["model"].map({v: k for k, v in MAIN_MODELS.items()}))


def main_table_html(table: pd.DataFrame) -> str:
    """The main table (main_frame's rows) as HTML, with each model's macro-F1 minus FT's and its interval."""
    differences = {MAIN_MODELS[m]: d for m, d in differences_to(verdict_names(table)).items()}
    return bold_best_table(table, MAIN_COLUMNS, extra=differences)


def main_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """The main table's models, one row per (model, seed), named as shown. A model evaluated twice (LP inside
    two LPFT runs, a run taken from the cache by two notebooks) counts once."""
    table = comparison(frame)
    table = table[table["model"].isin(list(MAIN_MODELS))].drop_duplicates(subset=["model", "seed"])
    return table.assign(model=table["model"].map(MAIN_MODELS))


def bold_best_table(table: pd.DataFrame, columns: dict, digits: int = 3, extra: dict | None = None) -> str:
    """HTML of 'mean ± sd' per model and column in MAIN_MODELS order, the best mean of each column in bold
    (ties all bold), then the `extra` columns ({model: {heading: text}}, such as each model's difference to FT
    with its interval; "–" where a model has none). Every cell is escaped."""
    import html
    extra = extra or {}
    extra_heads = list(dict.fromkeys(h for cells in extra.values() for h in cells))
    order = [m for m in MAIN_MODELS.values() if m in set(table["model"])]
    grouped = table.groupby("model")
    mean, sd = grouped[list(columns)].mean().loc[order], grouped[list(columns)].std(ddof=1).loc[order]
    n = grouped.size()
    head = "".join(f"<th>{html.escape(h)}</th>" for h in [h for h, _ in columns.values()] + extra_heads)
    rows = []
    for model in order:
        cells = []
        for column, (_, best) in columns.items():
            values = mean[column]
            target = {"max": values.max(), "min": values.min(), "zero": values.abs().min()}[best]
            v = mean.loc[model, column]
            spread = sd.loc[model, column]
            text = "–" if pd.isna(v) else f"{v:.{digits}f}" + ("" if pd.isna(spread) else f" ± {spread:.{digits}f}")
            is_best = not pd.isna(v) and np.isclose(abs(v) if best == "zero" else v, target)
            cells.append(f"<td>{'<b>' + html.escape(text) + '</b>' if is_best else html.escape(text)}</td>")
        cells += [f"<td>{html.escape(extra.get(model, {}).get(h, '–'))}</td>" for h in extra_heads]
        rows.append(f"<tr><th>{html.escape(model)}</th>{''.join(cells)}<td>{n[model]}</td></tr>")
    return (f'<table class="main dataframe" border="1"><thead><tr><th>model</th>{head}<th>seeds</th></tr></thead>'
            f"<tbody>{''.join(rows)}</tbody></table>")
