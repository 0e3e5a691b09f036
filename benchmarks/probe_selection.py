"""Which epoch should LP keep? The probe trained on the frozen backbone's features, kept by id_val macro-F1 or by
id_val cross-entropy, beside a linear logistic regression and the train prior (what features with no signal give).

    python benchmarks/probe_selection.py --data train.csv.gz                  # the full split, seed 0, MiniLM
    python benchmarks/probe_selection.py --data train.csv.gz --seed 1 --max-length 64

The features are the study's (pipeline.pretrained_features: cached, so a second call extracts nothing); the probe is
the study's train_probe with the study's LP settings. For each: the kept epoch, and macro-F1 and cross-entropy
(NLL, in nats) on train and on every evaluated part. A head whose train NLL falls far below id_val's has memorised
train; one whose id_val NLL exceeds the prior's has learnt nothing that carries over.
"""
from __future__ import annotations

import argparse
from dataclasses import replace

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression

from darl_utils import pipeline
from darl_utils.config import RunConfig
from darl_utils.metrics import classification_metrics, confidence_metrics
from darl_utils.training import PROBE_SELECTIONS, train_probe

PARTS = ("train", "id_val", "id_test", "ood_test")


def scores(probs: np.ndarray, labels: np.ndarray) -> dict:
    return {"macro_f1": classification_metrics(labels, probs.argmax(1))["macro_f1"],
            "nll": confidence_metrics(probs, labels)["nll"]}


def probe_row(name: str, probs_of, labels: dict, extra: dict | None = None) -> dict:
    row = {"probe": name, **(extra or {}), **{p: scores(probs_of(p), labels[p]) for p in PARTS}}
    cells = "  ".join(f"{row[p]['macro_f1']:.3f} {row[p]['nll']:.3f}" for p in PARTS)
    kept = f"{row.get('kept_epoch', '-')!s:>4} / {row.get('epochs_run', '-')!s:<4}"
    print(f"{name:<28} {kept} {cells}")
    return row


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="Home Depot train.csv(.gz), or a CSV with --dataset csv")
    parser.add_argument("--dataset", default="homedepot")
    parser.add_argument("--backbone", default="minilm")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--max-train-pairs", type=int, default=0, help="0: all (the full profile)")
    parser.add_argument("--max-eval-pairs", type=int, default=0)
    args = parser.parse_args(argv)
    cfg = RunConfig(dataset=args.dataset, data=args.data, backbone=args.backbone, seed=args.seed,
                    max_length=args.max_length, max_train_pairs=args.max_train_pairs,
                    max_eval_pairs=args.max_eval_pairs, eval_batch_size=1024, progress=False).validate()
    ctx = pipeline.prepare(cfg)
    model = ctx.new_model()
    features = {p: pipeline.pretrained_features(model, ctx, p) for p in PARTS}
    labels = {p: np.asarray(ctx.encoded(p).labels) for p in PARTS}
    print(f"{args.backbone}, seed {args.seed}, " + ", ".join(f"{p} {len(labels[p]):,}" for p in PARTS))
    print(f"{'probe':<28} {'kept / run':<11} " + "  ".join(f"{p + ' F1 NLL':<11}" for p in PARTS))
    rows = []
    for select in PROBE_SELECTIONS:
        head = ctx.new_model().head  # the seed's fresh head, as linear_probe starts from
        fit = train_probe(head, features["train"], labels["train"], features["id_val"], labels["id_val"],
                          replace(cfg.probe_settings(), select=select))
        head.eval()

        def probs_of(part, head=head):
            with torch.no_grad():
                return head(torch.from_numpy(features[part])).softmax(1).numpy()
        rows.append(probe_row(f"MLP head, kept by {select}", probs_of, labels,
                              {k: fit[k] for k in ("kept_epoch", "epochs_run", "best_id_val_loss", "seconds")}))
    logistic = LogisticRegression(max_iter=2000).fit(features["train"], labels["train"])
    rows.append(probe_row("logistic regression (C=1)", lambda p: logistic.predict_proba(features[p]), labels))
    prior = np.bincount(labels["train"], minlength=3) / len(labels["train"])
    rows.append(probe_row("train prior", lambda p: np.tile(prior, (len(labels[p]), 1)), labels))
    return rows


if __name__ == "__main__":
    main()
