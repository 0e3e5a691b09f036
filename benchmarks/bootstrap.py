"""Time of the paired bootstrap (darl_utils.intervals): 1,000 resamples of SEEDS seeds x PAIRS test pairs.

    python benchmarks/bootstrap.py                 # 3 seeds x 2,000 pairs in ~400 queries
    python benchmarks/bootstrap.py --queries 2000  # one pair per query: the worst case
"""
import argparse
import time

import numpy as np

from darl_utils.intervals import SeedPredictions, paired_difference


def random_probs(rng, n):
    p = rng.random((n, 3)) ** 3
    return p / p.sum(1, keepdims=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--pairs", type=int, default=2000)
    parser.add_argument("--queries", type=int, default=400)
    parser.add_argument("--resamples", type=int, default=1000)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    seeds = [SeedPredictions(rng.integers(0, 3, args.pairs), np.sort(rng.integers(0, args.queries, args.pairs)),
                             random_probs(rng, args.pairs), random_probs(rng, args.pairs)) for _ in range(args.seeds)]
    for metric in ("macro_f1", "ece", "entropy"):
        times = []
        for _ in range(5):
            started = time.perf_counter()
            paired_difference(seeds, metric, args.resamples)
            times.append(time.perf_counter() - started)
        print(f"{metric:>10}: {1000 * np.median(times):.0f} ms (median of 5) for {args.resamples} resamples of "
              f"{args.seeds} seeds x {args.pairs} pairs in <= {args.queries} queries")


if __name__ == "__main__":
    main()
