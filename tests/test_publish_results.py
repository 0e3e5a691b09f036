"""scripts/publish_results.py: a node's finished notebooks, with the node's paths made relative."""
import json
import runpy

import pytest
import yaml

from test_training import ROOT

publish = runpy.run_path(str(ROOT / "scripts" / "publish_results.py"))["publish"]


def unpacked_archive(folder):
    report = folder / "reports" / "full-node"
    (report / "results" / "02_ood_detection").mkdir(parents=True)
    (report / "results" / "04_occ_calibration").mkdir(parents=True)
    ledger = {"01_data.ipynb": {"status": "finished"}, "02_ood_detection.ipynb": {"status": "finished"},
              "04_occ_calibration.ipynb": {"status": "running"}}
    (report / "ledger.json").write_text(json.dumps(ledger))
    for stem in ("index", "01_data", "02_ood_detection", "04_occ_calibration"):
        (report / f"{stem}.html").write_text(f"<pre>{stem}: backbone /node/bundle/minilm, splits in "
                                             "/node/job/cache/splits</pre>")
    for stem in ("02_ood_detection", "04_occ_calibration"):
        line = {"config": {"backbone": "/node/bundle/minilm", "data": "/node/bundle/data/train.csv.gz",
                           "out_dir": f"/node/job/reports/full-node/results/{stem}"}}
        (report / "results" / stem / "results.jsonl").write_text(json.dumps(line) + "\n")
    (folder / "full-node.yaml").write_text(yaml.safe_dump({"all": {"data": "/node/bundle/data/train.csv.gz"}}))
    (folder / "benchmarks").mkdir()
    (folder / "benchmarks" / "throughput.jsonl").write_text(json.dumps({"out_dir": "/node/job/benchmarks"}) + "\n")
    return folder


def test_only_finished_notebooks_are_published_with_relative_paths(tmp_path):
    dest = tmp_path / "docs" / "results" / "full"
    copied = publish(unpacked_archive(tmp_path / "run"), dest)
    assert copied == ["01_data.ipynb", "02_ood_detection.ipynb"]
    assert sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file()) == [
        "01_data.html", "02_ood_detection.html", "benchmarks/throughput.jsonl", "index.html", "ledger.json",
        "results/02_ood_detection/results.jsonl"]
    assert json.loads((dest / "benchmarks" / "throughput.jsonl").read_text()) == {"out_dir": "gpu-run/benchmarks"}
    [line] = (dest / "results" / "02_ood_detection" / "results.jsonl").read_text().splitlines()
    assert json.loads(line)["config"] == {"backbone": "gpu-bundle/minilm", "data": "gpu-bundle/data/train.csv.gz",
                                          "out_dir": "gpu-run/reports/full-node/results/02_ood_detection"}
    assert (dest / "01_data.html").read_text() == ("<pre>01_data: backbone gpu-bundle/minilm, splits in "
                                                   "gpu-run/cache/splits</pre>")
    assert not any("/node/" in p.read_text() for p in dest.rglob("*") if p.is_file())


def test_a_folder_that_is_not_an_unpacked_archive_is_named(tmp_path):
    with pytest.raises(SystemExit, match="holds 0 report folders"):
        publish(tmp_path, tmp_path / "dest")
    assert not (tmp_path / "dest").exists()  # nothing written before the check


def test_relative_or_root_paths_are_left_alone(tmp_path):
    """A profile whose data is relative (or synthetic) names no bundle folder: nothing is replaced, not every '.'"""
    folder = unpacked_archive(tmp_path / "run")
    (folder / "full-node.yaml").write_text(yaml.safe_dump({"all": {"data": "synthetic"}}))
    line = folder / "reports" / "full-node" / "results" / "02_ood_detection" / "results.jsonl"
    line.write_text(json.dumps({"config": {"out_dir": "reports/full-node/results/02_ood_detection"}}) + "\n")
    publish(folder, tmp_path / "dest")
    assert (tmp_path / "dest" / "01_data.html").read_text() == (folder / "reports" / "full-node" /
                                                                "01_data.html").read_text()
