import ast
import copy
import json
import re
import shutil
from pathlib import Path

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
    with pytest.raises(ConfigError, match=r"parameter 'n_examples' = '4' is a string, expected an integer"):
        check_parameters(NB01, {"n_examples": "4"})


def test_out_of_range_parameter_stops_in_the_validation_cell(tmp_path, homedepot_path):
    with pytest.raises(PapermillExecutionError, match=r"n_examples: 99 must be in \[0, 20\]"):
        run_notebook(NB01, tmp_path / "out.ipynb", {"data": str(homedepot_path), "n_examples": 99}, progress=False)


@pytest.mark.slow
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


NB03 = NOTEBOOKS / "03_lpft_alpha_sweep.ipynb"
NB04 = NOTEBOOKS / "04_occ_calibration.ipynb"
NB02 = NOTEBOOKS / "02_ood_detection.ipynb"
NB05 = NOTEBOOKS / "05_evaluation.ipynb"


def smoke_parameters(pairs_csv, tiny_encoder, out) -> dict:
    """The smoke profile: a tiny random-init encoder on 720 synthetic pairs, seconds per model."""
    return dict(dataset="csv", data=str(pairs_csv), csv_columns={"group": "group"}, backbone=tiny_encoder,
                max_train_pairs=0, max_eval_pairs=0, max_length=32, epochs=3, lr=0.002, device="cpu",
                seeds=[0, 1], out_dir=str(out), settings={"batch_size": 16, "warmup_ratio": 0.0, "patience": 3})


def images(nb) -> int:
    return sum(bool(o.get("data", {}).get("image/png")) for c in nb.cells for o in c.get("outputs", []))


@pytest.mark.slow
def test_lpft_and_occ_notebooks_run_on_the_smoke_profile(tmp_path, pairs_csv, tiny_encoder, monkeypatch):
    monkeypatch.setenv("DARL_CACHE", str(tmp_path / "cache"))
    params = smoke_parameters(pairs_csv, tiny_encoder, tmp_path / "lpft")
    nb = run_notebook(NB03, tmp_path / "03.ipynb", {**params, "alphas": [0.0, 0.5, 0.6, 1.0]}, progress=False)
    text = outputs_text(nb)
    for row in ("FT", "LP", "LPFT (alpha*)", "LPFT (alpha 0.6)", "LPFT (alpha 1)"):
        assert f"\n{row} " in text, row
    assert "alpha* per seed: {0: " in text and "Claim 2 " in text and images(nb) == 1
    assert "ID macro-F1" in text and "seed 1" in text  # both seeds ran

    params = smoke_parameters(pairs_csv, tiny_encoder, tmp_path / "occ")
    nb = run_notebook(NB04, tmp_path / "04.ipynb", {**params, "seeds": [0], "rho_sweep": [0.1, 0.3],
                                                    "settings": {**params["settings"], "alphas": [0.0, 0.6, 1.0]}},
                      progress=False)
    text = outputs_text(nb)
    for row in ("FT", "FT+LS", "FT+fKL", "FT+OCC", "LPFT+OCC (alpha*)"):
        assert f"\n{row} " in text, row
    assert "label-smoothing control: epsilon = 0.0500" in text
    assert "Claim 1, over-confidence, " in text and "Claim 3 " in text
    assert "Against FT+fKL (ECE lower: " in text and "Against FT+LS (ECE lower: " in text
    assert re.search(r"entropy [+-]\d\.\d{3} \[[+-]\d\.\d{3}, [+-]\d\.\d{3}\] nats", text)  # with its interval
    assert images(nb) == 5  # entropy x 2 parts, reliability x 2 parts, rho sweep
    # FT was trained by notebook 03 with the same settings: notebook 04 took it from the cache
    assert "FT query_form seed 0" in text
    lines = [json.loads(x) for x in (tmp_path / "occ" / "results.jsonl").read_text().splitlines()]
    ft_03 = [json.loads(x) for x in (tmp_path / "lpft" / "results.jsonl").read_text().splitlines()
             if json.loads(x)["method"] == "FT"]
    assert [x["finished"] for x in lines if x["method"] == "FT"] == [ft_03[0]["finished"]]


@pytest.mark.slow
def test_ood_detection_notebook_runs_on_the_smoke_profile(tmp_path, pairs_csv, tiny_encoder, monkeypatch):
    monkeypatch.setenv("DARL_CACHE", str(tmp_path / "cache"))
    params = {**smoke_parameters(pairs_csv, tiny_encoder, tmp_path / "dasa"), "seeds": [0], "max_pool_pairs": 0,
              "umap_points": 40, "top_pairs": 5}
    nb = run_notebook(NB02, tmp_path / "02.ipynb", params, progress=False)
    text = outputs_text(nb)
    for row in ("FT", "FT+DASA", "FT+random", "FT+length-matched", "FT+oracle"):
        assert f"\n{row} " in text, row
    for score in ("mahalanobis", "knn", "combined"):
        assert f"\n{score} " in text, score
    for representation in ("query_first", "query_mean", "pair_mean", "pair_first", "head_hidden"):
        assert f"\n{representation} " in text, representation  # the candidates, measured with length held fixed
    assert "auroc_within_length" in text and "corr_tokens" in text and "Mean token count: selected" in text
    assert "Claim 4 " in text and "OOD share of the added pairs" in text
    assert "Against random pool pairs of the same token counts: " in text
    assert images(nb) == 4  # AUROC per length quintile, histograms, ROC, UMAP
    assert list((tmp_path / "cache" / "augment").glob("dasa-*/umap-40-0.safetensors"))  # the map is cached
    html = "".join(o.get("data", {}).get("text/html", "") for c in nb.cells for o in c.get("outputs", []))
    assert html.count("<tr>") >= 5  # the top-selected table
    lines = [json.loads(x) for x in (tmp_path / "dasa" / "results.jsonl").read_text().splitlines()]
    assert sorted(x["method"] for x in lines) == ["FT", "FT+DASA", "FT+length-matched", "FT+oracle", "FT+random"]


@pytest.mark.parametrize("notebook, parameters, message", [
    (NB02, {"dasa_budjet": 0.2}, r"unknown parameter 'dasa_budjet'; did you mean 'dasa_budget'\?"),
    (NB03, {"alpahs": [0.5]}, r"unknown parameter 'alpahs'; did you mean 'alphas'\?"),
    (NB04, {"occ_rho": "0.1"}, r"parameter 'occ_rho' = '0.1' is a string, expected a number"),
    (NB05, {"with_ablation": False}, r"unknown parameter 'with_ablation'; did you mean 'with_ablations'\?"),
])
def test_new_notebooks_refuse_typos_before_running(notebook, parameters, message):
    with pytest.raises(ConfigError, match=message):
        check_parameters(notebook, parameters)


@pytest.mark.parametrize("notebook, parameters, message", [
    (NB03, {"alphas": [0.0, 1.5]}, r"alphas: \[0.0, 1.5\] must be a non-empty list of distinct values in \[0, 1\]"),
    (NB03, {"settings": {"lp_lrr": 0.01}}, r"unknown setting 'lp_lrr'; did you mean 'lp_lr'\?"),
    (NB03, {"seeds": []}, r"seeds: \[\] must be a non-empty list"),
    (NB04, {"rho_sweep": [0.1, 1.0]}, r"rho_sweep: 1.0 must be in \(0, 1\) \(each an OCC rho\)"),
    (NB04, {"settings": {"occ_rho": 0.2}}, r"settings: \['occ_rho'\] are parameters of this notebook"),
    (NB02, {"dasa_budget": 1.5}, r"dasa_budget: 1.5 must be a fraction in \(0, 1\)"),
    (NB02, {"settings": {"augment": "dasa"}}, r"settings: \['augment'\] are set by this notebook itself"),
    (NB02, {"umap_points": -1}, r"umap_points: -1 must be >= 0"),
    (NB05, {"occ_lambda": 0.0}, r"occ_lambda: 0.0 must be > 0 \(to test OCC\)"),
    (NB05, {"settings": {"augment": "dasa"}}, r"settings: \['augment'\] are set by this notebook itself"),
    (NB05, {"dasa_combination": "median"}, r"dasa_combination: 'median'"),
])
def test_new_notebooks_stop_in_the_validation_cell(notebook, parameters, message, tmp_path, pairs_csv, tiny_encoder):
    params = {**smoke_parameters(pairs_csv, tiny_encoder, tmp_path / "out"), **parameters}
    with pytest.raises(PapermillExecutionError, match=message):
        run_notebook(notebook, tmp_path / "out.ipynb", params, progress=False)
    assert not (tmp_path / "out" / "results.jsonl").exists()  # stopped before any training


def test_the_setup_cell_helper_takes_the_parameters_that_name_a_setting(tmp_path, monkeypatch, pairs_csv):
    from darl_utils.data import project_root
    from darl_utils.notebooks import setup
    monkeypatch.chdir(tmp_path)
    namespace = {"dataset": "csv", "data": str(pairs_csv), "lr": 0.001, "epochs": 3, "umap_points": 5,
                 "occ_lambda": 0.5, "seeds": [0, 2],
                 "settings": {"batch_size": 8}, "display": print}
    cfg, seeds = setup(namespace, "04_occ_calibration")
    assert (cfg.lr, cfg.epochs, cfg.batch_size, cfg.progress, seeds) == (0.001, 3, 8, False, [0, 2])
    assert cfg.occ_lambda == 0.0  # reserved: the notebook varies it itself
    assert Path.cwd() == project_root()
    with pytest.raises(ConfigError, match=r"settings: \['occ_lambda'\] are parameters of this notebook"):
        setup({**namespace, "settings": {"occ_lambda": 1.0}}, "04_occ_calibration")
    with pytest.raises(ConfigError, match=r"settings: \['occ_direction'\] are set by this notebook itself"):
        setup({**namespace, "settings": {"occ_direction": "forward"}}, "04_occ_calibration")
    with pytest.raises(ConfigError, match="seeds"):
        setup({**namespace, "seeds": [1, 1]}, "04_occ_calibration")
    with pytest.raises(ConfigError, match=r"notebook: 'mine' is neither a study notebook \(01_data, "):
        setup(namespace, "mine")
    own = tmp_path / "mine.ipynb"  # a user's own notebook, by its path
    shutil.copy(NB04, own)
    assert setup(namespace, str(own))[1] == [0, 2]
    paths = "# Parameters\nseeds = [0]\nPAPERMILL_INPUT_PATH = 'in.ipynb'\n"  # papermill --inject-paths
    setup({**namespace, "PAPERMILL_INPUT_PATH": "in.ipynb", "In": ["", paths]}, "04_occ_calibration")
    injected = "# Parameters\nmax_lenght = 32\n"  # as papermill injects it, which only warns about the typo
    with pytest.raises(ConfigError, match=r"unknown parameter 'max_lenght'; did you mean 'max_length'\?"):
        setup({**namespace, "max_lenght": 32, "In": ["", "seeds = [0]", injected]}, "04_occ_calibration")


@pytest.mark.parametrize("long_folder", [False, True])
def test_kernels_get_their_own_socket_names_in_a_short_enough_folder(long_folder, tmp_path, monkeypatch):
    """Unix sockets in Jupyter's runtime folder, under a name of their own; a folder too long for a socket path
    gives way to the temporary folder. A real run of the sockets: the runner tests' quiet rerun."""
    import shutil
    import tempfile

    from darl_utils.notebooks import SOCKET_FOLDER_LIMIT, socket_kernel_manager
    folder = tmp_path / ("x" * 80) if long_folder else Path(tempfile.mkdtemp(prefix="rt-"))
    assert (len(str(folder)) > SOCKET_FOLDER_LIMIT) == long_folder
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(folder))
    manager_class = socket_kernel_manager()
    first, second = manager_class(kernel_name="python3"), manager_class(kernel_name="python3")
    assert first.transport == "ipc" and first.ip != second.ip
    assert Path(first.ip).parent == (Path(tempfile.gettempdir()) if long_folder else folder)
    assert len(first.ip) + 3 < 107  # "-<n>" is added per channel
    shutil.rmtree(folder, ignore_errors=True)


def test_a_kernel_shuts_down_on_request_without_a_sigint():
    """jupyter_client interrupts a kernel before asking it to shut down; a SIGINT that lands while the last cell's
    handler is returning prints "KeyboardInterrupt caught in kernel" on the runner's output. Ours only asks."""
    import asyncio
    import signal

    from darl_utils.notebooks import socket_kernel_manager

    async def shut_down() -> tuple[list, bool, bool]:
        manager = socket_kernel_manager()(kernel_name="python3")
        await manager.start_kernel()
        signals, real = [], manager._async_signal_kernel

        async def recording(signum):
            signals.append(signum)
            await real(signum)
        manager._async_signal_kernel = recording
        await manager._async_interrupt_kernel()  # outside a shutdown, interrupts still reach the kernel
        await manager.shutdown_kernel()
        return signals, await manager.is_alive(), manager.has_kernel

    signals, alive, has_kernel = asyncio.run(shut_down())
    assert signals == [signal.SIGINT] and not alive and not has_kernel


def test_papermill_run_directly_refuses_a_typo_in_the_validation_cell(tmp_path, pairs_csv, tiny_encoder):
    """Without the runner: papermill itself only warns about an unknown parameter and runs on the default."""
    import papermill
    params = {**smoke_parameters(pairs_csv, tiny_encoder, tmp_path / "out"), "max_lenght": 40}
    with pytest.raises(PapermillExecutionError, match=r"unknown parameter 'max_lenght'; did you mean 'max_length'"):
        papermill.execute_notebook(str(NB03), str(tmp_path / "out.ipynb"), parameters=params, kernel_name="python3",
                                   progress_bar=False, cwd=str(NB03.parents[1]))
    assert not (tmp_path / "out" / "results.jsonl").exists()
