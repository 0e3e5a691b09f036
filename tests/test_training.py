import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file
from safetensors.torch import load_model

from darl_utils.__main__ import main as cli
from darl_utils.config import ConfigError, RunConfig
from darl_utils.metrics import softmax
from darl_utils.modeling import RelevanceModel, encode_pairs, load_backbone
from darl_utils.pipeline import LPFT_ONLY, encode, prepare_split, run_folder, run_ft, sized_parts
from darl_utils.results import cached_path
from darl_utils.training import (
    BestKeeper,
    Encoded,
    Runtime,
    TrainSettings,
    head_logits,
    predict_logits,
    train_model,
)

ROOT = Path(__file__).resolve().parents[1]


def tiny_config(data: Path, backbone: str, out: Path, **kw) -> RunConfig:
    settings = dict(dataset="csv", data=str(data), csv_columns={"group": "group"}, protocol="query_form",
                    backbone=backbone, max_length=32, epochs=6, batch_size=16, lr=2e-3, warmup_ratio=0.0,
                    patience=6, progress=False, out_dir=str(out), device="cpu")
    settings.update(kw)
    return RunConfig(**settings)


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DARL_CACHE", str(tmp_path / "cache"))


def test_a_cpu_run_on_a_machine_with_a_gpu_says_cpu(pairs_csv, tiny_encoder, tmp_path, monkeypatch):
    """The record names the device the run used, not the machine's GPU (seen on an H100 node: a device='cpu'
    run was recorded as the GPU)."""
    from darl_utils.cache import environment
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=0: "Pretend GPU")
    assert environment()["device"] == environment("cuda:0")["device"] == "Pretend GPU"
    assert environment("cpu")["device"].startswith("CPU (")
    result = run_ft(tiny_config(pairs_csv, tiny_encoder, tmp_path / "out", epochs=1))
    assert result["environment"]["device"].startswith("CPU ("), result["environment"]


@pytest.mark.parametrize("which", ["tiny_encoder", "tiny_decoder"])
def test_end_to_end_ft(which, request, pairs_csv, tmp_path):
    cfg = tiny_config(pairs_csv, request.getfixturevalue(which), tmp_path / "out")
    result = run_ft(cfg)
    assert result["world_size"] == 1 and result["config"]["backbone"] == cfg.backbone
    assert sum(result["sizes"].values()) > 300  # a few hundred pairs
    for part in ("id_test", "ood_test"):
        m = result[part]
        assert set(m) == {"n", "macro_f1", "f1_per_degree", "accuracy", "confusion", "confidence", "ranking"}
        assert 0 < m["ranking"]["ndcg@10"] <= 1 and m["ranking"]["queries"] > 0
        assert {"entropy", "ece", "nll", "brier", "per_degree", "reliability"} <= set(m["confidence"])
        assert np.array(m["confusion"]).sum() == m["n"] == result["sizes"][part]
    # the colour word decides the degree: a working loop learns it, a broken one stays near chance (1/3)
    assert result["id_test"]["macro_f1"] > 0.6, result["fit"]
    history = result["fit"]["history"]
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    # where the training time went: the steps, and within them the wait for batches
    assert 0 <= result["fit"]["data_seconds"] < result["fit"]["train_seconds"] < result["seconds"] + 0.1
    # results on disk: one JSON per run, one line per run
    lines = (tmp_path / "out" / "results.jsonl").read_text().splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["id_test"] == result["id_test"]
    [saved] = (tmp_path / "out").glob("ft-query_form-seed0-*.json")
    assert json.loads(saved.read_text())["ood_test"] == result["ood_test"]
    # the safetensors checkpoint gives back the same predictions
    backbone, tokenizer, kind, _ = load_backbone(cfg.backbone)
    model = RelevanceModel(backbone, kind)
    load_model(model, str(cached_path(result["checkpoint"]) / "model.safetensors"))
    parts = sized_parts(prepare_split(cfg), cfg)
    data = encode(parts["id_test"], tokenizer, kind, cfg.max_length)
    pred = predict_logits(model, data, tokenizer, 64, Runtime()).argmax(1)
    assert (pred == np.array(data.labels)).mean() == pytest.approx(result["id_test"]["accuracy"])


def test_same_seed_same_result(pairs_csv, tiny_encoder, tmp_path):
    cfg = tiny_config(pairs_csv, tiny_encoder, tmp_path / "out", epochs=1)
    a, b = run_ft(cfg), run_ft(replace(cfg, reuse=False))  # reuse=False: train again, not read the cache
    assert a["id_test"] == b["id_test"] and a["param_checksums"] == b["param_checksums"]
    assert b["finished"] >= a["finished"] and Path(b["checkpoint"]) == Path(a["checkpoint"])


def test_ft_keeps_the_id_val_logits_of_the_weights_it_keeps(pairs_csv, tiny_encoder, tmp_path):
    """The evaluation reuses training's id_val logits: they must be those of the kept (best) weights."""
    cfg = tiny_config(pairs_csv, tiny_encoder, tmp_path / "out", epochs=5, patience=0, lr=5e-3)
    result = run_ft(cfg)
    scores = [h["id_val_macro_f1"] for h in result["fit"]["history"]]
    assert scores.index(max(scores)) < len(scores) - 1  # the kept epoch is not the last: the test can tell them apart
    backbone, tokenizer, kind, _ = load_backbone(cfg.backbone)
    model = RelevanceModel(backbone, kind)
    load_model(model, str(cached_path(result["checkpoint"]) / "model.safetensors"))
    data = encode(sized_parts(prepare_split(cfg), cfg)["id_val"], tokenizer, kind, cfg.max_length)
    expected = softmax(predict_logits(model, data, tokenizer, cfg.eval_batch_size, Runtime())).astype(np.float32)
    assert np.array_equal(load_file(cached_path(result["predictions"]))["id_val/probs"], expected)


def head_and_full_pass_logits(backbone: str, runtime: Runtime, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(the head on the model's pooled features, the whole model) on 40 pairs of many lengths."""
    model_backbone, tokenizer, kind, _ = load_backbone(backbone)
    torch.manual_seed(0)
    model = RelevanceModel(model_backbone, kind).to(runtime.device)
    words = "red blue green lamp drill saw fan pipe elbow light".split()
    queries = [" ".join(words[: 1 + i % 9]) for i in range(40)]
    items = [" ".join(reversed(words[: 1 + (3 * i) % 10])) + f" {i} in." for i in range(40)]
    data = Encoded(encode_pairs(tokenizer, queries, items, kind, 32))
    features = predict_logits(model, data, tokenizer, batch_size, runtime, what="features")
    return (head_logits(model.head, features, data, batch_size, runtime),
            predict_logits(model, data, tokenizer, batch_size, runtime))


@pytest.mark.parametrize("which", ["tiny_encoder", "tiny_decoder"])
@pytest.mark.parametrize("batch_size", [1, 7, 64])
def test_the_head_on_cached_features_gives_the_full_pass_logits_exactly(which, batch_size, request):
    from_features, full = head_and_full_pass_logits(request.getfixturevalue(which), Runtime(), batch_size)
    assert full.shape == (40, 3) and np.array_equal(from_features, full)


def test_prediction_outputs_reach_the_host_in_order_a_chunk_of_batches_at_a_time():
    from darl_utils.training import FLUSH_EVERY, HostChunks
    chunks = HostChunks()
    for i in range(2 * FLUSH_EVERY + 3):
        chunks.add(torch.full((2, 3), float(i)))
    assert len(chunks.copied) == 2 and len(chunks.pending) == 3  # two copies so far, three batches waiting
    on_host = chunks.on_host()
    assert [len(c) for c in on_host] == [2 * FLUSH_EVERY, 2 * FLUSH_EVERY, 6]
    assert torch.equal(torch.cat(on_host)[::2, 0], torch.arange(2 * FLUSH_EVERY + 3, dtype=torch.float32))
    assert HostChunks().on_host() == []


def test_best_keeper_keeps_the_best_epochs_weights_and_logits():
    keeper, module = BestKeeper(patience=2), torch.nn.Linear(2, 2)
    best = module.weight.detach().clone()
    assert not keeper.stop_after(0.5, module, np.array([1.0]))
    with torch.no_grad():
        module.weight.add_(1.0)
    assert not keeper.stop_after(0.4, module, np.array([2.0]))
    assert keeper.stop_after(0.5, module, np.array([3.0]))  # a tie is no gain: two epochs without one, stop
    keeper.restore(module)
    assert torch.equal(module.weight, best) and keeper.logits.tolist() == [1.0]


def test_two_processes_gloo(pairs_csv, tiny_encoder, tmp_path):
    """The distributed path: 2 CPU processes under torchrun, gradients averaged by DDP over gloo."""
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "darl_utils", "ft", "--dataset", "csv", "--data", str(pairs_csv), "--csv-columns",
           '{"group": "group"}', "--backbone", tiny_encoder, "--max-length", "32", "--epochs", "2",
           "--batch-size", "8", "--lr", "2e-3", "--device", "cpu", "--no-progress", "--out-dir", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DARL_CACHE": str(tmp_path / "cache")}
    run = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    [saved] = out.glob("ft-query_form-seed0-*.json")
    result = json.loads(saved.read_text())
    assert result["world_size"] == 2
    a, b = result["param_checksums"]
    assert a == b  # both processes hold the same weights after training: gradients were synchronised
    # each process saw half of the training batches
    assert result["fit"]["steps_per_epoch"] == -(-result["sizes"]["train"] // (2 * 8))
    # twice the batch of one process: a one-process run of the same settings has its own cache folder
    one = run_folder("FT", RunConfig(**result["config"]), exclude=LPFT_ONLY)
    assert Path(result["checkpoint"]).name != one.name and one.name.startswith("ft-")
    assert "ID macro-F1" in run.stdout


@pytest.mark.slow
def test_a_torchrun_job_waits_while_another_holds_its_entry(pairs_csv, tiny_encoder, tmp_path, monkeypatch):
    """Two jobs on one cache: while another process holds a run's lock, a torchrun job (2 processes) that wants
    the run waits, its ranks meeting at every try, says so once, and trains it when the lock is free."""
    import fcntl
    import time

    from darl_utils.cache import LOCK_POLL_SECONDS
    out = tmp_path / "ddp"
    settings = dict(dataset="csv", data=str(pairs_csv), csv_columns={"group": "group"}, backbone=tiny_encoder,
                    max_length=32, epochs=2, batch_size=8, lr=2e-3, device="cpu", progress=False, out_dir=str(out))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "darl_utils",
           "ft", "--dataset", "csv", "--data", str(pairs_csv), "--csv-columns", '{"group": "group"}', "--backbone",
           tiny_encoder, "--max-length", "32", "--epochs", "2", "--batch-size", "8", "--lr", "2e-3", "--device",
           "cpu", "--no-progress", "--out-dir", str(out)]
    monkeypatch.setenv("WORLD_SIZE", "2")  # the job's own key: its batch is per process
    folder = run_folder("FT", RunConfig(**settings), exclude=LPFT_ONLY)
    monkeypatch.delenv("WORLD_SIZE")
    (folder.parent / ".locks").mkdir(parents=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    with open(folder.parent / ".locks" / f"{folder.name}.lock", "w") as held, open(tmp_path / "err", "w") as err:
        fcntl.flock(held, fcntl.LOCK_EX)  # the other job, training this run
        job = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=err, text=True)
        said = [job.stdout.readline()]
        while said[-1] and "waiting for another process" not in said[-1]:
            said.append(job.stdout.readline())
        assert f"waiting for another process to finish {folder.name}" in said[-1], (tmp_path / "err").read_text()
        time.sleep(4 * LOCK_POLL_SECONDS)  # several tries, each a collective of both ranks
        assert job.poll() is None and not (folder / "result.json").exists()
        released = time.strftime("%Y-%m-%dT%H:%M:%S")
    rest, _ = job.communicate(timeout=600)
    assert job.returncode == 0, (tmp_path / "err").read_text()[-3000:]
    assert ("".join(said) + rest).count("waiting for another process") == 1  # process 0 speaks for the job
    [saved] = out.glob("ft-query_form-seed0-*.json")
    result = json.loads(saved.read_text())
    assert Path(result["checkpoint"]).name == folder.name and result["finished"] >= released
    a, b = result["param_checksums"]
    assert a == b  # the ranks stayed in step through the wait


def test_out_of_memory_is_explained(tiny_encoder, pairs_csv):
    backbone, tokenizer, kind, _ = load_backbone(tiny_encoder)

    class Exploding(RelevanceModel):
        def forward(self, *a, **k):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    model = Exploding(backbone, kind)
    data = Encoded([{"input_ids": [101, 7592, 102], "attention_mask": [1, 1, 1]}] * 4, [0, 1, 2, 0])
    with pytest.raises(RuntimeError, match=r"out of memory on cpu at batch size 2: lower batch_size or max_length"):
        train_model(model, data, data, tokenizer, TrainSettings(epochs=1, batch_size=2, progress=False), Runtime())


def test_config_typo_and_range_fail_fast(pairs_csv):
    with pytest.raises(ConfigError, match=r"unknown setting 'learning_rate'"):
        RunConfig.from_dict({"learning_rate": 1e-4})
    with pytest.raises(ConfigError, match=r"unknown setting 'epocs'; did you mean 'epochs'\?"):
        RunConfig.from_dict({"epocs": 3})
    good = RunConfig(dataset="csv", data=str(pairs_csv))
    with pytest.raises(ConfigError, match=r"lr: 2.0 must be in \(0, 1\)"):
        replace(good, lr=2.0).validate()
    with pytest.raises(ConfigError, match=r"epochs: '3' is a string, expected an integer"):
        replace(good, epochs="3").validate()
    with pytest.raises(ConfigError, match=r"protocol: 'dept' is not one of"):
        replace(good, protocol="dept").validate()
    with pytest.raises(ConfigError, match=r"data: .*nowhere.csv does not exist"):
        replace(good, data="nowhere.csv").validate()
    with pytest.raises(ConfigError, match=r"csv_columns: .* unknown key\(s\) \['qeury'\]"):
        replace(good, csv_columns={"qeury": "q"}).validate()
    with pytest.raises(ConfigError, match=r"max_length: 4 must be in \[16, 4096\]"):
        replace(good, max_length=4).validate()
    with pytest.raises(ConfigError, match=r"data: .* is a file; dataset 'wands' reads a folder"):
        replace(good, dataset="wands").validate()
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match=r"device: 'cuda' asked for, but torch sees no CUDA GPU"):
            replace(good, device="cuda").validate()
    with pytest.raises(ConfigError, match=r"backbone './missing-model': model path does not exist"):
        replace(good, backbone="./missing-model").validate()


def test_cli_reports_bad_input_in_one_line(tmp_path, capsys):
    assert cli(["ft", "--data", str(tmp_path / "absent.csv.gz")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: data:") and "absent.csv.gz does not exist" in err and len(err.splitlines()) == 1
    bad = tmp_path / "bad.csv"
    bad.write_text("query,item,label\na,b,strong\nc,d,sort of\n")
    assert cli(["split", "--dataset", "csv", "--data", str(bad)]) == 2
    assert "row 3: unknown label 'sort of'" in capsys.readouterr().err
