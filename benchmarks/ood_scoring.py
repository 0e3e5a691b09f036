"""Time DASA's scoring: Mahalanobis and kNN of a pool against a large train set of features.

    python benchmarks/ood_scoring.py                                   # 100,000 pool vs 200,000 train, width 576
    python benchmarks/ood_scoring.py --pool 20000 --train 40000        # a quicker look
    python benchmarks/ood_scoring.py --search exact --pool 10000       # the exact kNN, for comparison

Synthetic features: a mixture of --clusters Gaussian clusters (pooled features of a real model are clustered;
--clusters 1 is the structureless worst case for the inverted-file index). Prints seconds per score, the peak
memory of the process (the features themselves included), and how close the kNN distances are to the exact
ones on --check pool rows. Target on the 2-core CPU: under 60 s and 4 GB in all.
"""
from __future__ import annotations

import argparse
import resource
import time

import numpy as np
import torch
from scipy.stats import spearmanr

from darl_utils.cache import environment
from darl_utils.ood import KNN_SEARCHES, Mahalanobis, knn_distance


def clustered(rng, n: int, width: int, centres: np.ndarray) -> np.ndarray:
    out = rng.standard_normal((n, width), dtype=np.float32)
    out += centres[rng.integers(0, len(centres), n)]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pool", type=int, default=100_000)
    parser.add_argument("--train", type=int, default=200_000)
    parser.add_argument("--width", type=int, default=576)
    parser.add_argument("--k", type=int, default=50)
    parser.add_argument("--search", choices=KNN_SEARCHES, default="auto")
    parser.add_argument("--nprobe", type=int, default=8)
    parser.add_argument("--clusters", type=int, default=64)
    parser.add_argument("--check", type=int, default=2000, help="pool rows compared with the exact kNN (0: none)")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((args.clusters, args.width), dtype=np.float32) * (args.clusters > 1)
    train = clustered(rng, args.train, args.width, centres)
    labels = rng.integers(0, 3, args.train)
    pool = clustered(rng, args.pool, args.width, centres)
    t = time.perf_counter()
    Mahalanobis(train, labels).score(pool)
    maha = time.perf_counter() - t
    t = time.perf_counter()
    knn = knn_distance(train, pool, k=args.k, search=args.search, nprobe=args.nprobe)
    knn_s = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"{environment('cpu')['device']}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"pool {args.pool:,} vs train {args.train:,}, width {args.width}, k {args.k}, {args.clusters} clusters, "
          f"search {args.search} (nprobe {args.nprobe}): Mahalanobis {maha:.1f} s, kNN {knn_s:.1f} s, "
          f"total {maha + knn_s:.1f} s; peak RSS {peak:.2f} GiB")
    if args.check:
        rows = rng.choice(args.pool, min(args.check, args.pool), replace=False)
        exact = knn_distance(train, pool[rows], k=args.k, search="exact")
        relative = knn[rows] / exact - 1
        print(f"vs exact on {len(rows):,} pool rows: median relative excess {np.median(relative):.4f}, "
              f"95th percentile {np.quantile(relative, 0.95):.4f}, Spearman {spearmanr(knn[rows], exact)[0]:.4f}")


if __name__ == "__main__":
    main()
