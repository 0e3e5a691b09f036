"""The runs a report trains: each notebook's job list, as the notebooks themselves ask for them, and the runs
that are new to each notebook once the cache shares what an earlier notebook trained.

`benchmarks/study_budget.py` prices this plan; `workers.py` trains it ahead of the notebooks (`report --jobs`).
tests/test_runner.py checks it against the runs that a real smoke-profile report trains.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from . import pipeline
from .config import LPFT_ONLY, RunConfig
from .notebooks import study_config


def occ_variants(p: dict, base: RunConfig) -> dict[str, RunConfig]:
    """OCC and its two controls (forward KL, label smoothing) as notebooks 04 and 05 build them."""
    occ = replace(base, occ_lambda=p["occ_lambda"], occ_rho=p["occ_rho"], occ_prior=p.get("occ_prior", "ordinal"),
                  occ_direction="reverse")
    return {"occ": occ, "fkl": replace(occ, occ_direction="forward"),
            "ls": replace(occ, occ_prior="uniform", occ_direction="forward")}


def notebook_jobs(name: str, p: dict) -> list[tuple[str, RunConfig]]:
    """(kind, config) of every run the notebook asks for, in its order; kind is 'ft' or 'lpft'. `p` is the
    notebook's parameters as it runs them (its defaults, then the profile's)."""
    base = study_config(p).validate()  # as the runs validate it: `data` resolved, so the cache paths are theirs
    jobs = []
    for seed in p.get("seeds", []):  # 01 trains nothing
        b = replace(base, seed=seed)
        v = occ_variants(p, b) if "occ_lambda" in p else {}
        if name.startswith("02"):
            augments = ["none", "dasa"] + (["random", "length_matched", "oracle"] if p["with_controls"] else [])
            jobs += [("ft", replace(b, augment=a)) for a in augments]
        elif name.startswith("03"):
            jobs += [("ft", b), ("lpft", b)]
        elif name.startswith("04"):
            jobs += [("ft", b), ("ft", v["occ"]), ("ft", v["fkl"]), ("ft", v["ls"])]
            jobs += [("lpft", v["occ"])] if p["with_lpft"] else []
        elif name.startswith("05"):
            jobs += [("ft", b), ("lpft", b), ("ft", v["ls"]), ("ft", v["occ"]), ("ft", v["fkl"])]
            jobs += [("ft", replace(b, augment=a)) for a in ("dasa", "random", "length_matched")]
            jobs += [("lpft", replace(v["occ"], augment="dasa"))]
            if p["with_ablations"]:
                jobs += [("lpft", v["occ"]), ("ft", replace(v["occ"], augment="dasa")),
                         ("lpft", replace(b, augment="dasa"))]
    if name.startswith("04"):  # the rho sweep: FT+OCC at each rho, first seed only
        occ = occ_variants(p, replace(base, seed=p["seeds"][0]))["occ"]
        jobs += [("ft", replace(occ, occ_rho=r)) for r in p["rho_sweep"]]
    return jobs


def run_path(kind: str, cfg: RunConfig) -> Path:
    """The run's cache folder, as run_ft and run_lpft name it."""
    if kind == "ft":
        return pipeline.run_folder(pipeline.method_name("FT", cfg), cfg, exclude=LPFT_ONLY)
    return pipeline.run_folder(pipeline.method_name("LPFT", cfg), cfg, exclude=("alphas",))


def run_identity(kind: str, cfg: RunConfig) -> str:
    """Two jobs with the same cache folder are one training (a new alpha list re-evaluates)."""
    return run_path(kind, cfg).name


def planned_runs(params: dict[str, dict]) -> dict[str, list[tuple[str, RunConfig]]]:
    """Per notebook (in the order given), the runs it trains itself: those no earlier notebook trained with the
    same settings."""
    seen, plan = set(), {}
    for name, p in params.items():
        plan[name] = []
        for kind, cfg in notebook_jobs(name, p):
            if run_identity(kind, cfg) not in seen:
                seen.add(run_identity(kind, cfg))
                plan[name].append((kind, cfg))
    return plan
