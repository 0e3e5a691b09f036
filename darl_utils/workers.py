"""Worker processes that train a report's runs beside its notebooks: `darl-study report --jobs K`.

On one GPU our training step is bound by the host (docs/measurements.md: some 800 operations a step, each a few
microseconds of Python and launch, against a few milliseconds of GPU work), so one process leaves the GPU idle
most of the time. With --jobs K, K - 1 workers train the runs of the report's plan (plan.py) while the notebooks
run as before: a notebook takes a run a worker finished from the cache, waits at the run's lock for one a worker
is training, and trains the rest itself. The cache's locks keep any run from being trained twice, and a worker
runs the very function and config the notebook would (pipeline.run_ft / run_lpft), so the runs are the same.

A notebook walks its runs from the front, so a worker takes the current notebook's runs from the back: the two meet
in the middle and the notebook seldom waits, while the notebook named first (`--first 05`) is still the first to
finish. A run whose DASA selection needs its seed's FT run waits for that run to finish, unless nothing else is
left; a run that is finished, or that another process is training, is passed by. Each worker is one process,
`python -m darl_utils.workers`: one JSON job a line on stdin, one JSON reply a line on its own stdout; whatever the
runs print goes to OUT/workers/worker-N.log, and every job it ends is a line of OUT/workers/runs.jsonl. Several
GPUs: the workers are spread over them, the notebooks keep GPU 0's share. A worker ends with the report's process,
however that ends (a time limit's kill included, on Linux).
"""
from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import signal
import subprocess
import sys
import threading
import time
import traceback
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from . import distributed
from .cache import entry_busy
from .config import RunConfig, method_name
from .dasa import source_config
from .data import project_root
from .pipeline import run_ft, run_lpft, summary_line
from .plan import run_path

MAX_JOBS = 64  # processes training at once; more than a node's GPUs and cores can feed
PR_SET_PDEATHSIG = 1  # prctl option (linux/prctl.h): a signal for this process when its parent ends


@dataclass
class Job:
    """One run of the plan: what a notebook would call (run_ft or run_lpft) with which config."""
    kind: str  # ft | lpft
    config: RunConfig
    notebook: str

    @property
    def label(self) -> str:
        return f"{method_name('FT' if self.kind == 'ft' else 'LPFT', self.config)} seed {self.config.seed}"


def plan_jobs(plan: dict[str, list[tuple[str, RunConfig]]]) -> list[Job]:
    """The plan's runs (plan.planned_runs), notebook by notebook in the report's order."""
    return [Job(kind, cfg, notebook) for notebook, runs in plan.items() for kind, cfg in runs]


def choose(jobs: list[Job], ready) -> Job | None:
    """The job a worker takes next: the last ready one of the first notebook that has any left (the notebook walks
    its list from the front), else of the next notebook that has one, else the first notebook's last job."""
    groups: dict[str, list[Job]] = {}
    for job in jobs:
        groups.setdefault(job.notebook, []).append(job)
    for group in groups.values():
        for job in reversed(group):
            if ready(job):
                return job
    return next(iter(groups.values()))[-1] if groups else None


def finished(kind: str, cfg: RunConfig) -> bool:
    """The run's record is in the cache (written last, so the run is whole)."""
    return (run_path(kind, cfg) / "result.json").exists()


def ready(job: Job) -> bool:
    """Nothing to wait for: DASA's selection (and the length-matched control, which copies its token counts) needs
    the seed's FT run, which the job would otherwise train, or wait for, itself."""
    return job.config.augment not in ("dasa", "length_matched") or finished("ft", source_config(job.config))


def worker_devices(count: int, gpus: list[str]) -> list[str | None]:
    """Each worker's CUDA_VISIBLE_DEVICES: spread over the GPUs from the second on (the notebooks run on the first),
    all on the one GPU there is, None on a CPU."""
    return [gpus[(i + 1) % len(gpus)] if gpus else None for i in range(count)]


def visible_gpus(device_setting: str) -> list[str]:
    """The GPUs this process may use, as CUDA_VISIBLE_DEVICES names them (none for device cpu)."""
    if device_setting == "cpu" or not torch.cuda.is_available():
        return []
    named = [d.strip() for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    return named or [str(i) for i in range(torch.cuda.device_count())]


def threads_each(workers: int, cores: int | None = None) -> int:
    """CPU threads per process, the workers' and the notebooks' kernel's alike: more threads than cores make
    torch's threads spin while they wait for each other (measured on 2 cores: docs/measurements.md)."""
    return max(1, (cores or usable_cores()) // (workers + 1))


def usable_cores() -> int:
    """The cores this process may run on (a job scheduler's or a container's share), not the machine's."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def thread_limits(threads: int) -> dict[str, str]:
    """The environment that sets a new process's CPU threads (torch reads it when it starts)."""
    return {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}


@contextlib.contextmanager
def kernel_threads(threads: int | None):
    """Notebook kernels started inside take `threads` CPU threads (None: as they would); restored after."""
    saved = {name: os.environ.get(name) for name in thread_limits(1)}
    if threads:
        os.environ.update(thread_limits(threads))
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


class Workers:
    """`count` worker processes and a thread each in this process that hands its worker the next job."""

    def __init__(self, jobs: list[Job], count: int, folder: Path, gpus: list[str], threads: int, say=print):
        self.folder, self.say, self.cpu_threads = Path(folder), say, threads
        self.folder.mkdir(parents=True, exist_ok=True)
        self.pending, self.records, self.skipped = list(jobs), [], 0
        self.lock, self.stopping, self.started = threading.Lock(), False, time.time()
        self.processes = []
        try:  # started from this thread: Linux ends a worker when the thread that started it ends (PDEATHSIG)
            for i, device in enumerate(worker_devices(count, gpus)):
                self.processes.append(self._start(i, device, threads))
        except BaseException:
            self._end_processes()
            raise
        self.feeders = [threading.Thread(target=self._feed, args=(i,), daemon=True) for i in range(count)]
        for feeder in self.feeders:
            feeder.start()

    def _start(self, i: int, device: str | None, threads: int) -> subprocess.Popen:
        env = distributed.alone({**os.environ, **thread_limits(threads)})
        if device is not None:
            env["CUDA_VISIBLE_DEVICES"] = device
        # replies come on a pipe of their own: whatever the worker prints (imports included) goes to its log
        replies, reply_end = os.pipe()
        command = [sys.executable, "-m", "darl_utils.workers", "--threads", str(threads), "--parent", str(os.getpid()),
                   "--reply-fd", str(reply_end)]
        with open(self.folder / f"worker-{i + 1}.log", "w") as log:
            process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=log, stderr=subprocess.STDOUT, env=env,
                                       text=True, bufsize=1, pass_fds=(reply_end,), cwd=project_root())
        os.close(reply_end)  # the worker holds it: its end gives this side end-of-file
        process.replies, process.device = os.fdopen(replies), device
        return process

    def _next(self) -> Job | None:
        """The job `choose` picks among those no one has finished or is training; None when there is none left,
        or when stopping."""
        with self.lock:
            if self.stopping:
                return None
            gone = [job for job in self.pending
                    if finished(job.kind, job.config) or entry_busy(run_path(job.kind, job.config))]
            self.skipped += len(gone)
            self.pending = [job for job in self.pending if job not in gone]
            job = choose(self.pending, ready)
            if job is not None:
                self.pending.remove(job)
            return job

    def drop(self, notebook: str) -> None:
        """A notebook has run: the runs it asked for and did not get are no longer wanted (it failed before)."""
        with self.lock:
            self.pending = [job for job in self.pending if job.notebook != notebook]

    def _feed(self, i: int) -> None:
        process = self.processes[i]
        while (job := self._next()) is not None:
            started = time.time()
            reply = self._ask(process, job)
            if reply is None and self.stopping:
                return  # ended on purpose: the run was cut short, not failed
            record = {"worker": i + 1, "device": process.device, "notebook": job.notebook, "method": job.label,
                      "run": run_path(job.kind, job.config).name,
                      "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(started)),
                      "seconds": round(time.time() - started, 1), **(reply or self._died(i))}
            with self.lock:
                self.records.append(record)
                with open(self.folder / "runs.jsonl", "a") as f:
                    f.write(json.dumps(record) + "\n")
            self.say(f"    worker {i + 1}: " + (record.get("summary") or f"{job.label} failed: {record['error']}"))
            if reply is None:
                return
        process.stdin.close()  # the worker ends after its current job

    def _ask(self, process: subprocess.Popen, job: Job) -> dict | None:
        """Send one job and wait for its reply; None when the worker has ended."""
        config = asdict(replace(job.config, out_dir=str(self.folder / "results"), progress=False))
        try:
            process.stdin.write(json.dumps({"kind": job.kind, "config": config}) + "\n")
            process.stdin.flush()
            line = process.replies.readline()
        except (BrokenPipeError, ValueError):
            return None
        try:
            return json.loads(line) if line else None
        except json.JSONDecodeError:
            return {"ok": False, "error": f"an unreadable reply: {line[:200]!r}"}

    def _died(self, i: int) -> dict:
        code = self.processes[i].wait()
        return {"ok": False, "error": f"worker {i + 1} ended with exit status {code} (see workers/worker-{i + 1}.log)"}

    def finish(self, drain: bool = False) -> dict:
        """Hand out no more jobs (drain: once every job was handed out) and end the workers; a run still training
        is cut short, since every notebook has run. A summary of what they did."""
        if drain:
            for feeder in self.feeders:
                feeder.join()
        self.terminate()
        failed = [r for r in self.records if not r["ok"]]
        return {"workers": len(self.processes), "trained": len(self.records) - len(failed), "failed": len(failed),
                "passed_by": self.skipped, "seconds": round(time.time() - self.started, 1)}

    def terminate(self) -> None:
        """End every worker now: a run cut short leaves nothing in the cache (its files are written whole)."""
        with self.lock:
            self.stopping = True
        self._end_processes()
        for feeder in self.feeders:
            feeder.join()

    def _end_processes(self, grace: float = 10.0) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.terminate()
        for process in self.processes:
            try:
                process.wait(timeout=grace)
            except subprocess.TimeoutExpired:  # stuck in a call that SIGTERM does not interrupt
                process.kill()
                process.wait()


def die_with_parent(parent: int) -> None:
    """Linux: the kernel sends this worker SIGTERM when the report's process ends, however it ends."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)  # -1 where refused
    except (OSError, AttributeError):
        pass  # not Linux: the worker ends when its stdin closes, after its current run
    if os.getppid() != parent:  # the parent ended before the line above took effect
        sys.exit(0)


def serve(jobs, replies, threads: int) -> None:
    """The worker's loop: one run per job line, one reply line per run, until its input ends."""
    torch.set_num_threads(threads)
    for line in jobs:
        job = json.loads(line)
        started = time.perf_counter()
        try:
            cfg = RunConfig.from_dict(job["config"])
            result = (run_ft if job["kind"] == "ft" else run_lpft)(cfg)
            reply = {"ok": True, "summary": summary_line(result)}
        except Exception as e:  # noqa: BLE001 (the notebook that needs the run will raise it again, on its page)
            traceback.print_exc()
            reply = {"ok": False, "error": (f"{type(e).__name__}: {e}".splitlines() or ["?"])[0]}
        reply["run_seconds"] = round(time.perf_counter() - started, 1)
        replies.write(json.dumps(reply) + "\n")
        replies.flush()
        print(f"{time.strftime('%H:%M:%S')} {job['kind']} done: {reply}", flush=True)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="a report's worker: trains the runs sent on stdin")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--parent", type=int, default=0, help="the report's process id")
    parser.add_argument("--reply-fd", type=int, default=1, help="where the replies go (a pipe to the report)")
    args = parser.parse_args(argv)
    replies = os.fdopen(args.reply_fd, "w")
    if args.parent:
        die_with_parent(args.parent)
    serve(sys.stdin, replies, args.threads)


if __name__ == "__main__":
    main()
