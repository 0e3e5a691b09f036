"""Running the study's notebooks with papermill, parameters checked against each notebook's own cell first.

papermill only warns about a parameter the notebook does not declare (a typo would run with the default); here
an unknown name or a value of the wrong type stops before the kernel starts.
"""
from __future__ import annotations

import ast
import difflib
import os
from dataclasses import fields
from pathlib import Path

from .config import OCC_FIELDS, ConfigError, RunConfig, in_range, range_words, type_matches, type_words
from .data import project_root

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
SOCKET_FOLDER_LIMIT = 70  # room for "/darl-kernel-<12 hex>-<n>" within a Unix socket path's ~107 bytes
# The ranges of the parameters that notebooks take beyond RunConfig's settings, or narrower than RunConfig's, by
# name wherever a notebook declares one (a list's items each): checked by the runner before the first notebook
# starts, and by each notebook's own setup cell.
NOTEBOOK_RANGES = {"n_examples": ("[0, 20]", "example pairs shown per part"),
                   "umap_points": (">= 0", "points on the UMAP map; 0 draws none"),
                   "top_pairs": (">= 0", "selected pairs listed"),
                   "rho_sweep": ("(0, 1)", "each an OCC rho"),
                   "occ_lambda": ("> 0", "to test OCC"),
                   "occ_rho": ("(0, 1)", "to test OCC")}
# The settings a notebook sets itself for each method it trains (so never from its `settings`), by notebook
VARIED = {"02_ood_detection": ("augment",), "04_occ_calibration": OCC_FIELDS,
          "05_evaluation": OCC_FIELDS + ("augment",)}
INJECTED_HEADER = "# Parameters\n"  # the first line of the cell papermill injects


def declared_parameters(notebook: str | Path) -> dict:
    """name -> default value, read from the cell tagged `parameters`."""
    import papermill
    found = papermill.inspect_notebook(str(notebook))
    return {name: ast.literal_eval(p["default"]) for name, p in found.items()}


def check_parameters(notebook: str | Path, parameters: dict) -> None:
    declared = declared_parameters(notebook)
    for name, value in parameters.items():
        if name not in declared:
            near = difflib.get_close_matches(name, declared, n=1)
            raise ConfigError(f"{Path(notebook).name}: unknown parameter {name!r}"
                              + (f"; did you mean {near[0]!r}?" if near else f"; it takes {sorted(declared)}"))
        expected = type(declared[name])
        if not type_matches(value, expected):
            raise ConfigError(f"{Path(notebook).name}: parameter {name!r} = {value!r} is "
                              f"{type_words(type(value))}, expected {type_words(expected)}")


def run_notebook(notebook: str | Path, output: str | Path, parameters: dict | None = None,
                 cwd: str | Path | None = None, progress: bool = True):
    """Check the parameters, then execute with papermill (kernel `python3`); returns the executed notebook."""
    import papermill
    parameters = parameters or {}
    check_parameters(notebook, parameters)
    Path(output).parent.mkdir(parents=True, exist_ok=True)
    managers = {"kernel_manager_class": socket_kernel_manager()} if os.name == "posix" else {}
    return papermill.execute_notebook(str(notebook), str(output), parameters=parameters, kernel_name="python3",
                                      cwd=str(cwd or NOTEBOOKS.parent), progress_bar=progress, **managers)


def socket_kernel_manager():
    """A kernel manager that talks to its kernel over Unix sockets in Jupyter's runtime folder, each kernel under
    its own name: no TCP ports to race for when several reports run at once, and no "running over TCP without
    encryption" warning from every kernel on the runner's output. A kernel that is shutting down gets the shutdown
    request without the SIGINT that jupyter_client sends first: on a loaded machine that signal could land before
    the last cell's handler returned and print "KeyboardInterrupt caught in kernel" (a busy kernel is still
    stopped: SIGTERM after half of shutdown_wait_time, SIGKILL at its end)."""
    import tempfile
    import uuid

    from jupyter_client.manager import AsyncKernelManager
    from jupyter_core.paths import jupyter_runtime_dir
    from traitlets import default

    class SocketKernelManager(AsyncKernelManager):
        @default("transport")
        def _transport_default(self):
            return "ipc"

        @default("ip")
        def _ip_default(self):
            # absolute: papermill runs the kernel and the client in the notebook's folder, which must stay clean
            folder = jupyter_runtime_dir()
            if len(folder) > SOCKET_FOLDER_LIMIT:  # a socket's path may not exceed about 100 bytes
                folder = tempfile.gettempdir()
            os.makedirs(folder, exist_ok=True)
            return os.path.join(folder, f"darl-kernel-{uuid.uuid4().hex[:12]}")

        async def _async_interrupt_kernel(self):
            if not getattr(self, "shutting_down", False):  # the flag is jupyter_client 7's; older ones interrupt
                await super()._async_interrupt_kernel()

    return SocketKernelManager


def check_settings(settings: dict, parameters, varied: tuple = ()) -> None:
    """A notebook's `settings` holds the RunConfig settings it does not take as parameters: none of its
    `parameters` (those are set as parameters) and none it `varied` itself (those it sets per method)."""
    given = sorted(set(settings) & set(parameters))
    if given:
        raise ConfigError(f"settings: {given} are parameters of this notebook; set them as parameters, not in settings")
    own = sorted(set(settings) & set(varied))
    if own:
        raise ConfigError(f"settings: {own} are set by this notebook itself for each method it trains; remove them")


def study_config(params: dict) -> RunConfig:
    """The plain-FT RunConfig that a notebook's parameters describe (its defaults merged with a profile's):
    every parameter that names a setting, plus `settings`; the OCC and augmentation settings a notebook varies
    itself stay at their defaults."""
    names = {f.name for f in fields(RunConfig)} - {"out_dir", "augment"}
    values = {k: v for k, v in params.items() if k in names and not k.startswith("occ_")}
    return RunConfig.from_dict({**values, **params.get("settings", {}), "progress": False})


def setup(namespace: dict, notebook: str) -> tuple[RunConfig, list[int]]:
    """The setup cell of a study notebook, given its globals() and its name: work from the project root (relative
    paths then mean what they mean on the command line); papermill's parameters checked by name; the notebook's
    RunConfig from every parameter that names a RunConfig setting (not those it varies itself, VARIED) plus
    `settings`, validated; its own parameters' ranges; and its checked `seeds`. Progress bars are off: a page reads
    them as noise."""
    os.chdir(project_root())
    check_injected(namespace, notebook)
    varied = VARIED.get(notebook, ())
    names = {f.name for f in fields(RunConfig)} - set(varied)
    values = {**{k: v for k, v in namespace.items() if k in names}, "progress": False}
    settings = namespace.get("settings", {})
    check_settings(settings, declared_parameters(notebook_path(notebook)), varied)
    cfg = RunConfig.from_dict({**values, **settings}).validate()
    check_ranges(namespace)  # and the seeds
    return cfg, namespace["seeds"]


def notebook_path(notebook: str) -> Path:
    """A study notebook by name (05_evaluation), or the path of a user's own notebook."""
    path = Path(notebook) if str(notebook).endswith(".ipynb") else NOTEBOOKS / f"{notebook}.ipynb"
    if not path.is_file():
        study = ", ".join(sorted(p.stem for p in NOTEBOOKS.glob("[0-9][0-9]_*.ipynb")))
        raise ConfigError(f"notebook: {notebook!r} is neither a study notebook ({study}) nor a notebook's path")
    return path


def check_injected(namespace: dict, notebook: str) -> None:
    """Under papermill, the names and types of its injected parameters against the notebook's own: papermill only
    warns about an unknown name, and the run would go on with the default. (The injected cell is found in the
    kernel's input history, `In`; run interactively there is none, and nothing to check.)"""
    injected = [cell for cell in namespace.get("In", []) if cell.startswith(INJECTED_HEADER)]
    if injected:
        names = [t.id for node in ast.parse(injected[-1]).body if isinstance(node, ast.Assign)
                 for t in node.targets if isinstance(t, ast.Name) and not t.id.startswith("PAPERMILL_")]
        check_parameters(notebook_path(notebook), {name: namespace[name] for name in names})


def check_ranges(parameters: dict) -> None:
    """The parameters of NOTEBOOK_RANGES among `parameters` (others are ignored), and `seeds` if given."""
    for name, (within, why) in NOTEBOOK_RANGES.items():
        value = parameters.get(name, [])
        for item in value if isinstance(value, list) else [value]:
            if not type_matches(item, float):  # YAML reads 1e-1 (no dot) as a string
                raise ConfigError(f"{name}: {item!r} is {type_words(type(item))}, expected a number")
            if not in_range(item, within):
                raise ConfigError(f"{name}: {item!r} {range_words(within)} ({why})")
    if "seeds" in parameters:
        check_seeds(parameters["seeds"])


def check_seeds(seeds) -> list[int]:
    if not (isinstance(seeds, list) and seeds and all(type(s) is int and s >= 0 for s in seeds)
            and len(set(seeds)) == len(seeds)):
        raise ConfigError(f"seeds: {seeds!r} must be a non-empty list of distinct integers >= 0")
    return seeds
