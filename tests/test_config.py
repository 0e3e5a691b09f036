"""The settings as data: every field's help, choices and range are declared beside it and checked from there."""
from __future__ import annotations

from dataclasses import fields, replace

import pytest

from darl_utils.__main__ import _parser
from darl_utils.config import LPFT_ONLY, RUNNING, ConfigError, RunConfig, in_range


def _outside(within: str, kind: type):
    """A value of the field's type just outside its range."""
    if within.startswith(">="):
        return kind(float(within.split()[1]) - 1)
    if within.startswith(">"):
        return kind(float(within.split()[1]))
    low, high = (float(x) for x in within[1:-1].split(","))
    return kind(high) if within[-1] == ")" else kind(low) if within[0] == "(" else kind(high + 1)


RANGED = [f for f in fields(RunConfig) if f.metadata["within"]]
CHOSEN = [f for f in fields(RunConfig) if f.metadata["choices"]]


def test_every_setting_has_its_help_and_the_command_line_shows_it():
    text = " ".join(_parser()._subparsers._group_actions[0].choices["ft"].format_help().split())
    for f in fields(RunConfig):
        assert f.metadata["help"], f.name
        assert " ".join(f.metadata["help"].split()) in text, f.name


@pytest.mark.parametrize("f", RANGED, ids=[f.name for f in RANGED])
def test_a_value_just_outside_a_declared_range_is_refused_by_name(pairs_csv, tmp_path, f):
    good = RunConfig(dataset="csv", data=str(pairs_csv), out_dir=str(tmp_path / "out"))
    kind = type(getattr(good, f.name))
    bad = _outside(f.metadata["within"], kind)
    assert not in_range(bad, f.metadata["within"])
    with pytest.raises(ConfigError, match=rf"^{f.name}: {bad!r} must be"):
        replace(good, **{f.name: bad}).validate()


@pytest.mark.parametrize("f", CHOSEN, ids=[f.name for f in CHOSEN])
def test_every_declared_choice_is_accepted_and_a_typo_gets_a_suggestion(pairs_csv, tmp_path, f):
    good = RunConfig(dataset="csv", data=str(pairs_csv), out_dir=str(tmp_path / "out"))
    for choice in f.metadata["choices"]:
        cfg = replace(good, **{f.name: choice})
        if f.name in ("dataset", "device"):  # those also need a folder or a GPU: their own tests
            continue
        cfg.validate()
    typo = f.metadata["choices"][-1] + "x"
    with pytest.raises(ConfigError, match=rf"^{f.name}: '{typo}' is not one of .*; did you mean "
                                          rf"'{f.metadata['choices'][-1]}'\?"):
        replace(good, **{f.name: typo}).validate()


def test_ranges_read_as_written():
    assert in_range(0, "[0, 1)") and not in_range(1, "[0, 1)")
    assert not in_range(0, "(0, 1)") and in_range(0.5, "(0, 1)")
    assert in_range(4096, "[16, 4096]") and not in_range(4097, "[16, 4096]")
    assert in_range(-1, ">= -1") and not in_range(-2, ">= -1")
    assert not in_range(0, "> 0") and in_range(1e-9, "> 0")
    assert not in_range(float("nan"), ">= 0") and not in_range(float("nan"), "(0, 1)")
    assert not in_range(float("inf"), ">= 0") and not in_range(float("-inf"), "[-1, 1]")


def test_not_a_number_and_infinity_are_refused(pairs_csv, tmp_path):
    good = RunConfig(dataset="csv", data=str(pairs_csv), out_dir=str(tmp_path / "out"))
    for name in ("lr", "weight_decay", "max_grad_norm", "occ_lambda"):
        for bad in ("nan", "inf"):
            with pytest.raises(ConfigError, match=rf"^{name}: {bad} must be"):
                replace(good, **{name: float(bad)}).validate()


def test_the_roles_declared_beside_the_fields():
    assert set(RUNNING) == {"progress", "reuse", "out_dir", "eval_batch_size"}
    assert set(LPFT_ONLY) == {"lp_epochs", "lp_lr", "lp_batch_size", "lp_patience", "lp_select", "lpft_head_lr",
                              "alphas"}
    cfg = RunConfig(data="x.csv")
    assert cfg.key() == replace(cfg, progress=False, eval_batch_size=7, out_dir="elsewhere").key()
    assert cfg.key() != replace(cfg, lr=1e-4).key()


def test_protocol_gap_runs_its_own_protocols_and_seeds_into_notebook_01s_folder():
    args = _parser().parse_args(["protocol-gap"])
    assert args.out_dir == "reports/protocol-gap"  # where notebook 01 reads the gaps
    assert not hasattr(args, "protocol") and not hasattr(args, "seed")  # not silently ignored: not options at all
    args = _parser().parse_args(["protocol-gap", "--protocol", "department", "--seed", "4"])
    assert (args.protocols, args.seeds) == (["department"], [4])  # read as --protocols and --seeds


def test_command_line_mistakes_get_one_line_each(pairs_csv, tmp_path, capsys):
    from darl_utils.__main__ import main as cli
    with pytest.raises(SystemExit) as stop:
        cli(["ft", "--csv-columns", "{group: dept}"])
    assert stop.value.code == 2
    said = capsys.readouterr().err.strip()
    assert said.startswith("error: argument --csv-columns: '{group: dept}' is not valid JSON") and "\n" not in said
    base = ["--dataset", "csv", "--data", str(pairs_csv), "--out-dir", str(tmp_path / "out")]
    assert cli(["ft", *base, "--occ-lambda", "0.5", "--occ-stage", "lp"]) == 2
    assert "occ_stage: 'lp' names a stage plain FT does not have" in capsys.readouterr().err
    assert cli(["ft", *base, "--held-out", "g1"]) == 2  # query_form, the default, holds out no groups
    assert "held_out: ['g1'] names groups to hold out, which only the department protocol does" in \
        capsys.readouterr().err
    assert cli(["protocol-gap", *base, "--held-out", "g1", "--protocols", "query_form"]) == 2
    assert "only the department protocol holds groups out" in capsys.readouterr().err
    assert cli(["umap", str(tmp_path / "nowhere")]) == 2
    assert f"error: umap: {tmp_path / 'nowhere'} does not exist" in capsys.readouterr().err
    (tmp_path / "umap-inputs-1-0.safetensors").write_text("not safetensors")
    assert cli(["umap", str(tmp_path / "umap-inputs-1-0.safetensors")]) == 2
    assert "is not a safetensors file" in capsys.readouterr().err


def test_validating_checks_the_output_folder_without_creating_it(pairs_csv, tmp_path):
    out = tmp_path / "not" / "yet"
    RunConfig(dataset="csv", data=str(pairs_csv), out_dir=str(out)).validate()
    assert not (tmp_path / "not").exists()  # `split` and `select` write nothing there; a run's results make it
    (tmp_path / "taken").write_text("")
    with pytest.raises(ConfigError, match=rf"^out_dir: '.*taken/sub' cannot be written \({tmp_path / 'taken'} is a "
                                          r"file, not a folder\)"):
        RunConfig(dataset="csv", data=str(pairs_csv), out_dir=str(tmp_path / "taken" / "sub")).validate()
