"""What names a cached artefact: the code that computed it, the data it read, the processes that trained it.

Every cached split, run, probe, feature set and DASA selection is keyed by its settings plus `code_fingerprint()`,
a hash of the source of the modules that compute results. A fix to training, a loss, a metric or the splits
therefore recomputes everything it touches, instead of a notebook quietly reusing a result of the old code.
Docstrings and comments are not part of the fingerprint (the source is hashed as a syntax tree), and neither are
the notebooks, the runner or the report rendering: rewording them keeps every cached result.
"""
from __future__ import annotations

import ast
import contextlib
import errno
import fcntl
import functools
import hashlib
import os
import platform
import time
from pathlib import Path
from typing import Callable

import numpy as np
from safetensors.numpy import load_file, save_file

from .distributed import broadcast, is_main_process, joined, main_process_first, world_size

# the modules whose code decides a cached number (docs/STUDY.md section 7)
COMPUTING_MODULES = ("data", "splits", "modeling", "training", "losses", "metrics", "interpolation", "ood",
                     "dasa", "features", "representations", "pipeline", "cache", "distributed", "tokens", "umap_map")
PACKAGE = Path(__file__).resolve().parent


def _without_docstrings(tree: ast.AST) -> ast.AST:
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant) \
                    and isinstance(body[0].value.value, str):
                node.body = body[1:] or [ast.Pass()]
    return tree


def source_fingerprint(path: Path) -> str:
    """Hash of one module's code: its syntax tree without docstrings (comments never reach the tree)."""
    tree = _without_docstrings(ast.parse(path.read_text(), filename=str(path)))
    return hashlib.sha1(ast.dump(tree).encode()).hexdigest()


@functools.lru_cache(maxsize=None)
def code_fingerprint(package: Path = PACKAGE, modules: tuple = COMPUTING_MODULES) -> str:
    """A short hash of the code of every module that computes results (those present in `package`)."""
    digest = hashlib.sha1()
    for name in modules:
        path = Path(package) / f"{name}.py"
        if path.exists():
            digest.update(f"{name}:{source_fingerprint(path)}\n".encode())
    return digest.hexdigest()[:12]


def data_fingerprint(path: Path) -> str:
    """Size and modification time of the data (every file of a folder): a changed file gets a new cache key."""
    path = Path(path)
    files = sorted(path.rglob("*")) if path.is_dir() else [path]
    return ";".join(f"{f.name}:{f.stat().st_size}:{int(f.stat().st_mtime)}" for f in files if f.is_file())


def processes_tag() -> str:
    """Part of a trained model's cache key under torchrun: batch_size is per process, so N processes train with
    N times the batch of one. Empty for one process."""
    return f"|processes={world_size()}" if world_size() > 1 else ""


def environment(device=None) -> dict:
    """What a reader needs to place a timing or a figure: the machine and the versions (kept in every record).
    `device` is the one the work ran on (a run on the CPU of a machine with a GPU says CPU); None: the machine's
    first GPU where one is visible, else its CPU."""
    import torch
    import transformers
    device = torch.device(device if device is not None else "cuda" if torch.cuda.is_available() else "cpu")
    cpu = f"CPU ({platform.machine()}, {os.cpu_count()} cores)"
    name = torch.cuda.get_device_name(device.index or 0) if device.type == "cuda" else cpu
    return {"device": name, "cuda": torch.version.cuda,
            "python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "cpu_threads": torch.get_num_threads()}


LOCK_POLL_SECONDS = 2.0  # how often a waiting torchrun job asks for a lock again (its ranks meet at each ask)
LOCK_TEST_SECONDS = 0.25  # how long a lock held by entry_busy's test can be, and more


@contextlib.contextmanager
def entry_lock(folder: Path):
    """One writer per cache entry: a second process (or torchrun job) that wants the same run, probe or selection
    waits here until the first one is done, then finds its result instead of training again. The lock is the
    kernel's (flock), so a killed holder never leaves it behind. Under torchrun process 0 holds it for the job;
    while it waits, every rank meets it at each try, so no rank sits in one collective past its timeout."""
    if world_size() > 1 and not joined():
        raise RuntimeError("a torchrun process takes a cache lock before joining its process group "
                           "(call training.setup_runtime first)")
    handle = _lock_file(folder) if is_main_process() else None
    try:
        taken = broadcast(_try_lock(handle))
        if not taken and not joined():  # held for an instant only when a report's worker tests it (entry_busy)
            taken = _try_lock_for(handle, LOCK_TEST_SECONDS)
        if not taken:
            if handle:
                print(f"waiting for another process to finish {Path(folder).name}", flush=True)
            if joined():
                while not broadcast(_try_lock(handle)):
                    time.sleep(LOCK_POLL_SECONDS)
            else:
                fcntl.flock(handle, fcntl.LOCK_EX)
        yield
    finally:
        if handle:
            handle.close()  # releases the lock


def _try_lock_for(handle, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(0.05)
        if _try_lock(handle):
            return True
    return False


def entry_busy(folder: Path) -> bool:
    """Whether another process holds the entry's lock now (is training that run): a report's worker passes it by.
    The test takes the lock for an instant if it is free."""
    path = _lock_path(folder)
    if not path.exists():
        return False
    with open(path, "a") as handle:  # closing it releases a lock taken here
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return False
        except BlockingIOError:
            return True


def _lock_path(folder: Path) -> Path:
    return Path(folder).parent / ".locks" / f"{Path(folder).name}.lock"


def _lock_file(folder: Path):
    path = _lock_path(folder)
    path.parent.mkdir(parents=True, exist_ok=True)
    return open(path, "w")


def _try_lock(handle) -> bool | None:
    """Take the lock if it is free (process 0); None on the other processes, which follow process 0's answer."""
    if handle is None:
        return None
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


class CacheWriteError(OSError):
    """A cache file could not be written (the disk is full, say); the message names it and the cache."""


def atomic_write(path: Path, write: Callable[[str], object]) -> None:
    """write(temporary name), then rename onto path: a reader (or a rerun after a kill) sees the whole file or
    none of it. A failed write (a full disk) removes its partial file and raises one clear error."""
    path = Path(path)
    partial = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        write(str(partial))
        os.replace(partial, path)
    except OSError as e:
        partial.unlink(missing_ok=True)
        why = "the disk is full" if e.errno == errno.ENOSPC else e.strerror or str(e)
        raise CacheWriteError(e.errno, f"cannot write {path.name} into the cache ({why}); free space under "
                                       f"{path.parent.parent} or point DARL_CACHE elsewhere, then rerun: "
                                       "finished runs are kept") from None


def computed_once(path: Path, compute: Callable[[], dict]) -> dict[str, np.ndarray]:
    """A cache entry of named arrays (safetensors) computed once: process 0 computes it and writes it whole, the
    others then read it; another job that wants the same entry meanwhile (a second notebook, say) waits for it
    instead of computing it too. Every process of a job must call this (they meet in the lock and in
    main_process_first)."""
    with entry_lock(path), main_process_first():
        if is_main_process() and not path.exists():
            arrays = {k: np.ascontiguousarray(v) for k, v in compute().items()}
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(path, lambda name: save_file(arrays, name))
    return load_file(str(path))


def weights_tag(backbone: str) -> str:
    """Part of a trained model's cache key when DARL_MINILM stands in for the built-in MiniLM (the GPU bundle's
    float16 copy): other weights than the package's, so runs on them must not share keys with runs on those."""
    from .modeling import builtin_key
    folder = os.environ.get("DARL_MINILM")
    if not folder or builtin_key(backbone) != "minilm":
        return ""
    weights = Path(folder) / "model.safetensors"
    return f"|minilm-weights={weights.stat().st_size if weights.exists() else 'none'}"
