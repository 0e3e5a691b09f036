import ast
import copy
import json

import nbformat
import pytest
from papermill.exceptions import PapermillExecutionError

from darl_utils.config import ConfigError
from darl_utils.notebooks import NOTEBOOKS, check_parameters, declared_parameters, run_notebook
from darl_utils.pipeline import run_ft
from darl_utils.splits import DEFAULT_PROTOCOL, PROTOCOLS

from test_training import tiny_config

NB01 = NOTEBOOKS / "01_data.ipynb"


def outputs_text(nb) -> str:
    parts = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            parts.append(out.get("text", ""))
            parts.extend(str(v) for k, v in out.get("data", {}).items() if k.startswith("text/"))
    return "\n".join(parts)


def test_committed_notebooks_are_clean_and_parameterised():
    for path in NOTEBOOKS.glob("*.ipynb"):
        nb = nbformat.read(path, as_version=4)
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert not any(c.get("outputs") or c.get("execution_count") for c in code), f"{path.name} has outputs"
        params = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
        assert len(params) == 1, path.name
        assigned = {n.target.id for n in ast.parse(params[0].source).body}  # one typed assignment a line
        assert set(declared_parameters(path)) == assigned, path.name  # papermill sees every one of them
    assert declared_parameters(NB01)["protocol"] == DEFAULT_PROTOCOL  # the notebook follows the project


def test_parameter_typo_and_type_fail_before_running():
    with pytest.raises(ConfigError, match=r"01_data.ipynb: unknown parameter 'protocl'; did you mean 'protocol'\?"):
        check_parameters(NB01, {"protocl": "department"})
    with pytest.raises(ConfigError, match=r"parameter 'n_examples' = '4' is a str, expected int"):
        check_parameters(NB01, {"n_examples": "4"})


def test_out_of_range_parameter_stops_in_the_validation_cell(tmp_path, homedepot_path):
    with pytest.raises(PapermillExecutionError, match=r"n_examples: 99 must be an integer in \[0, 20\]"):
        run_notebook(NB01, tmp_path / "out.ipynb", {"data": str(homedepot_path), "n_examples": 99}, progress=False)


def test_data_notebook_runs_on_home_depot(tmp_path, homedepot_path, pairs_csv, tiny_encoder, monkeypatch):
    monkeypatch.setenv("DARL_CACHE", str(tmp_path / "cache"))
    # protocol-gap results: one real (tiny) FT run, recorded under each protocol and two seeds
    result = run_ft(tiny_config(pairs_csv, tiny_encoder, tmp_path / "ft", epochs=1))
    lines = []
    for shift, protocol in enumerate(PROTOCOLS):  # test input: a larger OOD drop for each later protocol
        for seed in (0, 1):
            r = copy.deepcopy(result)
            r["config"].update(protocol=protocol, seed=seed)
            r["run_key"] = f"{protocol}-{seed}"
            r["ood_test"]["macro_f1"] -= 0.01 * shift
            lines.append(json.dumps(r))
    gap = tmp_path / "gap.jsonl"
    gap.write_text("\n".join(lines) + "\n")
    nb = run_notebook(NB01, tmp_path / "01.ipynb", {"data": str(homedepot_path), "gap_results": str(gap),
                                                      "protocol": "unseen_words"}, progress=False)
    text = outputs_text(nb)
    assert "74,058 pairs, 11,793 queries" in text
    assert "protocol 'unseen_words'" in text and "ood_test" in text
    assert f"largest mean gap: {PROTOCOLS[-1]};" in text and f"default protocol: {DEFAULT_PROTOCOL}" in text
    assert any(o.get("data", {}).get("image/png") for c in nb.cells for o in c.get("outputs", []))
