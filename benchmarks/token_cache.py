"""Would a disk cache of tokenised parts pay? Tokenising a part against reading it back from a file.

    python benchmarks/token_cache.py --data train.csv.gz                    # MiniLM, the full split's parts
    python benchmarks/token_cache.py --data train.csv.gz --backbone smollm2 --max-length 96

For each part of the split: seconds to tokenise it (what every notebook kernel does once per part), and seconds
to read the same tokens back from a safetensors file (ids concatenated, with offsets) and rebuild the per-pair
lists the training loop takes, which is the least a disk cache would cost. The write is timed too.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from safetensors.numpy import load_file, save_file

from darl_utils.config import RunConfig
from darl_utils.modeling import encode_pairs, load_backbone
from darl_utils.pipeline import environment, prepare_split, sized_parts
from darl_utils.tokens import from_arrays, to_arrays


def timed(fn):
    started = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - started


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="Home Depot train.csv(.gz), or a CSV with --dataset csv")
    parser.add_argument("--dataset", default="homedepot")
    parser.add_argument("--backbone", default="minilm")
    parser.add_argument("--max-length", type=int, default=64)
    args = parser.parse_args(argv)
    cfg = RunConfig(dataset=args.dataset, data=args.data, backbone=args.backbone, max_length=args.max_length,
                    progress=False).validate()
    parts = sized_parts(prepare_split(cfg), cfg)
    _, tokenizer, kind, _ = load_backbone(args.backbone)
    print(f"{environment('cpu')['device']}, {args.backbone}, max_length {args.max_length}")
    print(f"{'part':<9} {'pairs':>7} {'tokenise s':>11} {'write s':>8} {'read s':>7}")
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for name, frame in parts.items():
            encoded, tokenise = timed(lambda: encode_pairs(tokenizer, frame["query"], frame["item"], kind,
                                                           args.max_length))
            path = Path(folder) / f"{name}.safetensors"
            _, write = timed(lambda: save_file(to_arrays(encoded), str(path)))
            back, read = timed(lambda: from_arrays(load_file(str(path))))
            assert back == encoded, f"{name}: the tokens read back differ"
            print(f"{name:<9} {len(frame):>7} {tokenise:>11.2f} {write:>8.2f} {read:>7.2f}")
            rows.append({"part": name, "pairs": len(frame), "tokenise_s": tokenise, "write_s": write, "read_s": read})
    return rows


if __name__ == "__main__":
    main()
