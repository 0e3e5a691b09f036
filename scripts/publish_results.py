"""Copy a GPU node's report, from its unpacked archive, into the repository (docs/results/NAME):

    tar xzf darl-gpu-full-node.tar.gz -C run/
    python scripts/publish_results.py run/ docs/results/full

What is copied: index.html, ledger.json and the page of every notebook the ledger calls finished, each such
notebook's results.jsonl (the run records; the HTML pages read nothing else), and the benchmarks' JSON lines. A
notebook stopped at the time limit is left out, so the folder holds only finished work. The node's absolute paths
in the pages and results (its bundle and its work folder, read from the profile that scripts/gpu_study.sh wrote
beside the report) become `gpu-bundle` and `gpu-run`, as in a checkout that ran the script with its defaults.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import yaml


def report_folder(unpacked: Path) -> Path:
    """The one reports/NAME folder of an unpacked archive."""
    found = [p for p in (unpacked / "reports").glob("*") if (p / "ledger.json").is_file()]
    if len(found) != 1:
        raise SystemExit(f"error: {unpacked} holds {len(found)} report folders with a ledger.json, not one "
                         "(is it an unpacked darl-gpu archive?)")
    return found[0]


def node_prefixes(unpacked: Path, report: Path) -> dict[str, str]:
    """The node's bundle and work folders, each with what replaces it. Only absolute folders below the root are
    taken: replacing '.' or '/' would rewrite every file."""
    profile = unpacked / f"{report.name}.yaml"
    if not profile.is_file():
        raise SystemExit(f"error: {profile} missing: the profile scripts/gpu_study.sh writes beside the report")
    data = (yaml.safe_load(profile.read_text()).get("all") or {}).get("data", "")
    prefixes = {}
    if Path(data).is_absolute():  # BUNDLE/data/train.csv.gz
        prefixes[str(Path(data).parent.parent)] = "gpu-bundle"
    for lines in (report / "results").glob("*/results.jsonl"):  # out_dir: WORK/reports/NAME/results/STEM
        out_dir = Path(json.loads(lines.read_text().splitlines()[0])["config"]["out_dir"])
        if out_dir.is_absolute():
            prefixes[str(out_dir.parents[3])] = "gpu-run"
        break
    return {prefix: name for prefix, name in prefixes.items() if len(Path(prefix).parts) > 1}


def relative(text: str, prefixes: dict[str, str]) -> str:
    for prefix, name in sorted(prefixes.items(), key=lambda p: -len(p[0])):  # the longer first
        text = text.replace(prefix, name)
    return text


def publish(unpacked: Path, dest: Path) -> list[str]:
    """Copy what is listed above; returns the notebooks copied."""
    report = report_folder(unpacked)
    ledger = json.loads((report / "ledger.json").read_text())
    finished = [nb for nb, entry in ledger.items() if entry.get("status") == "finished"]
    prefixes = node_prefixes(unpacked, report)
    dest.mkdir(parents=True, exist_ok=True)
    for name in ["index.html", "ledger.json"] + [f"{Path(nb).stem}.html" for nb in finished]:
        (dest / name).write_text(relative((report / name).read_text(), prefixes))
    for lines in sorted((unpacked / "benchmarks").glob("*.jsonl")):  # the throughput benchmark's measurements
        (dest / "benchmarks").mkdir(exist_ok=True)
        (dest / "benchmarks" / lines.name).write_text(relative(lines.read_text(), prefixes))
    for notebook in finished:
        stem = Path(notebook).stem
        lines = report / "results" / stem / "results.jsonl"
        if lines.is_file():
            (dest / "results" / stem).mkdir(parents=True, exist_ok=True)
            (dest / "results" / stem / "results.jsonl").write_text(relative(lines.read_text(), prefixes))
    return finished


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("unpacked", type=Path, help="the folder the archive was unpacked into")
    parser.add_argument("dest", type=Path, help="where the report goes, e.g. docs/results/full")
    args = parser.parse_args(argv)
    copied = publish(args.unpacked, args.dest)
    print(f"{args.dest}: {len(copied)} finished notebook(s): {', '.join(copied) or 'none'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
