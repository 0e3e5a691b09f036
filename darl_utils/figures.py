"""Figures the notebooks and the index show: each takes a frame (`tables`) or saved scores and returns a
matplotlib figure; nothing here computes a result."""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from .data import DEGREES
from .tables import PART_LABELS


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


def plot_alpha_sweep(sweep: pd.DataFrame, ft: pd.DataFrame | None = None):
    """Macro-F1 against alpha (mean over seeds, band = +-1 sd) on id_val, id_test and ood_test, with alpha*
    (chosen on id_val, one mark per seed) and the paper's 0.6 marked, FT as dashed lines; the gap below."""
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 6.5), sharex=True, height_ratios=[2.2, 1])
    colours = dict(zip(PART_LABELS, sns.color_palette("deep", 3)))
    grouped = sweep.groupby("alpha")
    for part, label in PART_LABELS.items():
        mean, sd = grouped[f"{part}_macro_f1"].mean(), grouped[f"{part}_macro_f1"].std().fillna(0)
        top.plot(mean.index, mean, marker="o", color=colours[part], label=label)
        top.fill_between(mean.index, mean - sd, mean + sd, color=colours[part], alpha=0.15)
    if ft is not None and len(ft):
        top.axhline(ft["id_macro_f1"].mean(), color=colours["id_test"], ls="--", lw=1, label="FT, id_test")
        top.axhline(ft["ood_macro_f1"].mean(), color=colours["ood_test"], ls="--", lw=1, label="FT, ood_test")
    for i, star in enumerate(sorted(sweep.groupby("seed")["alpha_star"].first())):
        for ax in (top, bottom):
            ax.axvline(star, color="black", lw=1.2, label="alpha* (id_val)" if i == 0 and ax is top else None)
    for ax in (top, bottom):
        ax.axvline(0.6, color="grey", ls=":", lw=1.5, label="alpha = 0.6 (paper)" if ax is top else None)
    top.set_ylabel("macro-F1 over 3 degrees")
    top.set_title("LPFT: theta(alpha) = (1 - alpha) theta_LP + alpha theta_FT  (alpha 0 = LP, 1 = FT from the probe)")
    top.legend(loc="lower right", fontsize=8, ncol=2)
    gap_mean, gap_sd = grouped["gap"].mean(), grouped["gap"].std().fillna(0)
    bottom.plot(gap_mean.index, gap_mean, marker="o", color="purple", label="LPFT")
    bottom.fill_between(gap_mean.index, gap_mean - gap_sd, gap_mean + gap_sd, color="purple", alpha=0.15)
    if ft is not None and len(ft):
        bottom.axhline(ft["gap"].mean(), color="purple", ls="--", lw=1, label="FT")
    bottom.axhline(0, color="black", lw=0.5)
    bottom.set_xlabel("alpha (interpolation coefficient)")
    bottom.set_ylabel("ID - OOD macro-F1")
    bottom.legend(loc="best", fontsize=8)
    plt.tight_layout()
    return fig


def plot_entropy_by_degree(predictions: dict[str, tuple], part: str):
    """Histograms of predictive entropy, one panel per true degree, one line per method."""
    from .metrics import entropy
    rows = [pd.DataFrame({"method": name, "true degree": np.asarray(DEGREES)[labels], "entropy": entropy(probs)})
            for name, (probs, labels) in predictions.items()]
    long = pd.concat(rows, ignore_index=True)
    grid = sns.displot(long, x="entropy", hue="method", col="true degree", col_order=list(DEGREES),
                       kind="hist", element="step", fill=False, stat="density", common_norm=False,
                       bins=np.linspace(0, np.log(len(DEGREES)), 21), height=3, aspect=1.2)
    grid.set_axis_labels("predictive entropy (nats; ln 3 = uniform)", "density")
    grid.figure.suptitle(f"Entropy of the predictions on {part}, per true degree (low = confident)", y=1.04)
    return grid


def plot_reliability(records: dict[str, dict], part: str):
    """Reliability diagrams: accuracy against mean confidence per bin (15 bins), one panel per method."""
    fig, axes = plt.subplots(1, len(records), figsize=(3.2 * len(records), 3.4), sharey=True, squeeze=False)
    for ax, (name, r) in zip(axes[0], records.items()):
        rel, ece = r[part]["confidence"]["reliability"], r[part]["confidence"]["ece"]
        edges = np.asarray(rel["edges"])
        acc = np.array([np.nan if a is None else a for a in rel["accuracy"]])
        ax.bar(edges[:-1], np.nan_to_num(acc), width=np.diff(edges), align="edge", edgecolor="black",
               color="#6baed6", label="accuracy")
        ax.plot([0, 1], [0, 1], color="red", ls="--", lw=1, label="perfect calibration")
        ax.set_title(f"{name}\nECE {ece:.3f}", fontsize=9)
        ax.set_xlabel("confidence (top probability)")
        ax.set_xlim(0, 1)
    axes[0][0].set_ylabel("accuracy in the bin")
    axes[0][0].legend(fontsize=7, loc="upper left")
    fig.suptitle(f"Reliability on {part}", y=1.02)
    plt.tight_layout()
    return fig


def plot_rho_sweep(table: pd.DataFrame):
    """ECE, mean entropy and macro-F1 on id_test and ood_test against rho (FT+OCC)."""
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.4))
    for ax, (column, label) in zip(axes, (("macro_f1", "macro-F1"), ("ece", "ECE (15 bins)"),
                                          ("entropy", "mean entropy (nats)"))):
        for tag, part in (("id", "id_test"), ("ood", "ood_test")):
            g = table.groupby("rho")[f"{tag}_{column}"]
            ax.errorbar(g.mean().index, g.mean(), yerr=g.std().fillna(0), marker="o", capsize=3, label=part)
        ax.set_xlabel("rho (prior mass off the gold degree)")
        ax.set_ylabel(label)
        ax.set_title(f"FT+OCC: {label} against rho", fontsize=10)
        ax.legend(fontsize=8)
    plt.tight_layout()
    return fig


def plot_score_histograms(scores: dict, bins: int = 40):
    """Each score on the pool, pool_id against pool_ood; the combined score with the selection's cut-off."""
    pool = scores["pool"]
    is_ood, selected = pool["is_ood"] == 1, pool["selected"] == 1
    panels = (("mahalanobis_raw", "Mahalanobis (squared distance)"), ("knn_raw", "kNN (k-th distance)"),
              ("combined", "combined (percentile vs id_val)"))
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.6))
    for ax, (name, title) in zip(axes, panels):
        edges = np.histogram_bin_edges(pool[name], bins=bins)
        ax.hist(pool[name][~is_ood], bins=edges, alpha=0.6, density=True, label="pool_id")
        ax.hist(pool[name][is_ood], bins=edges, alpha=0.6, density=True, label="pool_ood")
        ax.set_title(title)
        ax.set_xlabel("score (higher = less covered by train)")
    if selected.any():
        axes[2].axvline(pool["combined"][selected].min(), color="black", ls="--", label="selected from here")
    axes[0].set_ylabel("density")
    axes[2].legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_roc(scores: dict):
    """ROC curves of each score for telling pool_ood (positive) from pool_id."""
    from sklearn.metrics import roc_auc_score, roc_curve
    pool = scores["pool"]
    fig, ax = plt.subplots(figsize=(4.5, 4.2))
    for name, values in (("mahalanobis", "mahalanobis_raw"), ("knn", "knn_raw"), ("combined", "combined")):
        fpr, tpr, _ = roc_curve(pool["is_ood"], pool[values])
        ax.plot(fpr, tpr, label=f"{name} (AUROC {roc_auc_score(pool['is_ood'], pool[values]):.3f})")
    ax.plot([0, 1], [0, 1], color="grey", ls=":", lw=1)
    ax.axhline(0.95, color="grey", ls="--", lw=0.8)
    ax.set_xlabel("false positive rate (pool_id flagged)")
    ax.set_ylabel("true positive rate (pool_ood flagged)")
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return fig


def plot_length_auroc(selection: dict):
    """AUROC of DASA's scores per token-count quintile of the pool (0.5: the score knows nothing there), from a
    selection record."""
    detectors = selection["detectors"]
    fig, ax = plt.subplots(figsize=(6, 3.4))
    for name, quality in detectors.items():
        per_bin = quality.get("auroc_per_length_bin", [])
        ax.plot(range(1, len(per_bin) + 1), per_bin, marker="o", label=f"{name} (overall {quality['auroc']:.2f})")
    ax.axhline(0.5, color="grey", ls=":", lw=1)
    ax.set_xlabel("token-count quintile of the pool (1 = shortest)")
    ax.set_ylabel("AUROC, pool_ood vs pool_id")
    ax.set_title(f"DASA's scores on {selection['settings'].get('dasa_features', 'pair_mean')}, "
                 "length held fixed", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_umap(embedding: pd.DataFrame):
    """The UMAP map of the source model's features, selected pool pairs drawn on top."""
    fig, ax = plt.subplots(figsize=(7, 6))
    styles = {"train": ("grey", 4), "pool_id": ("tab:blue", 5), "pool_ood": ("tab:orange", 5),
              "ood_test": ("tab:green", 5), "selected": ("black", 9)}
    for group, (colour, size) in styles.items():
        points = embedding[embedding["group"] == group]
        ax.scatter(points["x"], points["y"], s=size, c=colour, alpha=0.9 if group == "selected" else 0.5,
                   label=f"{group} ({len(points)})", linewidths=0)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.legend(markerscale=2, fontsize=8)
    fig.tight_layout()
    return fig


def plot_confusions(table: pd.DataFrame, models: list[str]):
    """Row-normalised confusion matrices (rows = true degree), summed over seeds; id_test and ood_test."""
    parts = ("id_test", "ood_test")
    fig, axes = plt.subplots(len(parts), len(models), figsize=(3.1 * len(models), 5.6), squeeze=False)
    for j, model in enumerate(models):
        records = table[table["model"] == model]["record"]
        for i, part in enumerate(parts):
            counts = np.sum([np.asarray(r[part]["confusion"]) for r in records], axis=0)
            shares = counts / np.clip(counts.sum(1, keepdims=True), 1, None)
            sns.heatmap(shares, annot=True, fmt=".2f", vmin=0, vmax=1, cmap="Blues", cbar=False, ax=axes[i][j],
                        xticklabels=DEGREES, yticklabels=DEGREES)
            axes[i][j].set_title(f"{model}\n{part}", fontsize=9)
            axes[i][j].set_xlabel("predicted")
            axes[i][j].set_ylabel("true" if j == 0 else "")
    fig.tight_layout()
    return fig
