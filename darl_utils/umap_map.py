"""The UMAP map of a DASA selection (notebook 02): the source model's features of train, the pool (selected or
not, ID or OOD) and ood_test, embedded in 2-D. Where umap-learn is missing (an offline GPU node) the map's inputs
are saved beside the selection instead, and `darl-study umap` draws it elsewhere.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
from safetensors.numpy import load_file, save_file

from .dasa import load_scores
from .results import cached_path

UMAP_GROUPS = ("train", "pool_id", "pool_ood", "selected", "ood_test")


class UmapUnavailable(RuntimeError):
    """umap-learn cannot be imported here (an offline GPU node has none): the map's inputs were saved instead,
    for `darl-study umap` to draw it where umap-learn is installed."""

    def __init__(self, inputs: Path, reason: str):
        self.inputs = inputs
        super().__init__(f"umap-learn is not installed here ({reason}), so no map: its inputs are saved as "
                         f"{inputs.name} beside the selection; draw it later with `darl-study umap FOLDER`")


def umap_embedding(record: dict, per_group: int = 1000, seed: int = 0) -> pd.DataFrame:
    """A 2-D UMAP map of the source model's features (the representation DASA scored): train, pool_id and
    pool_ood (not selected), the selected pool pairs and ood_test, at most `per_group` points each (drawn with
    `seed`). Cached beside the selection. Where umap-learn cannot be imported, the points and their groups are
    saved there instead (umap-inputs-PER_GROUP-SEED.safetensors) and UmapUnavailable says so."""
    folder = cached_path(record["folder"])
    path = folder / f"umap-{per_group}-{seed}.safetensors"
    if not path.exists():
        points, codes = umap_points(record, per_group, seed)
        try:
            xy = fit_umap(points, seed)
        except ImportError as e:
            inputs = folder / f"umap-inputs-{per_group}-{seed}.safetensors"
            save_umap_inputs(inputs, points, codes, seed, record["settings"]["dasa_features"])
            raise UmapUnavailable(inputs, str(e)) from None
        partial = path.with_suffix(".tmp")
        save_file({"xy": np.ascontiguousarray(xy, dtype=np.float32), "group": codes}, str(partial))
        partial.replace(path)
    saved = load_file(str(path))
    return umap_frame(saved["xy"], saved["group"])


def umap_points(record: dict, per_group: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The down-sampled features of every group of the map and each point's group code (index in UMAP_GROUPS)."""
    scores = load_scores(record)
    name = record["settings"]["dasa_features"]
    read = lambda part: load_file(str(cached_path(record["features"][part])))[name]  # noqa: E731
    pool = read("pool")
    selected, is_ood = scores["pool"]["selected"] == 1, scores["pool"]["is_ood"] == 1
    groups = {"train": read("train"), "pool_id": pool[~is_ood & ~selected], "pool_ood": pool[is_ood & ~selected],
              "selected": pool[selected], "ood_test": read("ood_test")}
    rng = np.random.default_rng(seed)
    points, codes = [], []
    for code, group in enumerate(UMAP_GROUPS):
        x = groups[group]
        x = x[np.sort(rng.permutation(len(x))[:per_group])]
        points.append(x)
        codes.append(np.full(len(x), code, dtype=np.int64))
    return np.concatenate(points), np.concatenate(codes)


def fit_umap(points: np.ndarray, seed: int) -> np.ndarray:
    """The 2-D embedding (ImportError where umap-learn is missing)."""
    import umap  # slow to import (numba): only here
    return umap.UMAP(n_neighbors=15, min_dist=0.1, metric="cosine", random_state=seed).fit_transform(points)


def umap_frame(xy: np.ndarray, codes: np.ndarray) -> pd.DataFrame:
    return pd.DataFrame({"x": xy[:, 0], "y": xy[:, 1], "group": np.array(UMAP_GROUPS)[codes]})


def save_umap_inputs(path: Path, points: np.ndarray, codes: np.ndarray, seed: int, representation: str) -> None:
    """The map's inputs, features in float16 (a few MB for 5 x 1000 points), to be embedded elsewhere."""
    partial = path.with_suffix(".tmp")
    save_file({"features": np.ascontiguousarray(points, dtype=np.float16), "group": codes}, str(partial),
              metadata={"seed": str(seed), "representation": representation, "groups": json.dumps(UMAP_GROUPS)})
    partial.replace(path)


def umap_from_inputs(path: str | Path) -> pd.DataFrame:
    """The map of inputs saved where umap-learn was missing (see umap_embedding), embedded here."""
    from safetensors import safe_open
    with safe_open(str(path), framework="numpy") as f:
        meta = f.metadata() or {}
    if json.loads(meta.get("groups", "null")) != list(UMAP_GROUPS):
        raise ValueError(f"{Path(path).name}: not the inputs of a UMAP map (umap-inputs-*.safetensors)")
    saved = load_file(str(path))
    xy = fit_umap(saved["features"].astype(np.float32), int(meta["seed"]))
    return umap_frame(xy, saved["group"])
