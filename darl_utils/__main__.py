"""Command line: `python -m darl_utils COMMAND [--setting value ...]` (also installed as `darl-study`).

    darl-study ft --data train.csv.gz                 # FT baseline: prints and saves ID/OOD macro-F1
    darl-study ft --data ... --occ-lambda 0.5         # FT+OCC (--occ-direction forward: FT+fKL, its control;
                                                      # with --occ-prior uniform too: label smoothing)
    darl-study lpft --data ...                        # LP, LPFT and the alpha sweep; alpha* on id_val
    darl-study ft --data ... --augment dasa           # FT+DASA: train plus the pool pairs DASA selects
    darl-study lpft --data ... --augment dasa --occ-lambda 0.5  # DaRL: DASA, then LPFT with OCC
    darl-study select --data ... --augment dasa       # only the selection: detector AUROCs, OOD share
    darl-study report --profile quick                 # every notebook with papermill, HTML pages, index.html
    darl-study report --profile full --jobs 3         # the same, two workers training runs beside the notebooks
    darl-study split --data train.csv.gz              # build and save the split, print its summary
    darl-study protocol-gap --data ... --seeds 0 1 2  # FT under every protocol: which has the largest gap
    darl-study umap FOLDER                            # notebook 02's UMAP maps from inputs saved without umap-learn
    torchrun --nproc_per_node 2 -m darl_utils ft ...  # several GPUs (or CPU processes, gloo)

Every setting of RunConfig (darl_utils/config.py) is an option of the same name (--max-length 64 ...).
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import MISSING, fields, replace
from pathlib import Path

from . import distributed
from .compilation import CompileError, check_compiler
from .config import ConfigError, RunConfig, _declared_type, item_type, setting_help
from .data import DataError
from .modeling import BackboneError
from .splits import PROTOCOLS


class _Parser(argparse.ArgumentParser):
    """argparse, with its errors in one line (not the forty lines of usage before them)."""

    def error(self, message):
        self.exit(2, f"error: {message} ({self.prog} --help lists the options)\n")


def _json_mapping(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"{text!r} is not valid JSON ({e.msg}); write it as '{{\"group\": \"dept\"}}'")
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"{text!r} is not a JSON mapping")
    return value


def _default_words(default) -> str:
    """A default as one types it: '' for an empty string, a list space-separated (none when empty), JSON."""
    if isinstance(default, bool):
        return "on" if default else "off"
    if isinstance(default, list):
        return " ".join(map(str, default)) or "none"
    return json.dumps(default) if isinstance(default, dict) else repr(default) if default == "" else str(default)


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="darl-study", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    commands = {"ft": "fine-tune and evaluate FT (with --occ-lambda > 0: FT+OCC; forward: FT+fKL or FT+LS)",
                "lpft": "LP, FT from the probed head, and the alpha sweep of their interpolation",
                "split": "build, save and summarise the split of all the data (the --max-*-pairs limits apply to "
                         "the runs, not to the split)",
                "select": "build the augmented train set (--augment dasa|random|oracle|length_matched) and print "
                          "what was added, with every candidate representation's detector quality",
                "protocol-gap": "FT under every protocol and seed; prints the ID-OOD gaps"}
    report = sub.add_parser("report", help="run the notebooks of a profile and write the HTML report")
    report.add_argument("--profile", default="quick", help="smoke | quick | full | a YAML file of parameters")
    report.add_argument("--out", default="reports", help="the report goes to OUT/<profile>/ (default: reports)")
    report.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True,
                        help="progress bars and a line per step; --no-progress: one line per notebook")
    report.add_argument("--force", action="store_true",
                        help="rerun every notebook, also those unchanged since they last finished")
    report.add_argument("--first", nargs="+", default=[], metavar="NOTEBOOK",
                        help="run these notebooks first, in this order (05_evaluation or 05), then the others; "
                             "where a job may stop at a time limit, 05 first gives the main table first")
    report.add_argument("--jobs", type=int, default=1, metavar="K",
                        help="K processes train at once: the notebooks' and K - 1 workers that train the runs of the "
                             "notebooks to come (on one GPU our loop leaves it idle between steps; several GPUs "
                             "share the workers); default 1, the notebooks alone")
    umap = sub.add_parser("umap", help="draw notebook 02's UMAP map from the inputs it saved where umap-learn "
                                       "was not installed (an offline GPU node): one PNG per inputs file")
    umap.add_argument("path", help="an umap-inputs-*.safetensors file, or a folder searched for them")
    umap.add_argument("--out", default=None, help="folder of the PNGs (default: beside each inputs file)")
    for name, help_text in commands.items():
        p = sub.add_parser(name, help=help_text)
        for f in fields(RunConfig):
            if name == "protocol-gap" and f.name in ("protocol", "seed"):
                continue  # it runs every protocol and seed of --protocols and --seeds
            kind = _declared_type(f)
            default = f.default if f.default is not MISSING else f.default_factory()
            if name == "protocol-gap" and f.name == "out_dir":
                default = "reports/protocol-gap"  # where notebook 01 reads the gaps
            flag = "--" + f.name.replace("_", "-")
            shown = f"{setting_help(f)} (default: {_default_words(default)})".replace("%", "%%")  # argparse's %
            if kind is bool:
                p.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, help=shown)
            elif kind in (dict, list):
                p.add_argument(flag, type=_json_mapping if kind is dict else item_type(f),
                               nargs=None if kind is dict else "*", default=default, help=shown)
            else:
                p.add_argument(flag, type=kind, default=default, help=shown)
        if name == "protocol-gap":
            p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2],
                           help="one FT run per seed and protocol (default: 0 1 2)")
            p.add_argument("--protocols", nargs="+", default=list(PROTOCOLS), choices=PROTOCOLS,
                           help=f"the protocols compared (default: {' '.join(PROTOCOLS)})")
    return parser


def main(argv=None) -> int:
    args = vars(_parser().parse_args(argv))
    command = args.pop("command")
    if command == "report":
        from .runner import run_profile
        try:
            return run_profile(args["profile"], args["out"], args["progress"], args["force"], args["first"],
                               args["jobs"])
        except (ConfigError, DataError, BackboneError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    if command == "umap":
        return draw_umaps(args["path"], args["out"])
    seeds, protocols = args.pop("seeds", None), args.pop("protocols", None)
    if command == "protocol-gap" and args["held_out"]:
        if "department" not in protocols:
            print("error: held_out: only the department protocol holds groups out, and --protocols leaves it out",
                  file=sys.stderr)
            return 2
        args["protocol"] = "department"  # the protocol its --held-out is for; the others run without it
    try:
        cfg = RunConfig.from_dict(args).validate()
        check_compiler(cfg.compile, distributed.device_of(cfg.device))  # before any data is read
        from . import pipeline
        if command == "split":
            split = pipeline.prepare_split(cfg)
            print(split.summary().to_string())
            print(f"held out: {split.held_out or '-'}; saved in {split.directory}")
        elif command == "select":
            if cfg.augment == "none":
                raise ConfigError("augment: 'none' selects nothing; pass --augment dasa, random, oracle or "
                                  "length_matched")
            from .dasa import selection_line
            print(selection_line(pipeline.prepare(cfg).augmentation))
        elif command in ("ft", "lpft"):
            if command == "ft" and cfg.occ_lambda > 0 and cfg.occ_stage == "lp":
                raise ConfigError("occ_stage: 'lp' names a stage plain FT does not have: its OCC term would go "
                                  "unused; use lpft, or --occ-stage ft")
            result = (pipeline.run_ft if command == "ft" else pipeline.run_lpft)(cfg)
            if result:
                print(pipeline.summary_line(result))
        else:
            held = {p: cfg.held_out if p == "department" else [] for p in protocols}
            runs = [replace(cfg, protocol=p, seed=seed, held_out=held[p]) for p in protocols for seed in seeds]
            for run in runs:
                pipeline.prepare_split(run)  # an empty part under any protocol, before the first run trains
            for run in runs:
                result = pipeline.run_ft(run)
                if result:  # None on processes other than the first
                    print(pipeline.summary_line(result), flush=True)
    except (ConfigError, DataError, BackboneError, CompileError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        from .distributed import leave
        leave()
    return 0


def draw_umaps(path: str, out: str | None) -> int:
    """One PNG (umap-PER_GROUP-SEED.png) per saved umap-inputs-PER_GROUP-SEED.safetensors under path, beside
    it, or in `out` named after its selection folder too."""
    source = Path(path)
    if not source.exists():
        print(f"error: umap: {path} does not exist", file=sys.stderr)
        return 2
    inputs = [source] if source.is_file() else sorted(source.rglob("umap-inputs-*.safetensors"))
    if not inputs:
        print(f"error: umap: no umap-inputs-*.safetensors in {path}", file=sys.stderr)
        return 2
    import matplotlib
    matplotlib.use("Agg")  # files only
    import matplotlib.pyplot as plt
    from safetensors import SafetensorError

    from .figures import plot_umap
    from .umap_map import umap_from_inputs
    for found in inputs:
        try:
            fig = plot_umap(umap_from_inputs(found))
        except SafetensorError:
            print(f"error: umap: {found} is not a safetensors file (umap-inputs-*.safetensors)", file=sys.stderr)
            return 2
        except ValueError as e:
            print(f"error: umap: {e}", file=sys.stderr)
            return 2
        name = found.name.replace("umap-inputs-", "umap-").removesuffix(".safetensors") + ".png"
        png = Path(out) / f"{found.parent.name}-{name}" if out else found.parent / name
        png.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(png, dpi=150)
        plt.close(fig)
        print(png)
    return 0


if __name__ == "__main__":
    sys.exit(main())
