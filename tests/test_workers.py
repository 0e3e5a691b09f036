"""Workers that train a report's runs beside its notebooks (`report --jobs`): their order, their devices and
threads, the lock test that lets them pass a run by, a run and a failure sent through a real worker, and a worker
that ends with its parent."""
import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, replace

import pytest

from darl_utils import pipeline, workers
from darl_utils.cache import entry_busy, entry_lock
from darl_utils.config import RunConfig
from darl_utils.plan import run_path
from darl_utils.workers import Job, Workers, choose, plan_jobs, ready, threads_each, worker_devices

from test_training import ROOT, tiny_config


def test_a_worker_takes_the_current_notebooks_runs_from_the_back():
    """The notebook walks its runs from the front: a worker takes the last ready run of the first notebook with
    any left, so they meet in the middle; a run that needs its seed's FT waits while anything else is left."""
    base = RunConfig()
    plan = {"05_evaluation": [("ft", base), ("lpft", base), ("ft", replace(base, augment="dasa")),
                              ("ft", replace(base, augment="random"))],
            "02_ood_detection": [("ft", replace(base, augment="oracle", seed=1)),
                                 ("ft", replace(base, augment="length_matched", seed=1))]}
    jobs = plan_jobs(plan)
    assert [j.label for j in jobs] == ["FT seed 0", "LPFT seed 0", "FT+DASA seed 0", "FT+random seed 0",
                                       "FT+oracle seed 1", "FT+length-matched seed 1"]
    every = lambda job: True  # noqa: E731
    assert choose(jobs, every).label == "FT+random seed 0"
    waiting = lambda job: job.config.augment not in ("dasa", "length_matched")  # noqa: E731 (no FT finished yet)
    assert choose(jobs[2:3] + jobs[4:], waiting).label == "FT+oracle seed 1"  # 05's one left waits: 02's instead
    assert choose([jobs[2], jobs[5]], waiting).label == "FT+DASA seed 0"  # nothing ready: the first notebook's
    assert choose([], every) is None


def test_a_dasa_run_is_ready_once_its_seeds_ft_run_has_finished(pairs_csv, tiny_encoder, tmp_path):
    cfg = tiny_config(pairs_csv, tiny_encoder, tmp_path / "out", epochs=1)
    dasa = Job("ft", replace(cfg, augment="dasa", occ_lambda=0.5), "05")
    oracle = Job("ft", replace(cfg, augment="oracle"), "02")
    assert not ready(dasa) and ready(oracle)
    pipeline.run_ft(cfg)  # the source: plain FT, OCC off, on train as split
    assert ready(dasa)


def test_workers_spread_over_the_gpus_from_the_second_on():
    assert worker_devices(2, []) == [None, None]  # a CPU
    assert worker_devices(3, ["0"]) == ["0", "0", "0"]  # one GPU: all share it with the notebooks
    assert worker_devices(5, ["0", "1", "2", "3"]) == ["1", "2", "3", "0", "1"]
    assert worker_devices(2, ["4", "7"]) == ["7", "4"]  # as CUDA_VISIBLE_DEVICES names them


def test_the_cores_are_shared_by_the_workers_and_the_notebooks():
    assert threads_each(2, cores=16) == 5
    assert threads_each(1, cores=2) == 1
    assert threads_each(8, cores=4) == 1


def test_a_run_being_trained_elsewhere_is_busy(tmp_path):
    folder = tmp_path / "runs" / "ft-0123"
    assert not entry_busy(folder)  # never locked
    with entry_lock(folder):
        assert entry_busy(folder)
    assert not entry_busy(folder)  # released, and the test itself leaves no lock behind
    with entry_lock(folder):
        pass


def test_a_config_crosses_to_a_worker_as_json_unchanged():
    cfg = RunConfig(csv_columns={"group": "dept"}, held_out=["tools"], alphas=[0.0, 0.6, 1.0], occ_lambda=0.5)
    assert RunConfig.from_dict(json.loads(json.dumps(asdict(cfg)))) == cfg


def test_a_worker_trains_a_run_for_the_notebook_and_reports_a_failure(pairs_csv, tiny_encoder, tmp_path):
    """Two jobs through one real worker process: a run, then a config whose backbone does not exist. The run
    lands in the cache, where the notebook's own call finds it; the failure is one line naming the culprit, and
    the worker goes on."""
    cfg = tiny_config(pairs_csv, tiny_encoder, tmp_path / "out", epochs=1)
    missing = replace(cfg, backbone=str(tmp_path / "no-such-model"), seed=1)
    pool = Workers([Job("ft", missing, "05_evaluation"), Job("ft", cfg, "05_evaluation")], 1, tmp_path / "workers",
                   gpus=[], threads=1, say=lambda line: None)
    done = pool.finish(drain=True)
    assert (done["trained"], done["failed"], done["passed_by"]) == (1, 1, 0)
    records = [json.loads(line) for line in (tmp_path / "workers" / "runs.jsonl").read_text().splitlines()]
    failed, trained_line = sorted(records, key=lambda r: r["ok"])  # the worker took the later job first
    assert (failed["ok"], trained_line["ok"]) == (False, True)
    assert "no-such-model" in failed["error"] and "\n" not in failed["error"]
    assert trained_line["run"] == run_path("ft", cfg).name and trained_line["summary"].startswith("FT ")
    trained = json.loads((run_path("ft", cfg) / "result.json").read_text())
    assert pipeline.run_ft(cfg)["finished"] == trained["finished"]  # the notebook's call: from the cache
    assert "Traceback" in (tmp_path / "workers" / "worker-1.log").read_text()  # the whole error, in the log


def test_a_finished_or_busy_run_is_passed_by(pairs_csv, tiny_encoder, tmp_path):
    cfg = tiny_config(pairs_csv, tiny_encoder, tmp_path / "out", epochs=1)
    pipeline.run_ft(cfg)
    busy = replace(cfg, seed=3)
    with entry_lock(run_path("ft", busy)):
        pool = Workers([Job("ft", cfg, "03"), Job("ft", busy, "03")], 1, tmp_path / "workers", gpus=[], threads=1,
                       say=lambda line: None)
        done = pool.finish(drain=True)
    assert (done["trained"], done["failed"], done["passed_by"]) == (0, 0, 2)
    assert not (tmp_path / "workers" / "runs.jsonl").exists()


def test_a_worker_ends_with_the_report_that_started_it(tmp_path):
    """The report's process killed by a time limit: its worker, busy or idle, is ended by the kernel."""
    worker = ("import sys, time; from darl_utils.workers import die_with_parent; "
              "die_with_parent(int(sys.argv[1])); print('ready', flush=True); time.sleep(120)")
    parent = ("import subprocess, sys, os; "
              f"p = subprocess.Popen([sys.executable, '-c', {worker!r}, str(os.getpid())], stdout=subprocess.PIPE, "
              "stderr=subprocess.DEVNULL, text=True); "
              "p.stdout.readline(); print(p.pid, flush=True); os._exit(0)")
    out = subprocess.run([sys.executable, "-c", parent], capture_output=True, text=True, timeout=120, cwd=ROOT)
    worker = int(out.stdout.split()[-1])
    deadline = time.time() + 20
    while time.time() < deadline and _alive(worker):
        time.sleep(0.2)
    assert not _alive(worker), "the worker outlived its parent"


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/status") as f:
            return "State:\tZ" not in f.read()  # a zombie has ended; only its entry waits to be reaped
    except FileNotFoundError:
        return False


@pytest.mark.parametrize("jobs", [0, 65, True])
def test_jobs_out_of_range_is_one_clear_error(jobs, tmp_path):
    from darl_utils.config import ConfigError
    from darl_utils.runner import check_jobs
    with pytest.raises(ConfigError, match=r"jobs: .* from 1 \(the notebooks alone\) to 64"):
        check_jobs(jobs)


def test_the_command_line_refuses_jobs_0_before_anything_runs(tmp_path, capsys):
    from darl_utils.__main__ import main
    assert main(["report", "--profile", "smoke", "--out", str(tmp_path), "--jobs", "0"]) == 2
    assert "jobs: 0 must be a whole number" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_workers_take_the_device_and_threads_the_parent_gives_them(monkeypatch, tmp_path):
    seen = {}
    monkeypatch.setattr(subprocess, "Popen", lambda command, **kw: seen.update(command=command, **kw)
                        or type("P", (), {"stdin": None})())
    monkeypatch.setenv("LOCAL_RANK", "3")
    pool = Workers.__new__(Workers)  # only its _start: no process is started
    pool.folder = tmp_path
    process = pool._start(0, "2", threads=3)
    process.replies.close()
    reply_end = int(seen["command"][-1])
    assert seen["command"][-6:-1] == ["--threads", "3", "--parent", str(os.getpid()), "--reply-fd"]
    assert seen["pass_fds"] == (reply_end,) and seen["cwd"] == ROOT  # the notebooks' folder, where paths resolve
    assert seen["env"]["CUDA_VISIBLE_DEVICES"] == "2" and seen["env"]["OMP_NUM_THREADS"] == "3"
    assert "LOCAL_RANK" not in seen["env"]
    assert workers.MAX_JOBS == 64


def test_the_plans_runs_are_where_the_runs_themselves_will_be(homedepot_path, monkeypatch):
    """The quick profile leaves `data` to DARL_DATA, which a run resolves when it validates its config: the plan's
    configs must name the same cache folders, or a worker would never see a run finished, busy or ready."""
    from pathlib import Path

    from darl_utils import runner
    from darl_utils.plan import planned_runs
    monkeypatch.setenv("DARL_DATA", str(homedepot_path))
    spec = runner.load_profile("quick")[1]
    assert "data" not in spec.get("all", {})
    params = runner.notebook_parameters(runner.resolve(spec, runner.study_notebooks(), Path("reports")))
    jobs = plan_jobs(planned_runs({"05_evaluation": params["05_evaluation"]}))
    assert len(jobs) == 12
    for job in jobs:
        assert job.config.data == str(homedepot_path.resolve())
        assert run_path(job.kind, job.config) == run_path(job.kind, replace(job.config).validate())


def test_the_kernels_take_the_threads_of_their_share_and_the_environment_is_restored(monkeypatch):
    from darl_utils.workers import kernel_threads
    monkeypatch.setenv("MKL_NUM_THREADS", "7")
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    with kernel_threads(2):
        assert (os.environ["OMP_NUM_THREADS"], os.environ["MKL_NUM_THREADS"]) == ("2", "2")
    assert "OMP_NUM_THREADS" not in os.environ and os.environ["MKL_NUM_THREADS"] == "7"
    with kernel_threads(None):  # no workers: the kernels as they were
        assert "OMP_NUM_THREADS" not in os.environ


def test_a_run_still_training_when_the_notebooks_are_done_is_cut_short(pairs_csv, tiny_encoder, tmp_path):
    """finish() ends a worker in the middle of a run (here one that waits for its seed's FT, whose lock the test
    holds) within seconds, and writes no failure for it: every notebook has run, so no one wants that run."""
    cfg = tiny_config(pairs_csv, tiny_encoder, tmp_path / "out", epochs=1)
    dasa = Job("ft", replace(cfg, augment="dasa"), "05_evaluation")
    folder = tmp_path / "workers"
    with entry_lock(run_path("ft", cfg)):
        pool = Workers([dasa], 1, folder, gpus=[], threads=1, say=lambda line: None)
        deadline = time.time() + 60
        while "waiting for another process" not in (folder / "worker-1.log").read_text() and time.time() < deadline:
            time.sleep(0.2)
        assert "waiting for another process" in (folder / "worker-1.log").read_text()
        started = time.time()
        done = pool.finish()
    assert time.time() - started < 15 and pool.processes[0].poll() is not None
    assert (done["trained"], done["failed"]) == (0, 0) and not (folder / "runs.jsonl").exists()
    assert not (run_path("ft", dasa.config) / "result.json").exists()


def test_a_notebook_that_has_run_takes_its_runs_out_of_the_queue():
    pool = Workers.__new__(Workers)  # only its queue
    pool.lock, pool.pending = __import__("threading").Lock(), plan_jobs(
        {"02_ood_detection": [("ft", RunConfig())], "05_evaluation": [("ft", RunConfig(seed=1))]})
    pool.drop("02_ood_detection")
    assert [job.notebook for job in pool.pending] == ["05_evaluation"]


def test_no_workers_when_reuse_is_off(tmp_path, capsys):
    """With reuse off a notebook trains every run again: workers would only double the work."""
    from darl_utils import runner
    spec = runner.with_synthetic_assets(runner.load_profile("smoke")[1], tmp_path / "assets")
    spec["all"]["settings"] = {**spec["all"]["settings"], "reuse": False}
    resolved = runner.resolve(spec, runner.study_notebooks(), tmp_path / "out")
    assert runner.start_workers(resolved, 3, tmp_path / "out", progress=False) is None
    assert "workers: not started, since reuse is off" in capsys.readouterr().out
    assert not (tmp_path / "out" / "workers").exists()
