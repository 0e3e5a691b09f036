"""The study end to end: every notebook of a profile executed with papermill (kernel `python3`), each written
out as an executed notebook and an HTML page (code hidden, figures inline), and an index.html that links them.

    darl-study report --profile smoke        # tiny random model on synthetic pairs: checks the machinery
    darl-study report --profile quick        # Home Depot on a CPU-sized sub-sample, one seed
    darl-study report --profile full         # all the data, three seeds: meant for a GPU
    darl-study report --profile mine.yaml    # a user's parameters, in the shape of profiles/*.yaml
    darl-study report --profile full --jobs 3  # two workers train the runs of the notebooks to come (workers.py)

Every parameter is checked for every notebook before the first one starts. Models and features are shared
through the on-disk cache, so no model is trained twice for the same settings; a notebook whose source,
parameters, package code and data are unchanged since it last finished is kept as it is (--force reruns it), so
a rerun after a finished run takes seconds. A failed notebook still gets its page
(the error shows there), is marked failed in the index, and the run goes on to the next; the exit status is 1.
"""
from __future__ import annotations

import difflib
import hashlib
import html
import json
import os
import re
import shutil
import time
from dataclasses import fields
from pathlib import Path

import yaml

from . import distributed
from .compilation import CompileError, check_compiler
from .config import ConfigError, RunConfig, folder_problem
from .index_page import write_index
from .modeling import BUILTIN, builtin_key
from .notebooks import (
    NOTEBOOKS,
    VARIED,
    check_parameters,
    check_ranges,
    check_settings,
    declared_parameters,
    run_notebook,
    study_config,
)
from .plan import planned_runs
from .workers import MAX_JOBS, Workers, kernel_threads, plan_jobs, threads_each, visible_gpus

# Built-in profiles are plain files (profiles/<name>.yaml): "all" goes to every notebook that declares the name, a
# notebook's own entry (by file stem) overrides it. Notebook defaults fill the rest.
PROFILES_DIR = NOTEBOOKS.parent / "profiles"
# Notebooks share models through the cache only when their settings agree: the same alphas for 03, 04 and 05
# (else LPFT+OCC is re-evaluated on another alpha list), the same pool size for 02 and 05.


def study_notebooks() -> list[Path]:
    return sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))


def builtin_profiles() -> dict[str, Path]:
    """smoke, quick, full (smallest first): the profiles that ship in profiles/."""
    size = {"smoke": 0, "quick": 1, "full": 2}
    return {p.stem: p for p in sorted(PROFILES_DIR.glob("*.yaml"), key=lambda p: (size.get(p.stem, 3), p.stem))}


def load_profile(profile: str) -> tuple[str, dict]:
    """(name, spec) of a built-in profile or a YAML file of the same shape."""
    builtin = builtin_profiles()
    path = builtin.get(profile, Path(profile))
    if path.suffix not in (".yaml", ".yml") or not path.is_file():
        raise ConfigError(f"profile: {profile!r} is neither one of {list(builtin)} nor a YAML file that exists")
    if path.stem in builtin and path.resolve() != builtin[path.stem].resolve():  # its report would land in theirs
        raise ConfigError(f"profile: {path} has the name of the built-in profile {path.stem!r}, whose report it "
                          "would overwrite (OUT/" + path.stem + "); rename the file")
    try:
        spec = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"profile: {path} is not valid YAML ({e})") from None
    if not isinstance(spec, dict) or not all(isinstance(v, dict) for v in spec.values()):
        raise ConfigError(f"profile: {path} must map 'all' and notebook names to mappings of parameters")
    return path.stem, spec


SYNTHETIC = "synthetic"  # `data: synthetic` in a profile's `all`: the smoke assets, built under its output folder


def with_synthetic_assets(spec: dict, folder: Path) -> dict:
    """A profile whose `all` says `data: synthetic` (smoke.yaml, and any copy of it) gets the synthetic pairs and
    the tiny random model, built under folder; its own settings (a backbone, say) win."""
    common = spec.get("all", {})
    if common.get("data") != SYNTHETIC:
        return spec
    from .smoke import smoke_assets
    return {**spec, "all": {**smoke_assets(folder), **{k: v for k, v in common.items() if k != "data"}}}


def check_output_folder(out: Path) -> None:
    """The report's folder can be made and written (its nearest existing parent is a writable folder)."""
    problem = folder_problem(out)
    if problem:
        raise ConfigError(f"out: {problem}; pass another --out")


def resolve(spec: dict, notebooks: list[Path], out: Path) -> dict[Path, dict]:
    """The parameters of every notebook, checked: names, types, then values (through RunConfig.validate). A
    notebook's own entry wins over "all", key by key inside `settings` too; relative paths become absolute (the
    notebooks run in the project root)."""
    names = {nb.stem: nb for nb in notebooks}
    unknown = sorted(set(spec) - set(names) - {"all"})
    if unknown:
        raise ConfigError(f"profile: unknown notebook(s) {unknown}; the study has {sorted(names)}")
    declared = {nb: declared_parameters(nb) for nb in notebooks}
    common = spec.get("all", {})
    everywhere = set().union(*declared.values())
    for name in sorted(set(common) - everywhere):
        near = difflib.get_close_matches(name, everywhere, n=1)
        raise ConfigError(f"profile: 'all' sets {name!r}, which no notebook declares"
                          + (f"; did you mean {near[0]!r}?" if near else ""))
    resolved = {}
    for nb in notebooks:
        own = spec.get(nb.stem, {})
        params = {**{k: v for k, v in common.items() if k in declared[nb]}, **own}
        if isinstance(common.get("settings"), dict) and isinstance(own.get("settings"), dict):
            params["settings"] = {**common["settings"], **own["settings"]}
        if "out_dir" in declared[nb]:
            params.setdefault("out_dir", str(out / "results" / nb.stem))
        check_parameters(nb, params)
        params = absolute_paths(params)
        check_values(nb, {**declared[nb], **params})
        resolved[nb] = params
    return resolved


PATH_PARAMETERS = ("data", "out_dir", "gap_results")  # relative to where the runner starts, like its --out


def absolute_paths(params: dict) -> dict:
    """Paths relative to the current folder made absolute, and a backbone given as a local folder too (a hub id
    or a built-in name stays as it is)."""
    params = dict(params)
    for name in PATH_PARAMETERS:
        if params.get(name) and not Path(params[name]).expanduser().is_absolute():
            params[name] = str(Path(params[name]).expanduser().resolve())
    backbone = params.get("backbone")
    builtin = builtin_key(str(backbone)) in BUILTIN  # a name, even beside a folder of that name
    if backbone and not builtin and (backbone.startswith(".") or Path(backbone).expanduser().is_dir()):
        params["backbone"] = str(Path(backbone).expanduser().resolve())
    return params


def notebook_parameters(resolved: dict[Path, dict]) -> dict[str, dict]:
    """By notebook name, in the order given: its parameters as it will run them (its defaults, then resolved)."""
    return {nb.stem: {**declared_parameters(nb), **params} for nb, params in resolved.items()}


def check_values(notebook: Path, params: dict) -> None:
    """Range checks before anything runs: the settings a RunConfig knows, validated as one; then the notebook's own
    parameters (NOTEBOOK_RANGES, seeds)."""
    known = {f.name for f in fields(RunConfig)}
    values = {k: v for k, v in params.items() if k in known}
    values.update(params.get("settings", {}))
    try:
        check_settings(params.get("settings", {}), params, VARIED.get(notebook.stem, ()))
        RunConfig.from_dict(values).validate()
        check_ranges(params)
    except ConfigError as e:
        raise ConfigError(f"{notebook.name}: {e}") from None


def preflight(resolved: dict[Path, dict]) -> None:
    """The checks that need the data or the machine, before the first notebook starts: a `compile` other than off
    can compile here; for every notebook and seed, no part of the split (sub-sampled as asked) is empty, and a DASA
    budget fits its pool."""
    from dataclasses import replace

    from .dasa import budget_size, unlabelled_pool
    from .data import DataError
    from .pipeline import prepare_split, sized_parts
    for nb, params in resolved.items():
        full = {**declared_parameters(nb), **params}
        if "seeds" not in full:
            continue
        base = study_config(full)  # its backbone was checked with the values (RunConfig.validate)
        try:
            check_compiler(base.compile, distributed.device_of(base.device))
        except CompileError as e:
            raise ConfigError(f"{nb.name}: {e}") from None
        for seed in full["seeds"]:
            cfg = replace(base, seed=seed)
            try:
                split = prepare_split(cfg)
                parts = sized_parts(split, cfg)
                if "dasa_budget" in full:
                    pool = unlabelled_pool(split, cfg.max_pool_pairs, cfg.split_salt)
                    parts["pool"] = pool.frame
                    budget_size(cfg.dasa_budget, len(parts["train"]), len(pool.frame))
            except (ConfigError, DataError) as e:  # the split's own checks (an empty part) and the budget's
                raise ConfigError(f"{nb.name}, seed {seed}: {e}") from None
            empty = [part for part, frame in parts.items() if not len(frame)]
            if empty:
                raise ConfigError(f"{nb.name}, seed {seed}: the split leaves {empty} empty (protocol "
                                  f"{cfg.protocol!r}, data {cfg.data_path()}); change the protocol or the sizes")


def run_order(notebooks: list[Path], first: list[str]) -> list[Path]:
    """The notebooks named in `first` (05_evaluation.ipynb, 05_evaluation or 05), in that order, then the others
    in name order. On a node whose job may stop at a time limit, `first` puts the page that matters most first:
    05_evaluation trains nearly every run, which the other notebooks then find in the cache."""
    chosen = []
    for name in first:
        matches = [nb for nb in notebooks if name in (nb.name, nb.stem, nb.stem.split("_")[0])]
        if not matches:
            close = difflib.get_close_matches(name, [nb.stem for nb in notebooks], n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; the notebooks are {[nb.stem for nb in notebooks]}"
            raise ConfigError(f"first: no notebook {name!r}{hint}")
        if matches[0] in chosen:
            raise ConfigError(f"first: {matches[0].stem} named twice")
        chosen.append(matches[0])
    return chosen + [nb for nb in notebooks if nb not in chosen]


def run_profile(profile: str, out_root: str | Path = "reports", progress: bool = True, force: bool = False,
                first: tuple[str, ...] = (), jobs: int = 1) -> int:
    """Run the study for a profile; returns 0 when every notebook finished, 1 otherwise. A notebook whose
    source, parameters, package code and data are unchanged since it last finished here is kept, not rerun
    (force reruns it). The notebooks named in `first` run before the others (run_order). With jobs > 1, so many
    processes train at once: the notebooks' kernel and jobs - 1 workers that train the runs of the notebooks
    to come (workers.py)."""
    name, spec = load_profile(profile)
    check_jobs(jobs)
    notebooks = study_notebooks()
    order = run_order(notebooks, list(first))
    out = Path(out_root).resolve() / name  # notebooks run in the project root: give them absolute paths
    check_output_folder(out)
    for variable in ("DARL_DATA", "DARL_CACHE"):  # the kernels and workers inherit them, and run in the project root
        if os.environ.get(variable):
            os.environ[variable] = str(Path(os.environ[variable]).expanduser().resolve())
    spec = with_synthetic_assets(spec, out / "assets")
    resolved = resolve(spec, notebooks, out)  # everything checked before the first notebook starts
    preflight(resolved)
    out.mkdir(parents=True, exist_ok=True)
    ledger = read_ledger(out)
    stamps = {nb: fingerprint(nb, resolved[nb]) for nb in order}
    kept = {nb for nb in order if not force and is_unchanged(ledger.get(nb.name, {}), stamps[nb], out)}
    workers = start_workers({nb: resolved[nb] for nb in order if nb not in kept}, jobs, out, progress)
    try:
        with kernel_threads(workers.cpu_threads if workers else None):  # the cores shared with the workers
            statuses = run_notebooks(order, resolved, out, name, ledger, stamps, kept, progress, workers)
    except BaseException:
        if workers:
            workers.terminate()
        raise
    if workers:
        done = workers.finish()
        print(f"workers ({done['workers']}): {done['trained']} runs trained, {done['failed']} failed, beside the "
              f"notebooks ({done['seconds']:.0f} s; {out / 'workers' / 'runs.jsonl'})", flush=True)
    print(f"report: {out / 'index.html'}", flush=True)
    return 0 if all(s["status"] == "finished" for s in statuses) else 1


def check_jobs(jobs: int) -> None:
    if not isinstance(jobs, int) or isinstance(jobs, bool) or not 1 <= jobs <= MAX_JOBS:
        raise ConfigError(f"jobs: {jobs!r} must be a whole number from 1 (the notebooks alone) to {MAX_JOBS}")
    if jobs > 1 and distributed.world_size() > 1:
        raise ConfigError("jobs: a report under torchrun trains with its process group; run it with --jobs 1")


def is_unchanged(before: dict, stamp: str, out: Path) -> bool:
    """The notebook finished here before with the same fingerprint, and its page is still there."""
    return before.get("fingerprint") == stamp and before.get("status") == "finished" \
        and (out / before.get("page", "")).is_file()


def start_workers(to_run: dict[Path, dict], jobs: int, out: Path, progress: bool) -> Workers | None:
    """jobs - 1 workers training the runs these notebooks will ask for; None when there are none to start."""
    if jobs < 2:
        return None
    queue = plan_jobs(planned_runs(notebook_parameters(to_run)))
    if not queue:
        return None
    if not all(job.config.reuse for job in queue):  # a notebook would train every run again
        print("workers: not started, since reuse is off: the notebooks train every run themselves", flush=True)
        return None
    device = queue[0].config.device
    say = print if progress else (lambda line: None)
    return Workers(queue, jobs - 1, out / "workers", visible_gpus(device), threads_each(jobs - 1), say=say)


def run_notebooks(order: list[Path], resolved: dict, out: Path, name: str, ledger: dict, stamps: dict, kept: set,
                  progress: bool, workers: Workers | None = None) -> list[dict]:
    """Each notebook in turn (those in `kept` only listed), the ledger and the index written after each; the
    workers then drop what it asked for and did not get."""
    statuses = []
    for nb in order:
        params, before = resolved[nb], ledger.get(nb.name, {})
        if progress:
            print(f"[{len(statuses) + 1}/{len(resolved)}] {nb.name}", flush=True)
        if nb in kept:
            statuses.append({**before, "kept": True})
        else:
            # until it finishes, the ledger and the index say so (the index links its last finished page, if any):
            # a run killed here is neither kept next time nor shown as finished
            write_ledger(out, {**ledger, nb.name: {**before, "status": "running"}})
            write_index(out, name, statuses + [running_status(nb, before, out)], resolved)
            statuses.append({**execute(nb, params, out, progress, before.get("status") in ("finished", "failed")),
                             "fingerprint": stamps[nb], "kept": False})
            ledger[nb.name] = {k: v for k, v in statuses[-1].items() if k != "kept"}
            write_ledger(out, ledger)
            if workers:
                workers.drop(nb.stem)
        write_index(out, name, statuses, resolved)  # after each: an interrupted run still has its index
        s = statuses[-1]  # one line per notebook whatever the progress setting: a batch run is never silent
        why = f": {s['error'].splitlines()[0]}" if s["status"] == "failed" and s.get("error") else ""
        if progress:
            print(f"    {'unchanged since ' + s['ran'] + ', kept' if s['kept'] else s['status']} "
                  f"({s['seconds']:.0f} s) -> {s['page']}{why}", flush=True)
        else:
            print(f"{nb.name}: {'kept' if s['kept'] else s['status']} ({s['seconds']:.0f} s){why}", flush=True)
    return statuses


def fingerprint(notebook: Path, params: dict) -> str:
    """What a notebook's output depends on: its source, its parameters, the package's code and the data."""
    from .cache import data_fingerprint
    digest = hashlib.sha1(notebook.read_bytes())
    digest.update(json.dumps(params, sort_keys=True, default=str).encode())
    for source in sorted(Path(__file__).parent.glob("*.py")):
        digest.update(source.read_bytes())
    data = str(params.get("data") or os.environ.get("DARL_DATA", ""))
    digest.update(data.encode())
    if data and Path(data).exists():
        digest.update(data_fingerprint(Path(data)).encode())
    return digest.hexdigest()[:16]


def read_ledger(out: Path) -> dict:
    path = out / "ledger.json"
    try:
        return json.loads(path.read_text()) if path.exists() else {}
    except json.JSONDecodeError:
        return {}  # a damaged ledger only means every notebook runs again


def write_ledger(out: Path, ledger: dict) -> None:
    partial = out / "ledger.json.tmp"
    partial.write_text(json.dumps(ledger, indent=2))
    partial.replace(out / "ledger.json")


def running_status(notebook: Path, before: dict, out: Path) -> dict:
    """The index row of a notebook while it runs (and, if the run is killed, until it runs again)."""
    earlier = before.get("page") if before.get("page") and (out / before["page"]).exists() else None
    return {"notebook": notebook.name, "status": "running", "seconds": 0.0, "page": earlier or "",
            "ran": "started " + time.strftime("%Y-%m-%d %H:%M"),
            "error": f"running or interrupted; the page is from its run of {before['ran']}" if earlier else None}


def execute(notebook: Path, params: dict, out: Path, progress: bool, last_complete: bool = True) -> dict:
    """Run one notebook into its executed copy and page. Its results folder starts empty: the last complete one
    moves to <name>.previous, and one an interrupted run left half-written is discarded (the complete one before
    it stays in .previous)."""
    from papermill.exceptions import PapermillExecutionError
    executed = out / notebook.name
    results = NOTEBOOKS.parent / params.get("out_dir", out / "results" / notebook.stem)  # notebooks run there
    if results.exists():
        if last_complete:
            previous = results.with_name(results.name + ".previous")
            shutil.rmtree(previous, ignore_errors=True)
            results.rename(previous)
        else:
            shutil.rmtree(results)
    started, status, error = time.time(), "finished", None
    try:
        run_notebook(notebook, executed, params, progress=progress)
    except PapermillExecutionError as e:
        status, error = "failed", f"{e.ename}: {e.evalue}"
    page = out / f"{notebook.stem}.html"
    to_html(executed, page)
    return {"notebook": notebook.name, "status": status, "error": error, "seconds": round(time.time() - started, 1),
            "page": page.name, "executed": executed.name, "ran": time.strftime("%Y-%m-%d %H:%M")}


def name_the_failed_cell(nb) -> None:
    """Papermill's notes on a failed notebook point at "In [3]", a prompt the page hides: the top note says the
    error instead, and the note above the failed cell quotes that cell's code."""
    from papermill.execute import ERROR_MARKER_TAG  # papermill's tag on the two notes
    marked = [i for i, cell in enumerate(nb.cells) if ERROR_MARKER_TAG in cell.metadata.get("tags", [])]
    if len(marked) != 2 or marked[1] + 1 >= len(nb.cells):
        return
    failed = nb.cells[marked[1] + 1]
    error = next((o for o in failed.get("outputs", []) if o.output_type == "error"), None)
    said = html.escape(f"{error.ename}: {error.evalue}".splitlines()[0], quote=False) if error else "an error"
    style = 'style="color:red; font-size:1.4em;"'
    fence = "`" * max([3] + [len(run) + 1 for run in re.findall("`+", failed.source)])  # longer than any inside
    # a <div> line is raw HTML to markdown: the message's own * or < stay as they are
    nb.cells[marked[0]].source = (f'<div {style}>This notebook stopped at <a href="#papermill-error-cell">a cell '
                                  f'below</a> with {said}</div>')
    nb.cells[marked[1]].source = (f'<span id="papermill-error-cell" {style}>It stopped here, in this cell:</span>'
                                  f'\n\n{fence}python\n{failed.source}\n{fence}')


def to_html(executed: Path, page: Path) -> None:
    """An HTML page of an executed notebook: inputs hidden (a failed cell's quoted), figures inline, written at
    once."""
    import nbformat
    from nbconvert import HTMLExporter
    exporter = HTMLExporter(exclude_input=True, exclude_input_prompt=True, exclude_output_prompt=True)
    nb = nbformat.read(str(executed), as_version=4)
    name_the_failed_cell(nb)
    body, _ = exporter.from_notebook_node(nb)
    partial = page.with_suffix(".tmp")
    partial.write_text(body, encoding="utf-8")
    partial.replace(page)
