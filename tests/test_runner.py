"""The study runner: profiles checked before anything runs, notebooks executed into HTML pages and an index,
a failed notebook reported without losing the others, a rerun that trains nothing."""
import contextlib
import html
import io
import json
import os
import re
import shutil
import subprocess
import sys

import pandas as pd
import pytest
import yaml

from darl_utils import runner, tables
from darl_utils.__main__ import main as cli
from darl_utils.config import ConfigError
from darl_utils.plan import planned_runs, run_identity

from test_training import ROOT

PAGE_BUDGET = 2_000_000  # bytes per notebook page, figures included (the template itself is ~0.3 MB)


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DARL_CACHE", str(tmp_path / "cache"))


def profile_file(tmp_path, spec) -> str:
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump(spec))
    return str(path)


@pytest.mark.parametrize("spec, message", [
    ({"03_lpft_alpha_sweep": {"alpahs": [0.5]}},
     r"03_lpft_alpha_sweep.ipynb: unknown parameter 'alpahs'; did you mean 'alphas'"),
    ({"all": {"epohcs": 2}}, r"profile: 'all' sets 'epohcs', which no notebook declares; did you mean 'epochs'\?"),
    ({"05_nothing": {}}, r"profile: unknown notebook\(s\) \['05_nothing'\]"),
    ({"all": {"lr": 5.0}}, r"02_ood_detection.ipynb: lr: 5.0 must be in \(0, 1\)"),
    ({"04_occ_calibration": {"occ_rho": "high"}}, r"parameter 'occ_rho' = 'high' is a string, expected a number"),
    ({"all": {"seeds": [0, 0]}}, r"02_ood_detection.ipynb: seeds: \[0, 0\] must be a non-empty list of distinct"),
    ({"all": {"data": "no/such/file.csv"}}, r"01_data.ipynb: data: \S*no/such/file.csv does not exist"),
    # a notebook's own parameters, checked before the first notebook too, not when their notebook comes
    ({"01_data": {"n_examples": 21}}, r"01_data.ipynb: n_examples: 21 must be in \[0, 20\]"),
    ({"02_ood_detection": {"umap_points": -5}}, r"02_ood_detection.ipynb: umap_points: -5 must be >= 0"),
    ({"04_occ_calibration": {"rho_sweep": [0.1, 1.5]}}, r"04_occ_calibration.ipynb: rho_sweep: 1.5 must be in"),
    ({"all": {"occ_lambda": 0.0}}, r"04_occ_calibration.ipynb: occ_lambda: 0.0 must be > 0 \(to test OCC\)"),
    # `settings` may hold neither a notebook's parameters nor what it sets itself (checked here, not in 05)
    ({"05_evaluation": {"settings": {"max_length": 40}}},
     r"05_evaluation.ipynb: settings: \['max_length'\] are parameters of this notebook; set them as parameters"),
    ({"05_evaluation": {"settings": {"augment": "dasa"}}},
     r"05_evaluation.ipynb: settings: \['augment'\] are set by this notebook itself"),
    ({"all": {"backbone": "minilmm"}}, r"02_ood_detection.ipynb: backbone 'minilmm': .*did you mean 'minilm'\?"),
    ({"04_occ_calibration": {"rho_sweep": [0.05, "1e-1"]}},  # YAML reads 1e-1 as a string
     r"04_occ_calibration.ipynb: rho_sweep: '1e-1' is a string, expected a number"),
])
def test_a_bad_profile_stops_before_any_notebook(tmp_path, spec, message, monkeypatch):
    monkeypatch.setattr(runner, "execute", lambda *a, **k: pytest.fail("a notebook ran"))
    with pytest.raises(ConfigError, match=message):
        runner.run_profile(profile_file(tmp_path, spec), tmp_path / "reports", progress=False)
    assert not (tmp_path / "reports").exists()


def test_profile_files_are_checked(tmp_path, capsys):
    with pytest.raises(ConfigError, match=r"profile: 'quik' is neither one of \['smoke', 'quick', 'full'\]"):
        runner.load_profile("quik")
    bad = tmp_path / "bad.yaml"
    bad.write_text("all: [1, 2\n")
    with pytest.raises(ConfigError, match=r"bad.yaml is not valid YAML"):
        runner.load_profile(str(bad))
    bad.write_text("all: 3\n")
    with pytest.raises(ConfigError, match=r"must map 'all' and notebook names to mappings"):
        runner.load_profile(str(bad))
    assert cli(["report", "--profile", "quik", "--out", str(tmp_path / "r")]) == 2
    mine = tmp_path / "quick.yaml"  # a user's file under a built-in name: its report would overwrite quick's
    shutil.copy(runner.builtin_profiles()["quick"], mine)
    with pytest.raises(ConfigError, match=r"has the name of the built-in profile 'quick'.*rename the file"):
        runner.load_profile(str(mine))
    assert runner.load_profile(str(runner.builtin_profiles()["quick"]))[0] == "quick"  # the file itself, by path
    assert "error: profile: 'quik'" in capsys.readouterr().err


def test_built_in_profiles_name_only_declared_parameters(monkeypatch, tmp_path):
    monkeypatch.setattr(runner, "check_values", lambda *a: None)  # real data may be absent here: names, types
    assert sorted(runner.builtin_profiles()) == ["full", "quick", "smoke"]
    for name in runner.builtin_profiles():
        runner.resolve(runner.load_profile(name)[1], runner.study_notebooks(), tmp_path)


def test_named_notebooks_run_first_in_the_order_named(tmp_path, capsys):
    notebooks = runner.study_notebooks()
    assert runner.run_order(notebooks, []) == notebooks
    order = runner.run_order(notebooks, ["05", "03_lpft_alpha_sweep"])
    assert [nb.stem[:2] for nb in order] == ["05", "03", "01", "02", "04"]
    assert runner.run_order(notebooks, ["05_evaluation.ipynb"])[0].name == "05_evaluation.ipynb"
    with pytest.raises(ConfigError, match=r"first: no notebook '05_evalution'; did you mean '05_evaluation'\?"):
        runner.run_order(notebooks, ["05_evalution"])
    with pytest.raises(ConfigError, match=r"first: 05_evaluation named twice"):
        runner.run_order(notebooks, ["05", "05_evaluation"])
    # from the command line: one message before any work, nothing written
    assert cli(["report", "--profile", "smoke", "--out", str(tmp_path / "r"), "--first", "06"]) == 2
    assert "error: first: no notebook '06'; the notebooks are ['01_data'" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_the_index_lists_notebooks_in_name_order_whichever_ran_first(tmp_path):
    from darl_utils.index_page import write_index
    notebooks = runner.study_notebooks()
    first = {"notebook": "05_evaluation.ipynb", "status": "finished", "seconds": 3.0, "page": "05_evaluation.html",
             "ran": "2026-11-27 18:00", "error": None}
    write_index(tmp_path, "x", [first], {nb: {} for nb in notebooks})
    rows = re.findall(r"<tr><td>(?:<a [^>]+>)?(\d\d_\w+\.ipynb)", (tmp_path / "index.html").read_text())
    assert rows == [nb.name for nb in notebooks]


@pytest.fixture(scope="module")
def smoke_report(tmp_path_factory):
    """The smoke profile run once for the tests below, notebook 05 first: (report folder, cache folder). What the
    runner printed is kept in report.log beside the reports folder."""
    root = tmp_path_factory.mktemp("smoke")
    printed = io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(printed):
        mp.setenv("DARL_CACHE", str(root / "cache"))
        assert runner.run_profile("smoke", root / "reports", progress=False, first=("05",)) == 0
    (root / "report.log").write_text(printed.getvalue())
    return root / "reports" / "smoke", root / "cache"


@pytest.mark.slow
def test_smoke_profile_writes_every_page_and_the_index(smoke_report):
    folder, _ = smoke_report
    index = (folder / "index.html").read_text()
    assert "<h1>darl-study report: profile smoke</h1>" in index  # the profile's name, not a variable's
    ran = [line.split(":")[0] for line in (folder.parents[1] / "report.log").read_text().splitlines()
           if line.endswith(" s)")]
    assert ran == [nb.name for nb in runner.run_order(runner.study_notebooks(), ["05"])], ran  # 05 first
    rows = re.findall(r'<tr><td><a href="[^"]+">(\d\d_\w+\.ipynb)</a>', index)
    assert rows == [nb.name for nb in runner.study_notebooks()]  # the index lists them in name order
    for nb in runner.study_notebooks():
        page = folder / f"{nb.stem}.html"
        assert page.stat().st_size < PAGE_BUDGET, (page.name, page.stat().st_size)
        text = page.read_text()
        assert "IProgress not found" not in text and "UserWarning" not in text  # library warnings stay off the pages
        assert f'<a href="{nb.stem}.html">{nb.name}</a></td><td class="finished">finished' in index
    assert len(runner.study_notebooks()) == 5
    assert (folder / "index.html").stat().st_size < PAGE_BUDGET
    assert re.search(r"commit \w+( with uncommitted changes)? · \d{4}-\d\d-\d\d", index)
    assert "torch " in index and "CPU" in index
    # the main table of notebook 05: every model and ablation, best values in bold; the alpha sweep inline
    main = index[index.index('<table class="main dataframe"'):]
    main = main[:main.index("</table>")]
    for model in tables.MAIN_MODELS.values():
        assert f"<th>{html.escape(model)}</th>" in main, model
    assert main.count("<b>") >= len(tables.MAIN_COLUMNS) and "nDCG@10" in main
    # every model but FT shows its difference to FT with an interval
    assert len(re.findall(r"<td>[+-]\d\.\d{3} \[[+-]\d\.\d{3}, [+-]\d\.\d{3}\]</td>", main)) == \
        2 * (len(tables.MAIN_MODELS) - 1)
    assert '<img id="alpha-sweep"' in index and "data:image/png;base64" in index
    assert '<table border="1" class="dataframe" id="results">' in index  # every model, in a details element
    page = (folder / "02_ood_detection.html").read_text()
    assert "os.chdir(project_root())" not in page  # code hidden
    assert "data:image/png;base64" in page and "Claim 4 " in page  # figures inline, verdict shown
    page = (folder / "05_evaluation.html").read_text()
    for claim in range(1, 6):
        assert re.search(rf"Claim {claim}[ ,]", page), claim
    # every verdict reads an interval: holds, does not hold, or not distinguishable
    assert len(re.findall(r"Claim \d(?:, over-confidence,)? (?:holds|does not hold|not distinguishable)", page)) == 5
    results = sorted(p.parent.name for p in (folder / "results").glob("*/results.jsonl"))
    assert results == ["02_ood_detection", "03_lpft_alpha_sweep", "04_occ_calibration", "05_evaluation"]


@pytest.mark.slow
def test_the_budget_plans_exactly_the_runs_a_report_trains(smoke_report, monkeypatch):
    """benchmarks/study_budget.py mirrors the notebooks' job lists: its plan for the smoke profile names the very
    run folders the smoke report left in the cache (an LPFT and an FT per seed, OCC variants, DASA and controls)."""
    import runpy
    folder, cache = smoke_report
    monkeypatch.setenv("DARL_CACHE", str(cache))
    budget = runpy.run_path(str(runner.NOTEBOOKS.parent / "benchmarks" / "study_budget.py"))
    spec = runner.with_synthetic_assets(runner.load_profile("smoke")[1], folder / "assets")
    plan = planned_runs(budget["profile_parameters"](spec))
    planned = [run_identity(kind, cfg) for runs in plan.values() for kind, cfg in runs]
    trained = sorted(p.name for p in (cache / "runs").iterdir() if not p.name.startswith(("lp-", ".")))
    assert len(planned) == len(set(planned)) > 10
    assert sorted(planned) == trained
    rows = budget["budget"](budget["profile_parameters"](spec))
    assert [r["runs"] for r in rows] == [len(runs) for runs in plan.values()]
    assert all(r["train_samples"] > 0 for r in rows if r["runs"])


@pytest.mark.slow
def test_workers_beside_the_notebooks_train_the_same_runs(smoke_report, tmp_path, monkeypatch):
    """report --jobs 3 from an empty cache: two workers train runs beside the notebooks, each run once, and every
    result line equals the plain report's. The workers get the kernels' thread count here: on a CPU another count
    moves the floats in their last bits (measured: every macro-F1 the same to 4 decimals, the checksums not)."""
    import importlib.util

    folder, _ = smoke_report
    threads = int(subprocess.check_output([sys.executable, "-c", "import torch; print(torch.get_num_threads())"]))
    monkeypatch.setattr(runner, "threads_each", lambda count, cores=None: threads)
    monkeypatch.setenv("DARL_CACHE", str(tmp_path / "cache"))
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert runner.run_profile("smoke", tmp_path / "reports", progress=False, first=("05",), jobs=3) == 0
    said = printed.getvalue().splitlines()
    summary = re.fullmatch(r"workers \(2\): (\d+) runs trained, 0 failed, beside the notebooks \(\d+ s; .+\)",
                           said[-2])
    assert summary, said
    log = tmp_path / "reports" / "smoke" / "workers" / "runs.jsonl"
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert len(records) == int(summary.group(1)) >= 4 and all(r["ok"] for r in records)
    assert {r["worker"] for r in records} == {1, 2} and len({r["run"] for r in records}) == len(records)
    spec = importlib.util.spec_from_file_location("compare_reports", ROOT / "scripts" / "compare_reports.py")
    compare = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(compare)
    plain, beside = compare.result_lines(folder), compare.result_lines(tmp_path / "reports" / "smoke")
    for _, line in plain + beside:  # a run's record keeps the settings of the job that trained it first: an FT
        line["config"].pop("alphas")  # run's alphas (not in its key) are those of the notebook that asked first
    assert len(plain) > 40 and compare.differences(plain, beside) == []
    raw = [json.loads(line) for f in (tmp_path / "reports" / "smoke" / "results").glob("*/results.jsonl")
           for line in f.read_text().splitlines()]
    assert {line["environment"]["cpu_threads"] for line in raw} == {threads}  # the kernels' and the workers'


@pytest.mark.slow
def test_a_rerun_keeps_unchanged_notebooks_and_trains_nothing(smoke_report, monkeypatch, capfd):
    folder, cache = smoke_report
    monkeypatch.setenv("DARL_CACHE", str(cache))
    pages = {p.name: p.stat().st_mtime_ns for p in folder.glob("*.html") if p.name != "index.html"}
    monkeypatch.setattr(runner, "execute", lambda *a, **k: pytest.fail("an unchanged notebook ran again"))
    capfd.readouterr()
    assert runner.run_profile("smoke", folder.parent, progress=False) == 0
    said = capfd.readouterr().out.splitlines()  # without progress bars, still one line per notebook, then the index
    assert said.pop() == f"report: {folder / 'index.html'}"
    assert [line.split(":")[0] for line in said] == [nb.name for nb in runner.study_notebooks()]
    assert all(re.fullmatch(r"\S+\.ipynb: kept \(\d+ s\)", line) for line in said), said
    assert {p.name: p.stat().st_mtime_ns for p in folder.glob("*.html") if p.name != "index.html"} == pages
    assert (folder / "index.html").read_text().count("(unchanged: kept)") == 5
    monkeypatch.undo()
    monkeypatch.setenv("DARL_CACHE", str(cache))
    # forced: every notebook executes again, but every model and feature comes from the cache
    trained = sorted(p.name for p in (cache / "runs").iterdir())
    finished = {p: json.loads(p.read_text())["finished"] for p in (cache / "runs").glob("*/result.json")}
    capfd.readouterr()
    assert runner.run_profile("smoke", folder.parent, progress=False, force=True) == 0
    said = capfd.readouterr()  # the kernels' own output too: nothing but one line per notebook
    lines = (said.out + said.err).splitlines()
    assert lines.pop() == f"report: {folder / 'index.html'}"
    assert len(lines) == 5 and all(re.fullmatch(r"\S+\.ipynb: finished \(\d+ s\)", line) for line in lines), lines
    assert sorted(p.name for p in (cache / "runs").iterdir()) == trained
    assert {p: json.loads(p.read_text())["finished"] for p in finished} == finished
    assert "(unchanged: kept)" not in (folder / "index.html").read_text()
    assert (folder / "results" / "05_evaluation.previous" / "results.jsonl").exists()  # the last results kept aside


@pytest.mark.slow
def test_the_index_renders_in_headless_chromium(smoke_report, tmp_path):
    """Chromium lays the page out: the main table has a row per model and a real size on the screen."""
    folder, _ = smoke_report
    probe = tmp_path / "probe.html"  # the index plus a script that reports the laid-out table in the title
    probe.write_text((folder / "index.html").read_text().replace("</body>", (
        '<script>const t = document.querySelector("table.main"), r = t.getBoundingClientRect();'
        'const img = document.getElementById("alpha-sweep");'
        'document.title = JSON.stringify({rows: t.rows.length, width: r.width, height: r.height,'
        ' first: t.rows[1].cells[0].textContent, image: img.naturalWidth});</script></body>')))
    chromium = os.environ.get("CHROMIUM", "chromium")
    assert shutil.which(chromium), f"{chromium} not found: make test installs Debian's chromium"
    dom = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--window-size=1400,1000",
                          "--dump-dom", probe.as_uri()], capture_output=True, text=True, timeout=120).stdout
    laid_out = json.loads(html.unescape(re.search(r"<title>(.*?)</title>", dom).group(1)))
    assert laid_out["rows"] == 1 + len(tables.MAIN_MODELS)
    assert laid_out["width"] > 400 and laid_out["height"] > 20 * len(tables.MAIN_MODELS)
    assert laid_out["first"] == "FT" and laid_out["image"] > 300


@pytest.mark.slow
def test_a_failing_notebook_is_reported_and_the_others_still_run(tmp_path, capsys):
    spec = runner.with_synthetic_assets(runner.load_profile("smoke")[1], tmp_path / "assets")
    broken = tmp_path / "broken-model"  # passes the checks before the run (a folder with a config.json) ...
    broken.mkdir()
    (broken / "config.json").write_text("{}")  # ... but no model loads from it
    spec["03_lpft_alpha_sweep"] = {"backbone": str(broken)}
    code = cli(["report", "--profile", profile_file(tmp_path, spec), "--out", str(tmp_path / "reports"),
                "--no-progress"])
    assert code == 1
    said = capsys.readouterr().out
    assert re.search(r"^03_lpft_alpha_sweep.ipynb: failed \(\d+ s\): BackboneError: .*cannot load", said, re.M), said
    folder = tmp_path / "reports" / "mine"
    index = (folder / "index.html").read_text()
    assert '03_lpft_alpha_sweep.ipynb</a></td><td class="failed">failed' in index
    assert "BackboneError" in index and "cannot load" in index
    assert index.count('class="finished">finished') == 4  # 04 and 05 ran after 03 failed
    page = (folder / "03_lpft_alpha_sweep.html").read_text()
    assert "BackboneError" in page  # the error is visible on the notebook's own page
    assert (folder / "results" / "04_occ_calibration" / "results.jsonl").exists()


@pytest.mark.parametrize("extra, message", [
    ({"02_ood_detection": {"dasa_budget": 100000.0}},
     r"02_ood_detection.ipynb, seed 0: dasa_budget: 100000.0 asks for 100000 pairs but the pool holds \d+"),
    ("no OOD queries", r"02_ood_detection.ipynb, seed 0: split: part 'ood_test' is empty under "
                       r"protocol 'query_form'"),
    ({"03_lpft_alpha_sweep": {"backbone": "/no/such/model"}},
     r"03_lpft_alpha_sweep.ipynb: backbone '/no/such/model': model path does not exist"),
])
def test_data_checks_run_before_the_first_notebook(tmp_path, monkeypatch, extra, message):
    """A budget larger than the pool, or sizes that leave a part empty, stop the run before notebook 01 starts
    (not after it ran and notebook 02 trained its FT)."""
    monkeypatch.setattr(runner, "execute", lambda *a, **k: pytest.fail("a notebook ran"))
    spec = runner.with_synthetic_assets(runner.load_profile("smoke")[1], tmp_path / "assets")
    if extra == "no OOD queries":  # the synthetic OOD queries are those with digits
        pairs = pd.read_csv(spec["all"]["data"])
        pairs[~pairs["query"].str.contains(r"\d")].to_csv(tmp_path / "no-ood.csv", index=False)
        spec["all"]["data"] = str(tmp_path / "no-ood.csv")
    else:
        for name, values in extra.items():
            spec[name] = {**spec.get(name, {}), **values}
    with pytest.raises(ConfigError, match=message):
        runner.run_profile(profile_file(tmp_path, spec), tmp_path / "reports", progress=False)
    assert not (tmp_path / "reports").exists()


@pytest.mark.slow
def test_a_report_killed_mid_notebook_shows_it_and_resumes(smoke_report, monkeypatch):
    """SIGKILL to the runner's process group while notebook 03 executes (a job's time limit): the index shows 01
    and 02 finished, 03 running or interrupted with its last finished page, 04 and 05 pending, and 03's last
    complete results kept aside; the next run executes 03 to 05 again, trains nothing, and finishes."""
    import signal
    import sys
    import time
    folder, cache = smoke_report
    monkeypatch.setenv("DARL_CACHE", str(cache))
    runs = sorted(p.name for p in (cache / "runs").iterdir())
    proc = subprocess.Popen([sys.executable, "-m", "darl_utils", "report", "--profile", "smoke", "--out",
                             str(folder.parent), "--force", "--no-progress"], cwd=runner.NOTEBOOKS.parent,
                            env={**os.environ, "DARL_CACHE": str(cache)}, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    running = re.compile(r'03_lpft_alpha_sweep\.ipynb</a></td><td class="running">')
    deadline = time.time() + 600
    while not running.search((folder / "index.html").read_text()) and time.time() < deadline:
        assert proc.poll() is None, "the report ended before notebook 03 started"
        time.sleep(0.5)
    time.sleep(3)  # into the notebook
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    index = (folder / "index.html").read_text()
    for nb, status in (("01_data", "finished"), ("02_ood_detection", "finished"),
                       ("03_lpft_alpha_sweep", "running")):
        assert re.search(rf'{nb}\.ipynb</a></td><td class="{status}">', index), nb
    assert "running or interrupted; the page is from its run of" in index
    assert re.search(r"<td>04_occ_calibration\.ipynb</td><td>pending", index)
    assert (folder / "results" / "03_lpft_alpha_sweep.previous" / "results.jsonl").exists()
    assert json.loads((folder / "ledger.json").read_text())["03_lpft_alpha_sweep.ipynb"]["status"] == "running"

    assert runner.run_profile("smoke", folder.parent, progress=False) == 0
    index = (folder / "index.html").read_text()
    assert 'class="running"' not in index and index.count('class="finished"') == 5
    assert sorted(p.name for p in (cache / "runs").iterdir()) == runs  # every model came from the cache
    lines = (folder / "results" / "03_lpft_alpha_sweep" / "results.jsonl").read_text().splitlines()
    assert {json.loads(x)["method"] for x in lines} >= {"FT", "LP", "LPFT"}


def test_a_profile_reads_relative_paths_from_where_it_runs_and_merges_settings(tmp_path, monkeypatch):
    """Notebooks run in the project root: a relative data path or model folder is made absolute first (it once
    passed the checks here and failed in every notebook); a notebook's `settings` adds to those of `all`."""
    assets = runner.with_synthetic_assets({"all": {"data": "synthetic"}}, tmp_path / "assets")["all"]
    work = tmp_path / "work"
    shutil.copytree(assets["backbone"], work / "models" / "tiny")
    shutil.copy(assets["data"], work / "pairs.csv")
    monkeypatch.chdir(work)
    spec = {"all": {**assets, "data": "pairs.csv", "backbone": "models/tiny", "max_length": 32,
                    "settings": {"batch_size": 8}},
            "04_occ_calibration": {"settings": {"alphas": [0.0, 1.0]}}}
    resolved = {nb.stem: p for nb, p in runner.resolve(spec, runner.study_notebooks(), tmp_path / "out").items()}
    assert resolved["02_ood_detection"]["data"] == str(work / "pairs.csv")
    assert resolved["02_ood_detection"]["backbone"] == str(work / "models" / "tiny")
    assert resolved["04_occ_calibration"]["settings"] == {"batch_size": 8, "alphas": [0.0, 1.0]}
    assert resolved["03_lpft_alpha_sweep"]["settings"] == {"batch_size": 8}
    (work / "minilm").mkdir()  # a built-in name stays a name beside a folder of that name
    assert runner.absolute_paths({"backbone": "minilm"}) == {"backbone": "minilm"}


def test_a_copy_of_the_smoke_profile_is_still_a_smoke_run(tmp_path):
    copy = tmp_path / "mysmoke.yaml"
    shutil.copy(runner.builtin_profiles()["smoke"], copy)
    name, spec = runner.load_profile(str(copy))
    spec = runner.with_synthetic_assets(spec, tmp_path / "assets")
    assert name == "mysmoke" and spec["all"]["data"] == str(tmp_path / "assets" / "pairs.csv")
    assert spec["all"]["backbone"] == str(tmp_path / "assets" / "tiny-bert") and spec["all"]["dataset"] == "csv"


def test_an_output_folder_that_is_a_file_is_refused_up_front(tmp_path, capsys):
    (tmp_path / "taken").write_text("")
    assert cli(["report", "--profile", "smoke", "--out", str(tmp_path / "taken"), "--no-progress"]) == 2
    assert f"error: out: {tmp_path / 'taken'} is a file, not a folder" in capsys.readouterr().err


def test_a_failed_page_quotes_the_failed_cell_instead_of_its_hidden_prompt(tmp_path):
    import nbformat
    from papermill.exceptions import PapermillExecutionError
    from papermill.execute import raise_for_execution_errors
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("x = 1", execution_count=1),
                                         nbformat.v4.new_code_cell("fit(x, lr='`fast`')", execution_count=2)])
    said = "lr: 'fast' <is> no *number*\n\n    detail"  # markdown would make a paragraph, a code block, italics
    nb.cells[1].outputs = [nbformat.v4.new_output("error", ename="ValueError", evalue=said,
                                                  traceback=["ValueError: lr: 'fast' <is> no number"])]
    executed = tmp_path / "failed.ipynb"
    with pytest.raises(PapermillExecutionError):
        raise_for_execution_errors(nb, str(executed))  # papermill's own notes, as a report's failed run has them
    assert "In [2]" in executed.read_text()
    runner.to_html(executed, tmp_path / "failed.html")
    page = (tmp_path / "failed.html").read_text()
    assert "In [2]" not in page
    top = page[page.index("This notebook stopped at"):page.index("It stopped here")]
    assert "ValueError: lr: 'fast' &lt;is&gt; no *number*</div>" in top  # its first line, as written
    assert "detail" not in top and "<em>" not in top
    assert "It stopped here, in this cell" in page
    assert page.index("It stopped here") < page.index(">fit<") < page.rindex("no number")  # the code, then its error
