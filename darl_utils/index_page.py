"""The report's index.html: the main table (notebook 05), the alpha sweep (notebook 03), each notebook's status,
run time and page, every evaluated model, and the provenance (commit, date, machine, versions). Written from the
results files after each notebook, so an interrupted run still has its index.
"""
from __future__ import annotations

import base64
import html
import io
import subprocess
import time
from pathlib import Path

from .notebooks import NOTEBOOKS

PACKAGES = ("torch", "transformers", "scikit-learn", "numpy", "pandas", "papermill", "nbconvert", "umap-learn",
            "faiss-cpu", "torchmetrics")


def provenance() -> dict:
    """Commit, date, hardware and package versions, for the index."""
    from importlib.metadata import PackageNotFoundError, version

    from .cache import environment
    try:
        git = lambda *a: subprocess.run(["git", *a], cwd=NOTEBOOKS.parent, capture_output=True, text=True,  # noqa: E731
                                        timeout=10).stdout.strip()
        commit = git("rev-parse", "--short", "HEAD") or "unknown"
        if commit != "unknown" and git("status", "--porcelain", "--untracked-files=no"):
            commit += " with uncommitted changes"
    except (OSError, subprocess.SubprocessError):
        commit = "unknown"
    versions = {}
    for package in PACKAGES:
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            versions[package] = "not installed"
    env = environment()
    return {"commit": commit, "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "device": env["device"],
            "python": env["python"], "versions": versions}


def write_index(out: Path, profile: str, statuses: list[dict], resolved: dict) -> None:
    """index.html: the main table (notebook 05), the alpha sweep (notebook 03), each notebook's status, run time
    and page, every evaluated model, and the provenance."""
    info = provenance()
    e = html.escape
    link = lambda s: (f"<a href=\"{e(s['page'])}\">{e(s['notebook'])}</a>" if s["page"]  # noqa: E731
                      else e(s["notebook"]))
    named = {s["notebook"]: f"<tr><td>{link(s)}</td>"
             f"<td class=\"{e(s['status'])}\">{e(s['status'])}</td><td>{s['seconds']:.0f} s</td>"
             f"<td>{e(s.get('ran', ''))}{' (unchanged: kept)' if s.get('kept') else ''}</td>"
             f"<td>{e(s['error'] or '')}</td></tr>" for s in statuses}
    for nb in resolved:
        named.setdefault(nb.name, f"<tr><td>{e(nb.name)}</td><td>pending</td><td></td><td></td><td></td></tr>")
    rows = "".join(named[n] for n in sorted(named))  # name order, whichever ran first (report --first)
    total = sum(s["seconds"] for s in statuses) / 60
    rows += f"<tr><th>all</th><td></td><th>{total:.1f} min</th><td></td><td></td></tr>"
    versions = ", ".join(f"{e(k)} {e(v)}" for k, v in info["versions"].items())
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>darl-study: {e(profile)}</title>
<style>body{{font-family:sans-serif;max-width:75em;margin:2em auto}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:.25em .6em;text-align:left}}table.main td{{white-space:nowrap}}
.failed{{color:#b00;font-weight:bold}}
.finished{{color:#070}}img{{max-width:100%}}</style></head><body>
<h1>darl-study report: profile {e(profile)}</h1>
<p>commit {e(info['commit'])} · {e(info['date'])} · {e(info['device'])} · Python {e(info['python'])}</p>
<p>{versions}</p>
<h2>Main table (notebook 05; mean ± sd over seeds, best in bold)</h2>
{main_table(out)}
<p>macro-F1 over the three degrees on id_test (ID) and ood_test (OOD); ECE with 15 bins; nDCG@10 per query by
expected relevance. Best: highest F1 and nDCG, lowest ECE, gap closest to zero. "− FT [95 % CI]": the model's
macro-F1 minus FT's with its 95 % interval from a paired bootstrap over test queries; an interval that contains 0
cannot tell the model from FT. The verdicts on each claim are on the notebook pages.</p>
<h2>LPFT: macro-F1 against alpha (notebook 03)</h2>
{alpha_sweep_figure(out)}
<h2>Notebooks</h2>
<table id="notebooks"><tr><th>notebook</th><th>status</th><th>run time</th><th>ran</th><th>error</th></tr>{rows}</table>
<details><summary>Every evaluated model of every notebook (results/*/results.jsonl)</summary>
{results_table(out)}
</details>
</body></html>
"""
    partial = out / "index.html.tmp"
    partial.write_text(page, encoding="utf-8")
    partial.replace(out / "index.html")


def main_table(out: Path) -> str:
    """The main table of notebook 05, from its results.jsonl, as escaped HTML with the best in bold."""
    from .results import read_records
    from .tables import MAIN_COLUMNS, bold_best_table, main_frame, main_table_html, results_frame
    path = out / "results" / "05_evaluation" / "results.jsonl"
    if not path.exists():
        return "<p>Notebook 05 has no results yet.</p>"
    table = main_frame(results_frame(read_records(path)))
    if not len(table):
        return "<p>Notebook 05 has no results yet.</p>"
    try:
        body = main_table_html(table)
    except (OSError, ValueError) as e:  # predictions moved or from before the intervals: the table without them
        print(f"index: no differences to FT ({e})", flush=True)
        body = bold_best_table(table, MAIN_COLUMNS)
    return body + alpha_star_line(table)


def alpha_star_line(table) -> str:
    """Which alpha each interpolated model of the main table read, per seed: alpha* is chosen on id_val."""
    chosen = table[table["model"].str.startswith(("LPFT (alpha*", "DaRL")) & table["selected"].fillna(False)
                   .astype(bool)]
    if not len(chosen):
        return ""
    per_model = chosen.groupby("model", sort=False)["alpha"].apply(lambda a: ", ".join(f"{v:g}" for v in a))
    listed = " · ".join(f"{html.escape(m)} {v}" for m, v in per_model.items())
    return (f"<p>alpha*, chosen on id_val (per seed): {listed}. \"LPFT (alpha 0.6)\" is the paper's alpha, "
            "reported beside it.</p>")


def alpha_sweep_figure(out: Path) -> str:
    """The alpha-sweep figure of the LPFT runs (notebook 03, else 05) as an inline PNG."""
    import matplotlib
    matplotlib.use("Agg")  # the runner has no display
    import matplotlib.pyplot as plt

    from .figures import plot_alpha_sweep
    from .results import run_records
    from .tables import results_frame, sweep_frame
    for notebook in ("03_lpft_alpha_sweep", "05_evaluation"):
        runs = run_records(out / "results" / notebook)
        lpft = [r for r in runs if r.get("method") == "LPFT" and "sweep" in r]
        if lpft:
            break
    else:
        return "<p>No LPFT run yet.</p>"
    ft = [r for r in runs if r.get("method") == "FT"]
    fig = plot_alpha_sweep(sweep_frame(lpft), results_frame(ft) if ft else None)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=72, bbox_inches="tight")
    plt.close(fig)
    return (f'<img id="alpha-sweep" alt="macro-F1 of LPFT against alpha on id_val, id_test and ood_test" '
            f'src="data:image/png;base64,{base64.b64encode(buffer.getvalue()).decode()}">')


def results_table(out: Path) -> str:
    """Every evaluated model of the run's notebooks: ID and OOD macro-F1, gap and ECE, as escaped HTML."""
    import pandas as pd

    from .results import report_records
    from .tables import comparison, mean_sd, results_frame
    records = report_records(out)
    if not records:
        return "<p>No results yet.</p>"
    frame = comparison(results_frame(records))
    # the same model can be evaluated by several notebooks (shared through the cache, or LP inside two LPFT
    # runs): count it once per seed
    frame = frame.drop_duplicates(subset=["model", "seed", "id_macro_f1", "ood_macro_f1"])
    # a loss swept over rho (notebook 04) is several models under one name: name each by its rho
    swept = frame.groupby("model")["rho"].transform("nunique") > 1
    occ = frame["model"].str.contains(r"\+(?:OCC|LS)")
    frame.loc[swept & occ, "model"] = frame["model"] + frame["rho"].map(lambda r: f" (rho {r:g})")
    columns = [c for c in ("id_macro_f1", "ood_macro_f1", "gap", "id_ece", "ood_ece") if c in frame]
    table = mean_sd(frame, ["model"], columns)
    return pd.DataFrame(table).to_html(escape=True, table_id="results")
