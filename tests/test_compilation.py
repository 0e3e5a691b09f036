"""torch.compile of the training step (the `compile` setting): the same fit as eager, and a clear error where the
machine cannot compile."""
import numpy as np
import pytest
import torch

from darl_utils import compilation, distributed
from darl_utils.compilation import CompileError, check_compiler
from darl_utils.config import ConfigError, RunConfig
from darl_utils.data import DEGREES
from darl_utils.modeling import Collator, RelevanceModel, encode_pairs, load_backbone
from darl_utils.smoke import synthetic_pairs
from darl_utils.training import Encoded, Runtime, TrainSettings, predict_logits, train_model


def fit(backbone_dir: str, mode: str, runtime: Runtime | None = None):
    """Two epochs of a tiny BERT on synthetic pairs, dropout off (compiled dropout draws other random numbers)."""
    backbone, tokenizer, kind, _ = load_backbone(backbone_dir)
    pairs = synthetic_pairs(n_queries=40)
    labels = [DEGREES.index(label) for label in pairs["label"]]
    data = Encoded(encode_pairs(tokenizer, pairs["query"], pairs["item"], kind, 32), labels)
    torch.manual_seed(0)
    model = RelevanceModel(backbone, kind, dropout=0.0)
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    settings = TrainSettings(epochs=2, batch_size=16, lr=2e-3, warmup_ratio=0.0, patience=0, progress=False,
                             compile=mode)
    runtime = runtime or Runtime()
    result = train_model(model, data, data, tokenizer, settings, runtime)
    return result, predict_logits(model, data, tokenizer, 64, runtime)


def test_a_compiled_fit_is_the_eager_fit_within_rounding(tiny_encoder):
    eager, eager_logits = fit(tiny_encoder, "off")
    check_compiler("default", "cpu")  # its tiny graph first, so that the count below is the model's
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    compiled, compiled_logits = fit(tiny_encoder, "default")
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] > graphs  # the model's step was compiled
    assert eager.record["compile"] == "off" and compiled.record["compile"] == "default"
    losses = [[h["train_loss"] for h in f.record["history"]] for f in (eager, compiled)]
    assert losses[0][1] < losses[0][0]  # it learns, so the comparison is not of two untrained models
    # measured on a 2-core CPU: 1e-7 apart (fused kernels add in another order); the bounds leave a margin
    np.testing.assert_allclose(losses[1], losses[0], rtol=1e-5)
    np.testing.assert_allclose(compiled_logits, eager_logits, atol=1e-5)


def test_compiled_batches_are_padded_to_a_multiple_of_eight(tiny_encoder):
    _, tokenizer, kind, _ = load_backbone(tiny_encoder)
    pairs = encode_pairs(tokenizer, ["red drill"], ["a red cordless drill with two batteries"], kind, 32)
    plain = Collator(tokenizer)(pairs)
    padded = Collator(tokenizer, compilation.pad_multiple("default"))(pairs)
    width = plain["input_ids"].shape[1]
    assert width % 8 and padded["input_ids"].shape[1] == -(-width // 8) * 8
    assert torch.equal(padded["input_ids"][:, :width], plain["input_ids"])
    assert padded["attention_mask"][:, width:].sum() == 0  # the added positions are masked
    assert compilation.pad_multiple("off") == 1


def test_a_machine_that_cannot_compile_gets_one_clear_error(monkeypatch):
    def broken(module, mode):
        def run(x):
            raise RuntimeError("InductorError: no working C compiler found\nmore detail")
        return run
    monkeypatch.setattr(compilation, "compiled", broken)
    with pytest.raises(CompileError, match=r"^compile: 'default' cannot run on cpu here \(InductorError: no "
                                           r"working C compiler found\); set compile: off$"):
        check_compiler.__wrapped__("default", "cpu")
    check_compiler.__wrapped__("off", "cpu")  # nothing to compile, nothing checked


def test_the_error_names_the_compilers_reason_not_the_first_line_of_pages():
    """As on a node whose Python has no headers (seen on the emulated node of tests/test_gpu_bundle.py)."""
    raised = RuntimeError("backend='inductor' raised:\nCppCompileError: C++ compile error\n\nCommand:\ng++ k.cpp -O3\n"
                          "\nOutput:\n/tmp/k.main.cpp:30:10: fatal error: Python.h: No such file or directory\n"
                          "   30 | #include <Python.h>\ncompilation terminated.\n")
    assert compilation.failure_reason(raised) == ("fatal error: Python.h: No such file or directory: the Python "
                                                  "headers (a python3-dev package) are missing")
    assert compilation.failure_reason(RuntimeError("backend='inductor' raised:\nInductorError: no C compiler")) == \
        "InductorError: no C compiler"
    assert compilation.failure_reason(RuntimeError("")) == "RuntimeError"


def test_the_compile_setting_is_checked_and_makes_another_run():
    with pytest.raises(ConfigError, match=r"compile: 'defualt' is not one of off, default, reduce-overhead; "
                                          r"did you mean 'default'\?"):
        RunConfig(compile="defualt").validate()
    # compiled dropout draws other masks than eager dropout: a compiled run is another run
    assert RunConfig(compile="default").key() != RunConfig().key()


def test_compile_under_several_processes_is_refused_before_anything_runs(tiny_encoder):
    _, tokenizer, _, _ = load_backbone(tiny_encoder)
    data = Encoded([{"input_ids": [101, 102], "attention_mask": [1, 1]}] * 2, [0, 1])
    with pytest.raises(CompileError, match=r"compile: 'default' with 2 processes is untested here"):
        train_model(None, data, data, tokenizer, TrainSettings(compile="default"), Runtime(rank=0, world=2))


def test_the_check_draws_no_random_numbers():
    """A run seeds, then checks the compiler: the check must leave the run's random stream where it was."""
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    check_compiler.__wrapped__("default", "cpu")
    assert torch.equal(torch.rand(3), expected)


def test_the_device_checked_is_the_one_a_run_trains_on(monkeypatch):
    assert distributed.device_of("cpu") == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv("LOCAL_RANK", "3")  # under torchrun: this process's GPU, as train_model names it
    assert distributed.device_of("auto") == distributed.device_of("cuda") == "cuda:3"


def test_a_report_or_a_command_that_cannot_compile_stops_before_any_data_is_read(monkeypatch, tmp_path, capsys):
    from darl_utils.__main__ import main
    from darl_utils.runner import preflight, study_notebooks

    def refuse(mode, device):
        if mode != "off":
            raise CompileError(f"compile: {mode!r} cannot run on {device} here (no compiler); set compile: off")
    monkeypatch.setattr("darl_utils.runner.check_compiler", refuse)
    monkeypatch.setattr("darl_utils.__main__.check_compiler", refuse)
    monkeypatch.setattr("darl_utils.pipeline.prepare_split", lambda cfg: pytest.fail("data read before the check"))
    notebook = study_notebooks()[0]
    with pytest.raises(ConfigError, match=r"01_\w+\.ipynb: compile: 'default' cannot run on cpu here"):
        preflight({notebook: {"seeds": [0], "settings": {"compile": "default", "device": "cpu"}}})
    assert main(["ft", "--compile", "default", "--device", "cpu", "--out-dir", str(tmp_path)]) == 2
    assert "error: compile: 'default' cannot run on cpu here (no compiler)" in capsys.readouterr().err
