"""Time LP on cached features: the head alone, trained on feature vectors, no backbone pass.

    python benchmarks/linear_probe.py                          # Home Depot's full train size, MiniLM width
    python benchmarks/linear_probe.py --width 576 --epochs 20  # SmolLM2-135M width

Random features of the given shape (their values do not change the cost), the MLP head of RelevanceModel,
the same train_probe as the study; patience off so every epoch runs. Prints seconds per epoch and in all.
"""
from __future__ import annotations

import argparse
import resource

import numpy as np
import torch
from torch import nn

from darl_utils.cache import environment
from darl_utils.training import ProbeSettings, train_probe


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=33_473, help="train features (Home Depot's full train part)")
    parser.add_argument("--val", type=int, default=5_000)
    parser.add_argument("--width", type=int, default=384)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(args.pairs + args.val, args.width)).astype(np.float32)
    y = rng.integers(0, 3, args.pairs + args.val)
    head = nn.Sequential(nn.Dropout(0.1), nn.Linear(args.width, args.width), nn.GELU(), nn.Dropout(0.1),
                         nn.Linear(args.width, 3))
    fit = train_probe(head, x[:args.pairs], y[:args.pairs], x[args.pairs:], y[args.pairs:],
                      ProbeSettings(epochs=args.epochs, patience=0), device=args.device)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"{environment(args.device)['device']}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"LP on {args.pairs:,} x {args.width} features, batch 256: {fit['epochs_run']} epochs in "
          f"{fit['seconds']:.1f} s "
          f"({fit['seconds'] / fit['epochs_run']:.2f} s per epoch, id_val scored every epoch); peak RSS {peak:.2f} GiB")


if __name__ == "__main__":
    main()
