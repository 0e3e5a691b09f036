"""The benchmarks run (a small CPU mode); their figures are for reading, not asserted against targets."""
import json
import runpy
import sys
from dataclasses import replace

import numpy as np
import pytest
import torch

from darl_utils import pipeline
from darl_utils.config import RunConfig
from darl_utils.modeling import RelevanceModel
from darl_utils.plan import planned_runs
from darl_utils.runner import load_profile, with_synthetic_assets

from test_training import ROOT, tiny_config


def test_throughput_compares_our_loop_with_trainer(pairs_csv, tiny_encoder, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["throughput.py", "--dataset", "csv", "--data", str(pairs_csv), "--backbone",
                                      tiny_encoder, "--batch-sizes", "16", "--max-train-pairs", "96", "--steps", "4",
                                      "--warmup-steps", "2", "--device", "cpu", "--out-dir", str(tmp_path)])
    module = runpy.run_path(str(ROOT / "benchmarks" / "throughput.py"))
    [line] = module["main"]()
    assert line["batch"] == 16 and line["pairs"] == 4 * 16 and line["ours_peak_gib"] is None  # no GPU here
    # two rounds, the second in the reverse order; each contender's best round counts
    everyone = ["ours", "ours_bucketed", "ours_compiled", "ours_graphs", "trainer"]
    assert line["rounds"] == [everyone, everyone[::-1]]
    for name in everyone:
        rounds = line[f"{name}_rounds"]
        [best] = [r for r in rounds if r["samples_per_s"] == max(r["samples_per_s"] for r in rounds)]
        assert len(rounds) == 2 and line[f"{name}_samples_per_s"] == best["samples_per_s"] > 0
        assert line[f"{name}_id_val_macro_f1"] == best["id_val_macro_f1"]  # the best round's, not the last one's
        assert 0 <= best["id_val_macro_f1"] <= 1
    assert line["ratio"] == line["ours_samples_per_s"] / line["trainer_samples_per_s"]
    assert line["ratio_bucketed"] == line["ours_bucketed_samples_per_s"] / line["trainer_samples_per_s"]
    assert line["ratio_graphs"] == line["ours_graphs_samples_per_s"] / line["trainer_samples_per_s"]
    # the compiled loop compiles in its first round's warm-up, not in the timed part; later rounds reuse the graph
    first, second = (r["warmup_seconds"] for r in line["ours_compiled_rounds"])
    assert first > 3 * second, line["ours_compiled_rounds"]
    assert 0 <= line["ours_data_share"] < 1 and "trainer_data_share" not in line
    out = capsys.readouterr().out
    assert "batch 16, 64 train pairs x 1 epoch(s), best of 2 round(s), samples/s: ours " in out
    assert "ours_compiled" in out and "(first warm-up" in out and "ratio_compiled" in out
    [saved] = [json.loads(x) for x in (tmp_path / "throughput.jsonl").read_text().splitlines()]
    assert saved["ratio"] == line["ratio"] and saved["batch_sizes"] == [16] and saved["machine"]["device"]
    assert saved["machine"]["device"].startswith("CPU (") and saved["repeats"] == 2


def test_throughput_measures_the_others_where_a_contender_cannot_compile(pairs_csv, tiny_encoder, tmp_path,
                                                                         monkeypatch, capsys):
    from darl_utils.compilation import CompileError

    def cannot(mode, device):  # the compiler check fails for one mode ...
        if mode == "default":
            raise CompileError(f"compile: {mode!r} cannot run on {device} here (no compiler); set compile: off")

    def breaks(module, mode):  # ... and the model's own compilation for the other, past the check
        def step(**batch):
            raise RuntimeError("backend='inductor' raised:\nInductorError: a kernel failed")
        return module if mode == "off" else step
    monkeypatch.setattr("darl_utils.training.check_compiler", cannot)
    monkeypatch.setattr("darl_utils.training.compiled", breaks)
    monkeypatch.setattr(sys, "argv", ["throughput.py", "--dataset", "csv", "--data", str(pairs_csv), "--backbone",
                                      tiny_encoder, "--batch-sizes", "16", "--max-train-pairs", "96", "--steps", "2",
                                      "--warmup-steps", "1", "--device", "cpu", "--out-dir", str(tmp_path),
                                      "--repeats", "1", "--contenders", "ours", "ours_compiled", "ours_graphs",
                                      "trainer"])
    [line] = runpy.run_path(str(ROOT / "benchmarks" / "throughput.py"))["main"]()
    assert line["ours_compiled_error"].startswith("compile: 'default' cannot run on cpu here (no compiler)")
    assert line["ours_graphs_error"] == "RuntimeError: InductorError: a kernel failed"
    for name, ratio in (("ours_compiled", "ratio_compiled"), ("ours_graphs", "ratio_graphs")):
        assert f"{name}_samples_per_s" not in line and ratio not in line
    assert line["ours_samples_per_s"] > 0 and line["trainer_samples_per_s"] > 0 and line["ratio"] > 0
    assert "ours_compiled not measured: compile: 'default' cannot run" in capsys.readouterr().out


def test_train_step_times_padded_batches(tiny_encoder, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["train_step.py", "--backbone", tiny_encoder, "--batch", "8", "--tokens", "16",
                                      "--mean-tokens", "8", "--steps", "2", "--device", "cpu"])
    module = runpy.run_path(str(ROOT / "benchmarks" / "train_step.py"), run_name="__main__")
    out = capsys.readouterr().out
    assert "train     " in out and "inference " in out and "samples/s" in out and "GPU busy" not in out
    mask = module["padding_mask"](8, 51, 25)
    assert mask.shape == (8, 51) and mask.sum(1).tolist() == sorted(mask.sum(1).tolist())
    assert mask.sum(1).min() == 12 and mask.sum(1).max() == 37 and abs(mask.sum(1).float().mean() - 24.5) < 1
    assert module["padding_mask"](2, 4, 0).all()
    # the GPU's busy time is the union of its intervals: an annotated region's span over its kernels adds nothing
    assert module["busy_us"]([(0, 10), (2, 5), (8, 12), (20, 21)]) == 13
    assert module["busy_us"]([]) == 0


def test_token_cache_reads_back_what_it_tokenised(pairs_csv, tiny_encoder, capsys):
    module = runpy.run_path(str(ROOT / "benchmarks" / "token_cache.py"))
    rows = module["main"](["--dataset", "csv", "--data", str(pairs_csv), "--backbone", tiny_encoder,
                           "--max-length", "32"])  # it asserts that the tokens read back equal the tokenised
    assert [r["part"] for r in rows] == ["train", "id_val", "id_test", "ood_test"]
    assert all(r["pairs"] > 0 and min(r["tokenise_s"], r["write_s"], r["read_s"]) >= 0 for r in rows)
    assert "tokenise s" in capsys.readouterr().out


def test_probe_selection_scores_each_probe_on_every_part(pairs_csv, tiny_encoder, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DARL_CACHE", str(tmp_path / "cache"))
    module = runpy.run_path(str(ROOT / "benchmarks" / "probe_selection.py"))
    rows = module["main"](["--dataset", "csv", "--data", str(pairs_csv), "--backbone", tiny_encoder,
                           "--max-length", "32"])
    assert [r["probe"] for r in rows] == ["MLP head, kept by macro_f1", "MLP head, kept by loss",
                                          "logistic regression (C=1)", "train prior"]
    for row in rows[:2]:
        assert 0 <= row["kept_epoch"] < row["epochs_run"]
    # the head scored is the kept one: its id_val NLL is the one training recorded for that epoch
    assert rows[1]["id_val"]["nll"] == pytest.approx(rows[1]["best_id_val_loss"], abs=1e-4)
    counts = np.bincount(train_labels(pairs_csv, tiny_encoder))  # the prior's train NLL is their entropy
    shares = counts[counts > 0] / counts.sum()
    assert rows[3]["train"]["nll"] == pytest.approx(-(shares * np.log(shares)).sum(), abs=1e-9)
    assert "kept by loss" in capsys.readouterr().out


def train_labels(pairs_csv, tiny_encoder) -> np.ndarray:
    cfg = RunConfig(dataset="csv", data=str(pairs_csv), backbone=tiny_encoder, max_length=32).validate()
    return pipeline.sized_parts(pipeline.prepare_split(cfg), cfg)["train"]["label"].to_numpy()


def count_backbone_samples(monkeypatch) -> dict[str, int]:
    """Samples through the backbone from now on, training (grad on) and inference apart."""
    seen = {"train": 0, "inference": 0}
    real = RelevanceModel.hidden_states

    def counting(self, input_ids, *args, **kwargs):
        seen["train" if torch.is_grad_enabled() else "inference"] += len(input_ids)
        return real(self, input_ids, *args, **kwargs)
    monkeypatch.setattr(RelevanceModel, "hidden_states", counting)
    return seen


@pytest.mark.parametrize("kind, alphas", [("ft", [0.0, 1.0]), ("lpft", [0.0, 0.5, 1.0]), ("lpft", [0.0, 0.3, 0.6])])
def test_the_budget_counts_the_samples_a_run_passes_through_its_backbone(kind, alphas, pairs_csv, tiny_encoder,
                                                                          tmp_path, monkeypatch):
    monkeypatch.setenv("DARL_CACHE", str(tmp_path / "cache"))
    seen = count_backbone_samples(monkeypatch)
    cfg = tiny_config(pairs_csv, tiny_encoder, tmp_path / "out", epochs=2, patience=0, alphas=alphas)
    result = (pipeline.run_ft if kind == "ft" else pipeline.run_lpft)(cfg)
    budget = runpy.run_path(str(ROOT / "benchmarks" / "study_budget.py"))
    train, inference = budget["run_samples"](kind, cfg, {**result["sizes"], "added": 0})
    assert (seen["train"], seen["inference"]) == (train, inference)


def test_the_budget_follows_the_reports_order(tmp_path, monkeypatch, capsys):
    """--first 05, as the node runs the report: 05 trains the runs it shares, the others keep only their own."""
    monkeypatch.setenv("DARL_CACHE", str(tmp_path / "cache"))
    main = runpy.run_path(str(ROOT / "benchmarks" / "study_budget.py"))["main"]
    rates = ["--profile", "smoke", "--train-rate", "1000", "--infer-rate", "1000", "--overhead", "1"]
    in_name_order, five_first = main(rates), main(rates + ["--first", "05"])
    assert [r["notebook"] for r in five_first] == ["05_evaluation", "01_data", "02_ood_detection",
                                                   "03_lpft_alpha_sweep", "04_occ_calibration"]
    assert sum(r["runs"] for r in five_first) == sum(r["runs"] for r in in_name_order)
    runs = {r["notebook"]: r["runs"] for r in in_name_order}
    assert five_first[0]["runs"] > runs["05_evaluation"] and five_first[3]["runs"] < runs["03_lpft_alpha_sweep"]
    done = [r["done_after_seconds"] for r in five_first]
    assert done == sorted(done) and done[-1] == pytest.approx(sum(r["seconds"] for r in five_first), abs=0.2)
    assert "(done after ~" in capsys.readouterr().out
    # the costs beside the samples: so many seconds per run, and more per probe trained; LPFT+OCC (OCC in the FT
    # stage) takes LPFT's probe from the cache, so there are fewer probes than LPFT runs
    padded = main(rates + ["--first", "05", "--run-seconds", "2", "--probe-seconds", "5"])
    budget = runpy.run_path(str(ROOT / "benchmarks" / "study_budget.py"))
    spec = with_synthetic_assets(load_profile("smoke")[1], tmp_path / "assets")
    params = budget["profile_parameters"](spec)
    plan = planned_runs({"05_evaluation": params["05_evaluation"]})
    assert 0 < padded[0]["probes"] < sum(kind == "lpft" for kind, _ in plan["05_evaluation"])
    for plain, more in zip(five_first, padded):
        assert more["seconds"] == pytest.approx(plain["seconds"] + 2 * more["runs"] + 5 * more["probes"], abs=0.2)


def test_the_budget_counts_the_probe_features_a_second_lpft_run_reads_from_the_cache(pairs_csv, tiny_encoder,
                                                                                      tmp_path, monkeypatch):
    monkeypatch.setenv("DARL_CACHE", str(tmp_path / "cache"))
    cfg = tiny_config(pairs_csv, tiny_encoder, tmp_path / "out", epochs=1, alphas=[0.0, 0.5, 1.0])
    first = pipeline.run_lpft(cfg)
    seen = count_backbone_samples(monkeypatch)
    occ = replace(cfg, occ_lambda=0.5, occ_rho=0.1)  # LPFT+OCC: another run on the same features
    pipeline.run_lpft(occ)
    budget = runpy.run_path(str(ROOT / "benchmarks" / "study_budget.py"))
    sizes = {**first["sizes"], "added": 0}
    cached = frozenset(budget["probe_features"](cfg, sizes))
    assert (seen["train"], seen["inference"]) == budget["run_samples"]("lpft", occ, sizes, cached)
    assert budget["run_samples"]("lpft", occ, sizes, cached)[1] < budget["run_samples"]("lpft", occ, sizes)[1]
