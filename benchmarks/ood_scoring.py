"""Time DASA's scoring: Mahalanobis and kNN of a pool against a large train set of features.

    python benchmarks/ood_scoring.py                                   # 100,000 pool vs 200,000 train, width 576
    python benchmarks/ood_scoring.py --pool 20000 --train 40000        # a quicker look

Random features (their values do not change the cost). Prints seconds per score and the peak memory of the
process (the features themselves included). Target on the 2-core CPU: under 60 s and 4 GB in all.
"""
from __future__ import annotations

import argparse
import resource
import time

import numpy as np
import torch

from darl_utils.ood import Mahalanobis, knn_distance
from darl_utils.pipeline import environment


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pool", type=int, default=100_000)
    parser.add_argument("--train", type=int, default=200_000)
    parser.add_argument("--width", type=int, default=576)
    parser.add_argument("--k", type=int, default=50)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    train = rng.standard_normal((args.train, args.width), dtype=np.float32)
    labels = rng.integers(0, 3, args.train)
    pool = rng.standard_normal((args.pool, args.width), dtype=np.float32)
    t = time.perf_counter()
    Mahalanobis(train, labels).score(pool)
    maha = time.perf_counter() - t
    t = time.perf_counter()
    knn_distance(train, pool, k=args.k)
    knn = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"{environment()['device']}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"pool {args.pool:,} vs train {args.train:,}, width {args.width}, k {args.k}: Mahalanobis {maha:.1f} s, "
          f"kNN {knn:.1f} s, total {maha + knn:.1f} s; peak RSS {peak:.2f} GiB")


if __name__ == "__main__":
    main()
