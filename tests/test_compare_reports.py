"""scripts/compare_reports.py, the refactor check: equal results pass whatever their times and cache names, one
changed number fails and is named."""
import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("compare_reports", ROOT / "scripts" / "compare_reports.py")
compare = importlib.util.module_from_spec(spec)
spec.loader.exec_module(compare)


def write_report(folder: Path, f1: float, run: str, seconds: float) -> Path:
    lines = [{"method": "FT", "run_key": run, "seconds": seconds, "finished": f"2026-11-27 0{int(seconds)}:00",
              "config": {"seed": 0, "out_dir": str(folder), "backbone": str(folder / "model")},
              "augmentation": {"folder": f"augment/dasa-{run}", "budget": 40},
              "id_test": {"macro_f1": f1}, "ood_test": {"macro_f1": 0.5}},
             {"method": "LP", "run_key": run, "id_test": {"macro_f1": 0.4}, "ood_test": {"macro_f1": 0.3}}]
    out = folder / "results" / "03_lpft_alpha_sweep"
    out.mkdir(parents=True)
    (out / "results.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    return folder


def test_same_numbers_with_other_times_and_cache_names_pass(tmp_path, capsys):
    before = write_report(tmp_path / "a", 0.61, "abc", 3.0)
    after = write_report(tmp_path / "b", 0.61, "def", 5.0)
    assert compare.main([str(before), str(after)]) == 0
    assert "2 of 2 result lines identical" in capsys.readouterr().out


def test_a_changed_number_fails_and_is_named(tmp_path, capsys):
    before = write_report(tmp_path / "a", 0.61, "abc", 3.0)
    after = write_report(tmp_path / "b", 0.62, "abc", 3.0)
    assert compare.main([str(before), str(after)]) == 1
    out = capsys.readouterr().out
    assert "1 of 2 result lines identical" in out and "line 1 (03_lpft_alpha_sweep, FT): id_test differ" in out


def test_a_folder_without_results_is_one_clear_error(tmp_path):
    with pytest.raises(SystemExit, match="holds no results"):
        compare.main([str(tmp_path), str(tmp_path)])


def test_results_kept_from_a_notebooks_earlier_run_are_not_compared(tmp_path, capsys):
    before = write_report(tmp_path / "a", 0.61, "abc", 3.0)
    after = write_report(tmp_path / "b", 0.61, "abc", 3.0)
    older = after / "results" / "03_lpft_alpha_sweep.previous"
    older.mkdir()
    (older / "results.jsonl").write_text(json.dumps({"method": "FT", "id_test": {"macro_f1": 0.1}}) + "\n")
    assert compare.main([str(before), str(after)]) == 0
