"""Several processes: who this one is, and the few ways the processes of one job talk.

`torchrun` and `accelerate launch` start N processes and set RANK / WORLD_SIZE / LOCAL_RANK. Process 0 (the main
process) writes every cache file and result line; the others compute with it and read what it wrote. Each
helper is a no-op for one process, so the same code runs alone, in a notebook, or under torchrun:

    torchrun --nproc_per_node 4 -m darl_utils lpft --data train.csv.gz   # 4 GPUs of one node

Every process must reach the same collectives in the same order: a branch that depends on the disk (a cache hit)
is decided once on process 0 and broadcast (`if broadcast(path.exists()): ...`).
"""
from __future__ import annotations

import contextlib
import os

import torch
import torch.distributed as dist

LAUNCHER_VARIABLES = ("RANK", "LOCAL_RANK", "WORLD_SIZE")  # what torchrun sets in each process it starts


def alone(env: dict) -> dict:
    """An environment for a process of its own, never a member of this process's torchrun group."""
    return {k: v for k, v in env.items() if k not in LAUNCHER_VARIABLES}


def world_size() -> int:
    """How many processes the launcher started (1 without a launcher); readable before the group is joined."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def local_rank() -> int:
    """This process's GPU on its node."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def device_of(device_setting: str) -> str:
    """The device a run with this `device` setting (auto, cpu, cuda) trains on in this process: cuda:LOCAL_RANK
    where torch sees a GPU and the setting allows it, else cpu. setup_runtime uses it; a check made before any run
    (the compiler's) names the same device."""
    if device_setting == "cpu" or not torch.cuda.is_available():
        return "cpu"
    return f"cuda:{local_rank()}"


def is_main_process() -> bool:
    return rank() == 0


def joined() -> bool:
    """True once this process is in a process group (torchrun, after `join`)."""
    return dist.is_available() and dist.is_initialized()


def join(use_cuda: bool) -> None:
    """Join the launcher's process group (NCCL between GPUs, gloo between CPUs); nothing for one process."""
    if world_size() > 1 and not joined():
        dist.init_process_group("nccl" if use_cuda else "gloo")


def leave() -> None:
    """Leave the process group, once, at the end of a command."""
    if joined():
        dist.destroy_process_group()


def wait_for_everyone() -> None:
    """A barrier: no process goes on until every process has come here."""
    if joined():
        dist.barrier()


@contextlib.contextmanager
def main_process_first():
    """Process 0 runs the block first (it writes a cache file), then the others run it (they read the file)."""
    if not is_main_process():
        wait_for_everyone()
    yield
    if is_main_process():
        wait_for_everyone()


def broadcast(obj):
    """Process 0's `obj` on every process (so they cannot take different branches)."""
    if not joined():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather(obj) -> list:
    """`obj` from every process (a one-item list when not distributed)."""
    if not joined():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out
