"""The helpers every multi-process path goes through (darl_utils/distributed.py): no-ops for one process, and
with two real processes (gloo): process 0's value everywhere, every value gathered, process 0 first."""
import json
import os
import socket
import time
from pathlib import Path

import pytest
import torch.multiprocessing as mp

from darl_utils import distributed


def test_one_process_needs_no_group(monkeypatch, tmp_path):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    distributed.join(use_cuda=False)  # nothing to join
    assert not distributed.joined()
    assert (distributed.rank(), distributed.world_size(), distributed.is_main_process()) == (0, 1, True)
    assert distributed.broadcast({"a": 1}) == {"a": 1}
    assert distributed.gather(3) == [3]
    with distributed.main_process_first():
        (tmp_path / "ran").write_text("yes")
    distributed.wait_for_everyone()
    distributed.leave()
    assert (tmp_path / "ran").read_text() == "yes"


def test_rank_comes_from_the_launcher(monkeypatch):
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert (distributed.rank(), distributed.world_size(), distributed.local_rank()) == (3, 4, 1)
    assert not distributed.is_main_process()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, port: int, folder: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    distributed.join(use_cuda=False)
    shared = Path(folder) / "written-by-0.txt"
    seen = {"rank": distributed.rank(), "joined": distributed.joined(),
            "broadcast": distributed.broadcast(f"from {rank}"), "gather": distributed.gather(rank * 10)}
    with distributed.main_process_first():
        if distributed.is_main_process():
            shared.write_text("cache entry")  # process 1 must find it inside its own turn
        seen["found"] = shared.exists()
    distributed.wait_for_everyone()
    distributed.leave()
    seen["left"] = not distributed.joined()
    (Path(folder) / f"seen-{rank}.json").write_text(json.dumps(seen))


def test_two_processes_talk(tmp_path):
    context = mp.start_processes(_worker, args=(_free_port(), str(tmp_path)), nprocs=2, join=False,
                                 start_method="spawn")
    deadline = time.monotonic() + 300  # a helper that deadlocks fails the test instead of hanging CI
    while not context.join(timeout=5):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail("the two processes did not finish in 300 s: a collective waits forever")
    seen = [json.loads((tmp_path / f"seen-{r}.json").read_text()) for r in (0, 1)]
    assert [s["rank"] for s in seen] == [0, 1]
    assert all(s["joined"] and s["left"] for s in seen)
    assert [s["broadcast"] for s in seen] == ["from 0", "from 0"]
    assert [s["gather"] for s in seen] == [[0, 10], [0, 10]]
    assert [s["found"] for s in seen] == [True, True]  # process 1 ran its block only after process 0's
