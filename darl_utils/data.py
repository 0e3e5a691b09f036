"""Loading (query, item, degree) pairs from Home Depot, WANDS or any CSV/TSV.

Every loader returns a `Pairs`: one frame with the columns

    query, item, label (0 irrelevant, 1 weak, 2 strong), item_id, group (or None), row

where `row` is the record of the source file the pair came from (the header is row 1; a quoted line break
inside a field does not start a new row), so that any later error can point at it. Bad input raises `DataError`
naming the file, the row and the problem; whatever a loader drops by design (exact duplicate pairs) is counted
in `Pairs.dropped`.
"""
from __future__ import annotations

import html
import os
import shutil
import urllib.request
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

DEGREES = ("irrelevant", "weak", "strong")  # ordered: index = degree, higher = more relevant
DEGREE_INDEX = {name: i for i, name in enumerate(DEGREES)}

# Home Depot mean ratings (1..3) to degrees: upper bounds of irrelevant and weak (docs/STUDY.md section 2).
HOMEDEPOT_SCHEMES = {"strict": (2.0, 2.67), "round": (1.5, 2.5)}
WANDS_LABELS = {"Irrelevant": 0, "Partial": 1, "Exact": 2}
WANDS_URL = "https://raw.githubusercontent.com/wayfair/WANDS/main/dataset/{name}"
WANDS_FILES = ("query.csv", "product.csv", "label.csv")

COLUMNS = ["query", "item", "label", "item_id", "group", "row"]


def project_root() -> Path:
    """The checkout this package sits in (notebooks run from there), else the working directory."""
    here = Path(__file__).resolve().parents[1]
    return here if (here / "pyproject.toml").exists() else Path.cwd()


def cache_dir() -> Path:
    """Where converted models, splits and checkpoints are cached: DARL_CACHE, default data/cache."""
    return Path(os.environ.get("DARL_CACHE") or project_root() / "data" / "cache")


class DataError(ValueError):
    """Bad input data; the message names the file, the row and the problem."""


@dataclass
class Pairs:
    frame: pd.DataFrame
    source: str
    dropped: dict = field(default_factory=dict)  # reason -> count, for what was dropped by design

    def __len__(self) -> int:
        return len(self.frame)


def _read_table(path: Path, sep: str, encoding: str, **kw) -> pd.DataFrame:
    if path.is_dir():
        raise DataError(f"{path}: is a folder; expected a file")
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        return pd.read_csv(path, sep=sep, encoding=encoding, dtype=str, keep_default_na=False, **kw)
    except LookupError:
        raise DataError(f"{path}: unknown encoding {encoding!r}") from None
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: {_decode_error_where(path, encoding)} is not valid {encoding} ({e.reason}); "
                        f"pass the file's encoding") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as e:
        raise DataError(f"{path}: malformed {'TSV' if sep == chr(9) else 'CSV'}: {e}") from None
    except (OSError, EOFError, zlib.error) as e:  # a truncated or mislabelled compressed file
        raise DataError(f"{path}: cannot be read ({type(e).__name__}: {e})") from None


def _decode_error_where(path: Path, encoding: str) -> str:
    """'row N' of the first line that does not decode (header = row 1)."""
    opener = _open_maybe_gzip(path)
    with opener as f:
        for n, line in enumerate(f, start=1):
            try:
                line.decode(encoding)
            except UnicodeDecodeError:
                return f"row {n}"
    return "a byte sequence"


def _open_maybe_gzip(path: Path):
    import gzip
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def _require_columns(df: pd.DataFrame, needed: list[str], path: Path) -> None:
    missing = [c for c in needed if c not in df.columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {missing}; the file has {[c for c in df.columns if c != 'row']}")


def _clean_text(s: pd.Series) -> pd.Series:
    # HTML entities (&#39;) appear in Home Depot titles; unescape and collapse whitespace.
    return s.map(html.unescape).str.replace(r"\s+", " ", regex=True).str.strip()


def _check_text(df: pd.DataFrame, column: str, path: Path) -> None:
    empty = df[column].isna() | (df[column].astype(str).str.strip().str.len() == 0)
    if empty.any():
        row = int(df.loc[empty, "row"].iloc[0])
        raise DataError(f"{path}: row {row}: empty or NaN text in column '{column}' "
                        f"({int(empty.sum())} such row(s))")
    nul = df[column].astype(str).str.contains("\x00", regex=False)  # a binary or truncated file, not text
    if nul.any():
        row = int(df.loc[nul, "row"].iloc[0])
        raise DataError(f"{path}: row {row}: NUL byte in column '{column}' ({int(nul.sum())} such row(s)); "
                        "is this a text file?")


def _dedupe(df: pd.DataFrame, path: Path) -> tuple[pd.DataFrame, int]:
    """Drop exact duplicate (query, item_id) pairs; refuse duplicates whose labels conflict."""
    key = ["query", "item_id"]
    dup = df.duplicated(key, keep=False)
    if not dup.any():
        return df, 0
    conflicts = df[dup].groupby(key)["label"].nunique()
    conflicts = conflicts[conflicts > 1]
    if len(conflicts):
        q, i = conflicts.index[0]
        rows = df[(df["query"] == q) & (df["item_id"] == i)]
        raise DataError(f"{path}: rows {rows['row'].tolist()}: duplicate pair (query {q!r}, item {i!r}) "
                        f"with conflicting labels {[DEGREES[x] for x in rows['label']]}")
    before = len(df)
    df = df.drop_duplicates(key, keep="first")
    return df, before - len(df)


def _merge_cleaned_duplicates(df: pd.DataFrame) -> tuple[pd.DataFrame, int, int]:
    """Pairs that became one only through cleaning ("fence  mesh" / "fence mesh"): two ratings of different
    raw queries. Same label: keep one. Different labels: no single gold degree, drop all. Both are counted."""
    key = ["query", "item_id"]
    dup = df.duplicated(key, keep=False)
    if not dup.any():
        return df, 0, 0
    conflicting = dup & (df.groupby(key)["label"].transform("nunique") > 1)
    df = df[~conflicting]
    before = len(df)
    df = df.drop_duplicates(key, keep="first")
    return df, before - len(df), int(conflicting.sum())


def _finish(df: pd.DataFrame, path: Path, dropped: dict | None = None) -> Pairs:
    if df.empty:  # a header and no rows: say so here, not later as an empty split part
        raise DataError(f"{path}: no rows of data (only a header)")
    dropped = dict(dropped or {})
    for column in ("query", "item", "item_id"):
        _check_text(df, column, path)
    # Duplicates in the file as written: same label dropped, conflicting labels refused.
    df, dropped["duplicate_pair_same_label"] = _dedupe(df, path)
    for column in ("query", "item"):
        df[column] = _clean_text(df[column])
        _check_text(df, column, path)
    df, same, conflicting = _merge_cleaned_duplicates(df)
    dropped["same_after_cleaning_same_label"] = same
    dropped["same_after_cleaning_conflicting_labels"] = conflicting
    df = df[COLUMNS].reset_index(drop=True)
    df["label"] = df["label"].astype(np.int64)
    df["row"] = df["row"].astype(np.int64)
    return Pairs(df, str(path), dropped)


def _number_rows(df: pd.DataFrame) -> pd.DataFrame:
    df = df.copy()
    df["row"] = np.arange(2, len(df) + 2)  # record numbers; the header is row 1
    return df


def map_labels(values: pd.Series, mapping: dict, rows: pd.Series, path: Path) -> pd.Series:
    mapped = values.map(mapping)
    bad = mapped.isna()
    if bad.any():
        i = bad.to_numpy().nonzero()[0][0]
        raise DataError(f"{path}: row {int(rows.iloc[i])}: unknown label {values.iloc[i]!r}; "
                        f"expected one of {sorted(map(str, mapping))}")
    return mapped.astype(np.int64)


def rating_to_degree(ratings: pd.Series, scheme: str = "strict") -> pd.Series:
    if scheme not in HOMEDEPOT_SCHEMES:
        raise DataError(f"unknown degree scheme {scheme!r}; expected one of {sorted(HOMEDEPOT_SCHEMES)}")
    low, mid = HOMEDEPOT_SCHEMES[scheme]
    # Ratings are printed to two decimals (2.67 means 8/3); round before comparing against the cut-offs.
    r = ratings.round(2)
    return pd.Series(np.where(r < low, 0, np.where(r < mid, 1, 2)), index=ratings.index, dtype=np.int64)


def load_homedepot(path: str | os.PathLike, scheme: str = "strict") -> Pairs:
    """Home Depot Product Search Relevance `train.csv` (or .gz), Latin-1, mean ratings 1..3."""
    path = Path(path)
    df = _number_rows(_read_table(path, sep=",", encoding="latin-1"))
    _require_columns(df, ["search_term", "product_title", "product_uid", "relevance"], path)
    ratings = pd.to_numeric(df["relevance"], errors="coerce")
    bad = ratings.isna() | (ratings < 1) | (ratings > 3)
    if bad.any():
        i = bad.to_numpy().nonzero()[0][0]
        raise DataError(f"{path}: row {int(df['row'].iloc[i])}: unknown label {df['relevance'].iloc[i]!r}; "
                        f"expected a mean rating between 1 and 3")
    df = df.assign(query=df["search_term"], item=df["product_title"], item_id=df["product_uid"],
                   label=rating_to_degree(ratings, scheme), group=None)
    return _finish(df, path)


def download_wands(directory: str | os.PathLike, url: str = WANDS_URL) -> Path:
    """Fetch the three WANDS files into `directory` when absent (atomic: no half-written file remains)."""
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise DataError(f"{directory}: is a file; WANDS reads a folder")
    directory.mkdir(parents=True, exist_ok=True)
    for name in WANDS_FILES:
        target = directory / name
        if target.exists():
            continue
        tmp = target.with_suffix(".part")
        try:
            with urllib.request.urlopen(url.format(name=name), timeout=60) as r, open(tmp, "wb") as f:
                shutil.copyfileobj(r, f)
        except OSError as e:
            tmp.unlink(missing_ok=True)
            raise DataError(f"{target}: absent, and downloading {url.format(name=name)} failed ({e}); "
                            f"put the WANDS files in {directory} by hand") from None
        tmp.replace(target)
    return directory


def load_wands(directory: str | os.PathLike, download: bool = True, url: str = WANDS_URL) -> Pairs:
    """WANDS (query.csv, product.csv, label.csv, tab-separated); group = the query's `query_class`."""
    directory = Path(directory)
    if download:
        download_wands(directory, url)
    q_path, p_path, l_path = (directory / n for n in WANDS_FILES)
    queries = _read_table(q_path, sep="\t", encoding="utf-8")
    products = _read_table(p_path, sep="\t", encoding="utf-8")
    labels = _number_rows(_read_table(l_path, sep="\t", encoding="utf-8"))
    _require_columns(queries, ["query_id", "query", "query_class"], q_path)
    _require_columns(products, ["product_id", "product_name"], p_path)
    _require_columns(labels, ["query_id", "product_id", "label"], l_path)
    for frame, key, path in ((queries, "query_id", q_path), (products, "product_id", p_path)):
        dup = frame[key].duplicated()
        if dup.any():
            raise DataError(f"{path}: row {int(dup.to_numpy().nonzero()[0][0]) + 2}: duplicate {key} "
                            f"{frame.loc[dup, key].iloc[0]!r}")
    labels["label"] = map_labels(labels["label"], WANDS_LABELS, labels["row"], l_path)
    df = labels.merge(queries, on="query_id", how="left").merge(products, on="product_id", how="left")
    for key, path in (("query", q_path), ("product_name", p_path)):
        unknown = df[key].isna()
        if unknown.any():
            ref = "query_id" if key == "query" else "product_id"
            raise DataError(f"{l_path}: row {int(df.loc[unknown, 'row'].iloc[0])}: {ref} "
                            f"{df.loc[unknown, ref].iloc[0]!r} not found in {path}")
    df = df.sort_values("row").assign(item=df["product_name"], item_id=df["product_id"],
                                      group=df["query_class"].replace("", "(none)"))
    return _finish(df, l_path)


def load_csv(path: str | os.PathLike, query: str = "query", item: str = "item", label: str = "label",
             group: str | None = None, item_id: str | None = None, sep: str | None = None,
             encoding: str = "utf-8", label_map: dict | None = None) -> Pairs:
    """A user's CSV/TSV. Labels: degree names, 0/1/2, or anything `label_map` maps to a degree name or index."""
    path = Path(path)
    if sep is None:
        sep = "\t" if ".tsv" in path.suffixes or ".tab" in path.suffixes else ","
    df = _number_rows(_read_table(path, sep=sep, encoding=encoding))
    _require_columns(df, [c for c in (query, item, label, group, item_id) if c], path)
    mapping = {**{n: i for i, n in enumerate(DEGREES)}, **{str(i): i for i in range(3)}}
    for k, v in (label_map or {}).items():
        if v not in DEGREE_INDEX and v not in range(len(DEGREES)):
            raise DataError(f"label_map: {k!r} -> {v!r}; a label maps to one of {list(DEGREES)} or 0, 1, 2")
        mapping[str(k)] = DEGREE_INDEX[v] if isinstance(v, str) else int(v)
    raw = df[label].str.strip()
    df["label"] = map_labels(raw.str.lower().where(raw.str.lower().isin(DEGREES), raw), mapping, df["row"], path)
    df = df.assign(query=df[query], item=df[item],
                   item_id=df[item_id] if item_id else df[item],
                   group=df[group] if group else None)
    if group:
        _check_text(df, "group", path)
    return _finish(df, path)


def load_pairs(dataset: str, path: str | os.PathLike, **options) -> Pairs:
    """Dispatch on the dataset name: 'homedepot' (a file), 'wands' (a folder) or 'csv' (a file)."""
    loaders = {"homedepot": load_homedepot, "wands": load_wands, "csv": load_csv}
    if dataset not in loaders:
        raise DataError(f"unknown dataset {dataset!r}; expected one of {sorted(loaders)}")
    return loaders[dataset](path, **options)
