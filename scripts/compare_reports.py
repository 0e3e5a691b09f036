"""Do two reports hold the same results? The check behind every refactor: run one profile before and after the
change (each in its own DARL_CACHE and --out), then

    python scripts/compare_reports.py reports-before/smoke reports-after/smoke

compares every line of every notebook's results.jsonl, in order, after dropping what legitimately differs (times,
dates, cache entry names, which carry the code fingerprint, and absolute paths). It prints the count of identical
lines and every line that differs, with its differing keys, and exits 1 when any differs.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

VOLATILE = {"finished", "started", "run_key", "checkpoint", "predictions", "split_dir", "environment", "code",
            "out_dir", "data", "backbone", "backbone_path"}  # times, keys and machine-specific paths
CACHE_ENTRY = re.compile(r"^(runs|augment|representations|features|splits)/")  # names carry the code fingerprint


def comparable(value):
    """`value` without what differs between two runs of identical code."""
    if isinstance(value, dict):
        return {k: comparable(v) for k, v in value.items() if k not in VOLATILE and "seconds" not in k}
    if isinstance(value, list):
        return [comparable(v) for v in value]
    return "<cache entry>" if isinstance(value, str) and CACHE_ENTRY.match(value) else value


def result_lines(report: Path) -> list[tuple[str, dict]]:
    """(notebook, line) for every results.jsonl line of a report folder's notebooks, in name order."""
    files = sorted(f for f in Path(report).glob("results/*/results.jsonl")
                   if not f.parent.name.endswith(".previous"))  # a notebook's results before its last run
    if not files:
        raise SystemExit(f"error: {report} holds no results/*/results.jsonl (is it a report folder?)")
    return [(f.parent.name, comparable(json.loads(line))) for f in files for line in f.read_text().splitlines()]


def differences(before: list, after: list) -> list[str]:
    out = [f"line counts differ: {len(before)} and {len(after)}"] if len(before) != len(after) else []
    for i, ((notebook, a), (_, b)) in enumerate(zip(before, after)):
        if a != b:
            keys = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
            out.append(f"line {i + 1} ({notebook}, {a.get('method')}): {', '.join(keys)} differ")
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    args = parser.parse_args(argv)
    before, after = result_lines(args.before), result_lines(args.after)
    found = differences(before, after)
    same = sum(a == b for (_, a), (_, b) in zip(before, after))
    print(f"{same} of {len(before)} result lines identical (times, cache names and paths left out)")
    for line in found:
        print(line)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
