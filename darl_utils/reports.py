"""Tables and figures the notebooks show, made from splits and from result files (JSON lines)."""
from __future__ import annotations

import json
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from .data import DEGREES
from .splits import PARTS, PROTOCOLS, SplitConfig, make_split


def read_records(path: str | Path) -> list[dict]:
    """The result lines, a later line of the same evaluation (run, method, alpha) replacing an earlier one."""
    latest = {}
    for line in Path(path).read_text().splitlines():
        if line.strip():
            r = json.loads(line)
            # older lines carry no run_key: the settings themselves identify the run
            run = r.get("run_key") or json.dumps([r["method"], r["config"]], sort_keys=True)
            latest[(run, r["method"], r.get("alpha"))] = r
    return list(latest.values())


def read_results(path: str | Path) -> pd.DataFrame:
    """One row per evaluated model, headline metrics as columns (confidence ones where recorded)."""
    rows = []
    for r in read_records(path):
        row = {"run_key": r.get("run_key"), "method": r["method"], "alpha": r.get("alpha"),
               "selected": r.get("selected"), **{k: r["config"][k] for k in ("protocol", "seed", "backbone")},
               "id_macro_f1": r["id_test"]["macro_f1"], "ood_macro_f1": r["ood_test"]["macro_f1"],
               "gap": r["id_test"]["macro_f1"] - r["ood_test"]["macro_f1"],
               **{f"ood_f1_{d}": r["ood_test"]["f1_per_degree"][d] for d in DEGREES},
               **{f"id_f1_{d}": r["id_test"]["f1_per_degree"][d] for d in DEGREES},
               "train_pairs": r["sizes"]["train"], "device": r["environment"]["device"], "seconds": r["seconds"]}
        if "id_val" in r:
            row["val_macro_f1"] = r["id_val"]["macro_f1"]
        for part, tag in (("id_test", "id"), ("ood_test", "ood")):
            for name in ("ece", "nll", "brier", "entropy", "confidence"):
                if "confidence" in r[part]:
                    row[f"{tag}_{name}"] = r[part]["confidence"][name]
        rows.append(row)
    return pd.DataFrame(rows)


def mean_sd(results: pd.DataFrame, by: list[str], columns: list[str]) -> pd.DataFrame:
    """'mean +- sd (n)' per group: every number reported with its spread over seeds."""
    grouped = results.groupby(by)[columns]
    mean, sd, n = grouped.mean(), grouped.std(ddof=1), grouped.size()
    table = mean.map(lambda v: f"{v:.4f}") + sd.map(lambda v: "" if pd.isna(v) else f" ± {v:.4f}")
    table["seeds"] = n  # one seed: no spread to show
    return table


def protocol_overview(pairs: pd.DataFrame, dataset: str, seed: int = 0) -> pd.DataFrame:
    """Per protocol: share of pairs and queries that are OOD, and the degree mix in and out."""
    rows = []
    for protocol in PROTOCOLS:
        try:
            split = make_split(pairs, SplitConfig(protocol=protocol, seed=seed), dataset)
        except ValueError as e:  # e.g. no group column for 'department'
            rows.append({"protocol": protocol, "note": str(e)})
            continue
        ood = pd.concat([split["ood_test"], split["pool_ood"]])
        ind = pd.concat([split[p] for p in ("train", "id_val", "id_test", "pool_id")])
        leaked = sum(split.leakage_dropped.values())
        rows.append({"protocol": protocol, "held out": ", ".join(map(str, split.held_out)) or "-",
                     "% OOD pairs (before leakage removal)": round(100 * (len(ood) + leaked) / len(pairs), 1),
                     "OOD queries": split.ood_queries, "leakage dropped": leaked,
                     **{f"% {d} ID": round(100 * (ind["label"] == i).mean(), 1) for i, d in enumerate(DEGREES)},
                     **{f"% {d} OOD": round(100 * (ood["label"] == i).mean(), 1) for i, d in enumerate(DEGREES)}})
    return pd.DataFrame(rows).set_index("protocol")


def text_lengths(split) -> pd.DataFrame:
    """Words per query and per item, for each part (long format, for plotting)."""
    frames = []
    for part in PARTS:
        df = split[part]
        frames.append(pd.DataFrame({"part": part, "query words": df["query"].str.split().str.len(),
                                    "item words": df["item"].str.split().str.len()}))
    return pd.concat(frames, ignore_index=True)


def plot_degree_mix(summary: pd.DataFrame, title: str):
    shares = summary[[f"% {d}" for d in DEGREES]]
    ax = shares.plot.barh(stacked=True, figsize=(7, 3.2), color=sns.color_palette("RdYlGn", 3))
    ax.set_xlabel("share of pairs (%)")
    ax.set_ylabel("part")
    ax.set_title(title)
    ax.legend([d for d in DEGREES], title="degree", bbox_to_anchor=(1.01, 1), loc="upper left")
    ax.invert_yaxis()
    plt.tight_layout()
    return ax


def plot_text_lengths(lengths: pd.DataFrame):
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.2))
    for ax, column in zip(axes, ("query words", "item words")):
        sns.boxplot(data=lengths, x=column, y="part", ax=ax, showfliers=False, color="#9ecae1")
        ax.set_title(f"{column} per pair, by part")
        ax.set_xlabel(f"{column} (count)")
    plt.tight_layout()
    return fig


def plot_protocol_gaps(results: pd.DataFrame):
    """ID and OOD macro-F1 of FT per protocol, one dot per seed, bars at the mean."""
    long = results.melt(id_vars=["protocol", "seed"], value_vars=["id_macro_f1", "ood_macro_f1"],
                        var_name="test set", value_name="macro-F1")
    long["test set"] = long["test set"].map({"id_macro_f1": "id_test", "ood_macro_f1": "ood_test"})
    fig, ax = plt.subplots(figsize=(7, 3.5))
    sns.barplot(data=long, x="protocol", y="macro-F1", hue="test set", errorbar=None, alpha=0.6, ax=ax)
    sns.stripplot(data=long, x="protocol", y="macro-F1", hue="test set", dodge=True, legend=False, ax=ax,
                  palette="dark:black", size=4)
    low = np.floor(long["macro-F1"].min() * 20) / 20 - 0.05
    ax.set_ylim(max(0.0, low), None)
    ax.set_title("FT baseline: macro-F1 in and out of distribution, per protocol (dots = seeds)")
    ax.set_ylabel("macro-F1 over 3 degrees")
    plt.tight_layout()
    return fig
