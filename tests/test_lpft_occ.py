"""LPFT (probe, fine-tune, interpolate), the OCC loss and the confidence metrics."""
import json
import math
import os
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.numpy import load_file as load_numpy
from safetensors.torch import load_file as load_torch

from darl_utils import features as features_module
from darl_utils import pipeline, results
from darl_utils.config import ConfigError, RunConfig
from darl_utils.interpolation import InterpolationError, choose_alpha, interpolate
from darl_utils.losses import OCCLoss, label_smoothing_equivalent, make_loss, prior_matrix
from darl_utils.metrics import confidence_metrics, entropy, evaluate_logits, expected_calibration_error, softmax
from darl_utils.modeling import RelevanceModel, load_backbone
from darl_utils.training import ProbeSettings, Runtime, predict_logits, train_probe

from test_training import ROOT, tiny_config


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DARL_CACHE", str(tmp_path / "cache"))


# ---- OCC loss -------------------------------------------------------------------------------------------

def test_occ_loss_equals_hand_computed_value():
    # logits (2, 0, -1), gold degree strong (index 2), rho 0.1, lambda 0.5, ordinal prior:
    # q = (rho * 1/3, rho * 2/3, 1 - rho): irrelevant is twice as far from strong as weak is.
    e = [math.exp(2), math.exp(0), math.exp(-1)]
    p = [v / sum(e) for v in e]
    q = [0.1 / 3, 0.2 / 3, 0.9]
    expected = -math.log(p[2]) + 0.5 * sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))
    loss = OCCLoss(lam=0.5, rho=0.1)(torch.tensor([[2.0, 0.0, -1.0]]), torch.tensor([2]))
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert loss.item() == pytest.approx(4.4995, abs=1e-3)  # the same number worked out on paper


def test_priors_are_distributions_and_ordinal_prefers_neighbours():
    for prior in ("ordinal", "uniform"):
        q = prior_matrix(0.2, prior)
        assert torch.allclose(q.sum(1), torch.ones(3, dtype=q.dtype)) and (torch.diag(q) == 0.8).all()
    ordinal = prior_matrix(0.2, "ordinal")
    assert ordinal[0, 1] > ordinal[0, 2] and ordinal[2, 1] > ordinal[2, 0]  # irrelevant leans to weak, not strong
    assert ordinal[1, 0] == ordinal[1, 2]  # weak sits in the middle
    assert torch.allclose(prior_matrix(0.2, "uniform")[0, 1:], torch.tensor([0.1, 0.1], dtype=torch.float64))


@pytest.mark.parametrize("direction", ["reverse", "forward"])
def test_occ_gradient_is_finite_even_for_extreme_logits(direction):
    logits = torch.tensor([[60.0, -60.0, 0.0], [0.0, 0.0, 0.0], [-80.0, 80.0, -80.0]], requires_grad=True)
    loss = OCCLoss(lam=0.5, rho=0.01, direction=direction)(logits, torch.tensor([0, 1, 2]))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0


def test_forward_direction_is_label_smoothing():
    torch.manual_seed(0)
    logits, labels = torch.randn(16, 3, requires_grad=True), torch.randint(0, 3, (16,))
    lam, rho = 0.5, 0.2
    occ = OCCLoss(lam, rho, prior="uniform", direction="forward")(logits, labels)
    (g_occ,) = torch.autograd.grad(occ, logits)
    eps = label_smoothing_equivalent(lam, rho)
    smoothed = (1 + lam) * F.cross_entropy(logits, labels, label_smoothing=eps)
    (g_ls,) = torch.autograd.grad(smoothed, logits)
    q = prior_matrix(rho, "uniform")[0]
    entropy_q = -(q * q.log()).sum().item()
    assert occ.item() == pytest.approx(smoothed.item() - lam * entropy_q, rel=1e-5)  # equal up to a constant
    assert torch.allclose(g_occ, g_ls, atol=1e-6)  # so it trains exactly like label smoothing


def test_occ_lowers_confidence_relative_to_cross_entropy():
    """Minimising CE alone drives p to one-hot; CE + KL(p || q) stops short of it."""
    for lam, expect_certain in ((0.0, True), (0.5, False)):
        logits = torch.zeros(1, 3, requires_grad=True)
        opt = torch.optim.SGD([logits], lr=1.0)
        loss_fn = make_loss(lam, 0.2, "ordinal", "reverse")
        for _ in range(2000):
            opt.zero_grad()
            loss_fn(logits, torch.tensor([2])).backward()
            opt.step()
        top = torch.softmax(logits, -1)[0, 2].item()
        assert (top > 0.99) == expect_certain, top


def test_occ_settings_are_validated(pairs_csv):
    good = RunConfig(dataset="csv", data=str(pairs_csv))
    for change, message in [({"occ_rho": 1.0}, r"occ_rho: 1.0 must be in \[0, 1\)"),
                            ({"occ_rho": -0.1}, r"occ_rho: -0.1 must be in \[0, 1\)"),
                            ({"occ_lambda": -1.0}, r"occ_lambda: -1.0 must be >= 0"),
                            ({"occ_prior": "gaussian"}, r"occ_prior: 'gaussian' is not one of"),
                            ({"occ_direction": "backward"}, r"occ_direction: 'backward' is not one of"),
                            ({"occ_stage": "fine-tune"}, r"occ_stage: 'fine-tune' is not one of lp, ft, both"),
                            ({"occ_lambda": 0.5, "occ_rho": 0.0}, r"occ_rho: 0 makes KL\(p \|\| q\) infinite"),
                            ({"alphas": [0.0, 1.5]}, r"alphas: .* values in \[0, 1\]"),
                            ({"alphas": []}, r"alphas: \[\] must be a non-empty list"),
                            ({"alphas": [0.0, "0.5"]}, r"alphas: '0.5' is a string, expected a number"),
                            ({"lp_lr": 0.0}, r"lp_lr: 0.0 must be in \(0, 1\)")]:
        with pytest.raises(ConfigError, match=message):
            replace(good, **change).validate()
    replace(good, occ_lambda=0.5, occ_rho=0.0, occ_direction="forward").validate()  # = plain CE x 1.5: allowed


# ---- interpolation ---------------------------------------------------------------------------------------

def two_models(tiny_encoder):
    backbone, tokenizer, kind, _ = load_backbone(tiny_encoder)
    torch.manual_seed(0)
    a = RelevanceModel(backbone, kind)
    b = RelevanceModel(load_backbone(tiny_encoder)[0], kind)
    with torch.no_grad():
        for p in b.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return a, b, tokenizer, kind


def test_interpolation_endpoints_and_midpoint(tiny_encoder):
    a, b, tokenizer, kind = two_models(tiny_encoder)
    lp, ft = a.state_dict(), b.state_dict()
    from darl_utils.modeling import encode_pairs
    from darl_utils.training import Encoded
    data = Encoded(encode_pairs(tokenizer, ["red lamp", "blue drill 3 in"], ["red lamp model", "green saw"],
                                kind, 32))
    expected = {0.0: predict_logits(a, data, tokenizer, 8, Runtime()),
                1.0: predict_logits(b, data, tokenizer, 8, Runtime())}
    assert not np.allclose(expected[0.0], expected[1.0])
    probe = RelevanceModel(load_backbone(tiny_encoder)[0], kind)
    for alpha, logits in expected.items():
        probe.load_state_dict(interpolate(lp, ft, alpha))
        assert np.array_equal(predict_logits(probe, data, tokenizer, 8, Runtime()), logits)  # exactly
    mid = interpolate(lp, ft, 0.5)
    floats = [k for k, v in lp.items() if v.is_floating_point()]
    assert len(floats) > 20
    for key in floats:
        assert torch.allclose(mid[key], (lp[key] + ft[key]) / 2, atol=1e-7), key
    for key in set(lp) - set(floats):  # integer buffers (token type ids, ...) copied
        assert torch.equal(mid[key], ft[key])


def test_interpolation_refuses_mismatched_weights(tiny_encoder):
    a, b, _, _ = two_models(tiny_encoder)
    lp, ft = a.state_dict(), b.state_dict()
    with pytest.raises(InterpolationError, match=r"differ in keys: only in LP \['head.4.bias'\]"):
        interpolate(lp, {k: v for k, v in ft.items() if k != "head.4.bias"}, 0.5)
    with pytest.raises(InterpolationError, match=r"head.4.weight: shape \(3, 32\) in LP but \(4, 32\) in FT"):
        interpolate(lp, {**ft, "head.4.weight": torch.zeros(4, 32)}, 0.5)
    with pytest.raises(InterpolationError, match=r"alpha: 1.2 must be in \[0, 1\]"):
        interpolate(lp, ft, 1.2)


def test_alpha_star_uses_id_val_only():
    sweep = [{"alpha": 0.0, "id_val": {"macro_f1": 0.5}, "ood_test": {"macro_f1": 0.9}},
             {"alpha": 0.5, "id_val": {"macro_f1": 0.7}, "ood_test": {"macro_f1": 0.1}},
             {"alpha": 1.0, "id_val": {"macro_f1": 0.7}, "ood_test": {"macro_f1": 0.2}}]
    assert choose_alpha(sweep) == 0.5  # best id_val; the tie goes to the smaller alpha; ood_test plays no part


# ---- LP and the feature cache ----------------------------------------------------------------------------

def test_probe_learns_separable_features():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, 16)) * 3
    y = rng.integers(0, 3, 600)
    x = (centres[y] + rng.normal(size=(600, 16))).astype(np.float32)
    head = torch.nn.Sequential(torch.nn.Linear(16, 16), torch.nn.GELU(), torch.nn.Linear(16, 3))
    fit = train_probe(head, x[:400], y[:400], x[400:], y[400:], ProbeSettings(epochs=30, patience=5))
    assert fit["best_id_val_macro_f1"] > 0.95
    assert fit["epochs_run"] <= 30 and fit["history"][-1]["train_loss"] < fit["history"][0]["train_loss"]


def test_probe_keeps_the_epoch_its_selection_names():
    # weak signal and a wide head: train loss keeps falling while id_val's cross-entropy turns up (memorising)
    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, 700)
    x = (rng.normal(size=(700, 24)) + 0.5 * np.eye(3, 24)[y]).astype(np.float32)
    kept = {}
    for select in ("macro_f1", "loss"):
        torch.manual_seed(0)  # the same head and the same epochs for both rules
        head = torch.nn.Sequential(torch.nn.Linear(24, 256), torch.nn.GELU(), torch.nn.Linear(256, 3))
        fit = train_probe(head, x[:400], y[:400], x[400:], y[400:],
                          ProbeSettings(epochs=40, patience=0, lr=1e-3, batch_size=32, select=select))
        losses = [h["id_val_loss"] for h in fit["history"]]
        f1s = [h["id_val_macro_f1"] for h in fit["history"]]
        assert losses[-1] > min(losses) + 0.1  # the case the choice matters for
        expected = losses.index(min(losses)) if select == "loss" else f1s.index(max(f1s))
        assert fit["kept_epoch"] == expected and fit["select"] == select
        assert fit["best_id_val_loss"] == losses[expected] and fit["best_id_val_macro_f1"] == f1s[expected]
        with torch.no_grad():  # the head holds the kept epoch's weights
            kept_loss = torch.nn.functional.cross_entropy(head(torch.from_numpy(x[400:])),
                                                          torch.from_numpy(y[400:]))
        assert float(kept_loss) == pytest.approx(losses[expected], abs=1e-5)
        kept[select] = expected
    assert kept["loss"] < kept["macro_f1"]  # here macro-F1 keeps a later, more memorised epoch
    with pytest.raises(ValueError, match="probe selection 'f1'"):
        train_probe(head, x[:400], y[:400], x[400:], y[400:], ProbeSettings(epochs=1, select="f1"))


def test_probe_with_no_finite_id_val_loss_names_the_learning_rate():
    x, y = np.full((20, 4), np.nan, dtype=np.float32), np.arange(20) % 3
    head = torch.nn.Linear(4, 3)
    with pytest.raises(ValueError, match="lp_lr"):
        train_probe(head, x, y, x, y, ProbeSettings(epochs=2, select="loss"))


def test_lpft_run_sweeps_alphas_and_reuses_what_it_can(pairs_csv, tiny_encoder, tmp_path, monkeypatch):
    extractions = []
    real = features_module.predict_logits
    monkeypatch.setattr(features_module, "predict_logits",
                        lambda *a, **k: extractions.append(k.get("what")) or real(*a, **k))
    cfg = tiny_config(pairs_csv, tiny_encoder, tmp_path / "out", epochs=4, alphas=[0.0, 0.5, 0.6, 1.0])
    result = pipeline.run_lpft(cfg)
    # train and id_val for the probe, id_test and ood_test for LP's predictions: once each
    assert extractions == ["features"] * 4
    sweep = {s["alpha"]: s for s in result["sweep"]}
    assert sorted(sweep) == [0.0, 0.5, 0.6, 1.0]
    assert result["alpha_star"] == max(sweep, key=lambda a: (sweep[a]["id_val"]["macro_f1"], -a))
    assert result["id_test"] == sweep[result["alpha_star"]]["id_test"]
    assert sweep[1.0]["id_test"]["macro_f1"] > 0.6  # fine-tuning from the probe learns the colour rule
    # the LP stage ran on features and stopped early or at its limit; FT started from the probed head
    assert 1 <= result["lp_fit"]["epochs_run"] <= cfg.lp_epochs
    lines = [json.loads(x) for x in (tmp_path / "out" / "results.jsonl").read_text().splitlines()]
    assert [(x["method"], x["alpha"]) for x in lines] == [("LP", 0.0), ("LPFT", 0.0), ("LPFT", 0.5),
                                                          ("LPFT", 0.6), ("LPFT", 1.0)]
    assert sum(x["selected"] for x in lines) == 1
    # LP at alpha = 0 is the probe itself: pretrained backbone + probed head
    assert lines[0]["id_test"] == sweep[0.0]["id_test"]

    # a rerun of the same settings: nothing trained, nothing extracted
    monkeypatch.setattr(pipeline, "train_model", lambda *a, **k: pytest.fail("trained again"))
    again = pipeline.run_lpft(cfg)
    assert again["sweep"] == result["sweep"] and extractions == ["features"] * 4
    # a new alpha list re-evaluates the stored weights without training
    more = pipeline.run_lpft(replace(cfg, alphas=[0.0, 0.3, 1.0]))
    assert [s["alpha"] for s in more["sweep"]] == [0.0, 0.3, 1.0]
    refreshed = {s["alpha"]: s for s in more["sweep"]}[1.0]
    assert refreshed["id_test"] == sweep[1.0]["id_test"]
    assert refreshed["id_val"] == sweep[1.0]["id_val"]  # predicted now, taken from training before: the same
    # another LP learning rate trains a new probe, on the features already cached
    monkeypatch.undo()
    monkeypatch.setenv("DARL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(features_module, "predict_logits", lambda *a, **k: pytest.fail("features extracted twice"))
    other = pipeline.run_lpft(replace(cfg, lp_lr=3e-3, epochs=1))
    assert other["lp_fit"] != result["lp_fit"]
    # so does the other selection rule (it is in the probe's cache key)
    assert pipeline.run_lpft(replace(cfg, lp_select="macro_f1", epochs=1))["lp_fit"]["select"] == "macro_f1"


def test_lpft_logits_read_off_features_and_training_equal_a_full_pass(pairs_csv, tiny_encoder, tmp_path):
    """LP's logits come from the cached pretrained features, theta_FT's id_val logits from training's
    evaluation: both are a forward pass of the stored weights, bit for bit."""
    cfg = tiny_config(pairs_csv, tiny_encoder, tmp_path / "out", epochs=3, alphas=[0.0, 1.0])
    result = pipeline.run_lpft(cfg)
    saved = load_numpy(results.cached_path(result["predictions"]))
    backbone, tokenizer, kind, _ = load_backbone(cfg.backbone)
    model, parts = RelevanceModel(backbone, kind), pipeline.sized_parts(pipeline.prepare_split(cfg), cfg)

    def probs(part: str) -> np.ndarray:
        data = pipeline.encode(parts[part], tokenizer, kind, cfg.max_length)
        return softmax(predict_logits(model, data, tokenizer, cfg.eval_batch_size, Runtime())).astype(np.float32)

    [head] = (tmp_path / "cache" / "runs").glob("lp-*/head.safetensors")
    model.head.load_state_dict(load_torch(str(head)))
    for part in results.EVAL_PARTS:
        assert np.array_equal(saved[f"alpha=0/{part}/probs"], probs(part)), part
    model.load_state_dict(load_torch(str(results.cached_path(result["checkpoint"]) / "model.safetensors")))
    assert np.array_equal(saved["alpha=1/id_val/probs"], probs("id_val"))


def test_ft_with_occ_and_label_smoothing_are_named_and_less_confident(pairs_csv, tiny_encoder, tmp_path):
    # long enough for FT to become sure of the colour rule: only then is there confidence for OCC to cap
    cfg = tiny_config(pairs_csv, tiny_encoder, tmp_path / "out", epochs=10, patience=0)
    ft = pipeline.run_ft(cfg)
    occ = pipeline.run_ft(replace(cfg, occ_lambda=1.0, occ_rho=0.3))
    ls = pipeline.run_ft(replace(cfg, occ_lambda=1.0, occ_rho=0.3, occ_direction="forward", occ_prior="uniform"))
    assert (ft["method"], occ["method"], ls["method"]) == ("FT", "FT+OCC", "FT+LS")
    assert len({ft["run_key"], occ["run_key"], ls["run_key"]}) == 3
    # OCC's control differs in the direction of the KL only: same prior, same rho and lambda
    assert pipeline.method_name("FT", replace(cfg, occ_lambda=1.0, occ_direction="forward")) == "FT+fKL"
    # a prior with 30 % off the gold degree caps how sure the model gets
    assert ft["id_test"]["confidence"]["confidence"] > 0.85
    assert occ["id_test"]["confidence"]["entropy"] > ft["id_test"]["confidence"]["entropy"]
    assert occ["id_test"]["confidence"]["confidence"] < ft["id_test"]["confidence"]["confidence"]
    from safetensors.numpy import load_file
    saved = load_file(results.cached_path(occ["predictions"]))
    assert saved["id_test/probs"].shape == (occ["sizes"]["id_test"], 3)
    assert np.allclose(saved["id_test/probs"].sum(1), 1, atol=1e-5)


def test_lpft_under_two_processes(pairs_csv, tiny_encoder, tmp_path):
    """LP on process 0 with the head broadcast, FT under DDP, the sweep on process 0: no deadlock, same weights."""
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "darl_utils", "lpft", "--dataset", "csv", "--data", str(pairs_csv), "--csv-columns",
           '{"group": "group"}', "--backbone", tiny_encoder, "--max-length", "32", "--epochs", "1",
           "--batch-size", "8", "--lr", "2e-3", "--device", "cpu", "--no-progress", "--out-dir", str(out),
           "--alphas", "0", "0.5", "1", "--occ-lambda", "0.5", "--occ-stage", "both"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DARL_CACHE": str(tmp_path / "cache")}
    run = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    [saved] = out.glob("lpft-occ-query_form-seed0-*.json")
    result = json.loads(saved.read_text())
    assert result["world_size"] == 2 and [s["alpha"] for s in result["sweep"]] == [0.0, 0.5, 1.0]
    assert "LPFT+OCC alpha*=" in run.stdout
    lines = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    assert lines[0]["method"] == "LP+OCC"  # occ_stage both: the probe trained with OCC too


# ---- confidence metrics ----------------------------------------------------------------------------------

def test_confidence_metrics_against_direct_computation():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(400, 3)) * 2
    labels = rng.integers(0, 3, 400)
    m = evaluate_logits(logits, labels)["confidence"]
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    assert m["nll"] == pytest.approx(-np.log(p[np.arange(400), labels]).mean(), rel=1e-9)
    assert m["brier"] == pytest.approx(((p - np.eye(3)[labels]) ** 2).sum(1).mean(), rel=1e-9)
    assert m["entropy"] == pytest.approx(-(p * np.log(p)).sum(1).mean(), rel=1e-9)
    # our reliability bins reproduce torchmetrics' ECE
    r = m["reliability"]
    ece = sum(n / 400 * abs(a - c) for n, a, c in zip(r["count"], r["accuracy"], r["confidence"]) if n)
    assert ece == pytest.approx(m["ece"], abs=1e-6) and len(r["count"]) == 15 and sum(r["count"]) == 400
    # per degree: the same numbers over the pairs of that true degree
    weak = labels == 1
    assert m["per_degree"]["weak"]["n"] == weak.sum()
    assert m["per_degree"]["weak"]["nll"] == pytest.approx(-np.log(p[weak, 1]).mean(), rel=1e-9)


def test_confidence_extremes():
    labels = np.array([0, 1, 2, 1])
    sure_and_right = np.eye(3)[labels] * 0.999 + 0.0005
    m = confidence_metrics(sure_and_right, labels)
    assert m["ece"] == pytest.approx(1 - 0.9995, abs=1e-6) and m["entropy"] < 0.01
    uniform = np.full((4, 3), 1 / 3)
    assert entropy(uniform) == pytest.approx(np.full(4, math.log(3)))
    sure_and_wrong = np.eye(3)[(labels + 1) % 3]
    assert expected_calibration_error(sure_and_wrong, labels) == pytest.approx(1.0)
