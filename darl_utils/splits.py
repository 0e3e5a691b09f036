"""Query-disjoint ID / OOD splits under a named protocol (docs/STUDY.md section 3).

A protocol marks each query in or out of distribution:

- `department`: the query's group is the majority department of its items (Home Depot: derived from titles by
  the keyword rules below; WANDS: `query_class`; a user's CSV: its group column); held-out groups are OOD.
- `query_form`: queries containing a digit (sizes, model numbers, quantities).
- `unseen_words`: queries with a word of 3+ letters that no item text in the data contains.

ID queries are cut into train / id_val / id_test / pool_id, OOD queries into ood_test / pool_ood, by a stable
hash of the query text, so a split depends on its settings only.

Leakage rules (docs/STUDY.md section 3), the same on the ID and the OOD side; a product is matched by item id
or by normalised title (`normalise_title`), since one product can carry several ids:
1. every part but train drops the pairs whose product also appears in train;
2. then the test parts (id_val, id_test, ood_test) drop the pairs whose product also appears in a pool
   (pool_id, pool_ood, as left by rule 1), so augmenting train from a pool cannot carry a test product in.
Each drop is counted per part and rule in `Split.leakage_dropped` (nothing is dropped silently).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from .data import DEGREES, DataError

PROTOCOLS = ("department", "query_form", "unseen_words")
DEFAULT_PROTOCOL = "query_form"  # the largest measured FT ID-OOD gap on Home Depot (docs/measurements.md, notebook 01)
PARTS = ("train", "id_val", "id_test", "pool_id", "ood_test", "pool_ood")
ID_PARTS = ("train", "id_val", "id_test", "pool_id")
OOD_PARTS = ("ood_test", "pool_ood")
POOL_PARTS = ("pool_id", "pool_ood")
TEST_PARTS = ("id_val", "id_test", "ood_test")
HELD_OUT_PARTS = tuple(p for p in PARTS if p != "train")  # the parts the leakage rules filter
# Leakage rules: key in Split.leakage_dropped -> column in the summaries.
DROP_RULES = {"train_product": "dropped: product in train", "pool_product": "dropped: product in a pool"}
_DROPPED = ""  # part label of a pair a leakage rule removed

# Home Depot has no category field: a title's department is the first rule with a keyword in it (whole words;
# order matters: "ceiling fan light kit" is lighting & fans, "bathroom faucet" is bath, not plumbing).
DEPARTMENT_RULES: list[tuple[str, tuple[str, ...]]] = [
    ("appliances", ("refrigerator", "refrigerators", "freezer", "dishwasher", "dishwashers", "microwave",
                    "cooktop", "range hood", "wall oven", "gas range", "electric range", "oven", "dryer",
                    "front load washer", "top load washer", "washing machine", "washer and dryer",
                    "ice maker", "garbage disposal", "range", "vacuum", "dehumidifier", "humidifier",
                    "wine cooler", "beverage cooler", "compactor", "kegerator")),
    ("lighting & fans", ("ceiling fan", "fan", "fans", "light", "lights", "lighting", "lamp", "lamps", "bulb",
                         "bulbs", "chandelier", "sconce", "pendant", "flushmount", "flush mount", "troffer",
                         "lantern", "vanity light", "track lighting", "led", "fluorescent", "halogen",
                         "incandescent", "floodlight", "spotlight", "lumens", "landscape lighting")),
    ("bath", ("toilet", "toilets", "bathroom", "bath", "shower", "tub", "bathtub", "vanity", "lavatory",
              "towel bar", "medicine cabinet", "toilet seat")),
    ("kitchen", ("kitchen", "sink", "faucet", "cabinet", "cabinets", "countertop", "backsplash", "drawer")),
    ("plumbing", ("pipe", "pvc", "valve", "drain", "plumbing", "fitting", "coupling", "elbow", "water heater",
                  "sump pump", "pump", "cpvc", "pex", "tee", "water filter", "hose bibb", "flange")),
    ("electrical", ("outlet", "switch", "wire", "cable", "electrical", "circuit breaker", "breaker", "conduit",
                    "extension cord", "cord", "receptacle", "dimmer", "junction box", "wall plate",
                    "generator", "surge protector", "thermostat", "doorbell", "timer")),
    ("heating & cooling", ("air conditioner", "heater", "furnace", "hvac", "duct", "vent", "air filter",
                           "fireplace", "register", "insulation", "btu")),
    ("flooring", ("flooring", "floor", "tile", "carpet", "laminate", "hardwood", "rug", "rugs", "vinyl plank",
                  "underlayment", "grout", "mosaic")),
    ("paint", ("paint", "primer", "stain", "behr", "sealer", "caulk", "spray paint", "brush", "roller",
               "rust-oleum", "varathane", "minwax", "wallpaper", "enamel", "coating", "epoxy")),
    ("tools", ("drill", "saw", "driver", "wrench", "hammer", "tool", "tools", "socket", "plier", "pliers",
               "screwdriver", "sander", "grinder", "router", "blade", "bit", "bits", "level", "ladder",
               "compressor", "nailer", "cordless", "battery", "chisel", "clamp", "workbench", "tool box")),
    ("outdoor & garden", ("mower", "lawn", "garden", "patio", "grill", "trimmer", "hose", "sprinkler",
                          "planter", "outdoor", "fence", "fencing", "deck", "decking", "shed", "mulch",
                          "soil", "fertilizer", "seed", "leaf blower", "blower", "chainsaw", "tree", "plant",
                          "pool", "pavers", "paver", "snow", "edging", "gazebo", "pergola", "umbrella")),
    ("doors & windows", ("door", "doors", "window", "windows", "blinds", "shade", "shades", "curtain",
                         "storm door", "garage door", "lockset", "knob", "deadbolt", "hinge", "shutter")),
    ("building materials", ("lumber", "plywood", "drywall", "concrete", "cement", "mortar", "moulding",
                            "molding", "trim", "board", "stud", "siding", "roofing", "shingle", "gutter",
                            "joist", "beam", "post", "rebar", "brick", "stone", "baluster", "railing", "rail")),
    ("storage & organization", ("shelf", "shelving", "storage", "organizer", "closet", "bin", "rack", "hook",
                                "hooks", "garage storage", "tote")),
    ("hardware", ("screw", "screws", "bolt", "bolts", "nut", "nuts", "washer", "washers", "anchor", "anchors",
                  "nail", "nails", "bracket", "hardware", "lock", "chain", "rope", "magnet", "tape",
                  "adhesive", "glue", "fastener", "fasteners", "zip tie")),
]
DEFAULT_HELD_OUT = ("appliances", "lighting & fans")
OTHER_DEPARTMENT = "other"

_WORD = re.compile(r"[a-z]+")


def normalise_title(titles: pd.Series) -> pd.Series:
    """Lower case, every run of non-alphanumeric characters as one space, stripped: '3/4 in. PVC  Elbow' and
    '3-4 in pvc elbow' are one product to the leakage rules. Titles arrive HTML-free from the loaders."""
    return titles.str.lower().str.replace(r"[\W_]+", " ", regex=True).str.strip()


def stable_unit(text: str, salt: str) -> float:
    """A number in [0, 1) fixed by the text and the salt (sha1; Python's `hash` changes between runs)."""
    return int(hashlib.sha1(f"{salt}\x00{text}".encode()).hexdigest()[:15], 16) / 16 ** 15


def _rules_pattern():
    return [(dept, re.compile(r"\b(?:" + "|".join(re.escape(k) for k in sorted(words, key=len, reverse=True))
                              + r")\b")) for dept, words in DEPARTMENT_RULES]


def item_department(titles: pd.Series) -> pd.Series:
    """Department of each title by the first matching keyword rule, else 'other'."""
    out = pd.Series(OTHER_DEPARTMENT, index=titles.index, dtype=object)
    lower = titles.str.lower()
    todo = pd.Series(True, index=titles.index)
    for dept, pattern in _rules_pattern():
        hit = todo & lower.str.contains(pattern)
        out[hit] = dept
        todo &= ~hit
    return out


def query_groups(pairs: pd.DataFrame, item_groups: pd.Series) -> pd.Series:
    """Majority group of each query's items (ties broken by name), indexed by query."""
    counts = pd.DataFrame({"query": pairs["query"], "g": item_groups}).value_counts().reset_index(name="n")
    counts = counts.sort_values(["query", "n", "g"], ascending=[True, False, True])
    return counts.drop_duplicates("query").set_index("query")["g"]


def choose_held_out_groups(pairs: pd.DataFrame, groups: pd.Series, fraction: float, seed: int) -> list[str]:
    """Groups in a stable hashed order until they cover `fraction` of the pairs (for data with no default)."""
    share = pairs["query"].map(groups).value_counts(normalize=True)
    order = sorted(share.index, key=lambda g: stable_unit(str(g), f"groups{seed}"))
    chosen, covered = [], 0.0
    for g in order:
        if covered >= fraction:
            break
        chosen.append(g)
        covered += share[g]
    return chosen


def unseen_word_queries(pairs: pd.DataFrame) -> pd.Series:
    """Per query: does it hold a word of 3+ letters that no item text in the data contains?"""
    vocabulary = set()
    for text in pairs["item"].drop_duplicates().str.lower():
        vocabulary.update(_WORD.findall(text))
    queries = pd.Series(pairs["query"].unique())
    flags = queries.str.lower().map(lambda q: any(len(w) >= 3 and w not in vocabulary for w in _WORD.findall(q)))
    return pd.Series(flags.to_numpy(), index=queries)


@dataclass
class SplitConfig:
    protocol: str = DEFAULT_PROTOCOL      # which OOD protocol (see PROTOCOLS)
    held_out: tuple = ()                  # department protocol: OOD groups; () = the dataset's default
    held_out_fraction: float = 0.2        # for data without a default: groups chosen until this share of pairs
    id_fractions: tuple = (0.6, 0.1, 0.15, 0.15)  # train, id_val, id_test, pool_id shares of ID queries
    ood_test_fraction: float = 0.5        # ood_test share of OOD queries; the rest is pool_ood
    seed: int = 0                         # salt of the query hash
    drop_leakage: bool = True             # the leakage rules: non-train parts drop products in train, test
                                          # parts products in a pool (module docstring); False: keep all

    def validate(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"protocol: unknown {self.protocol!r}; expected one of {list(PROTOCOLS)}")
        if len(self.id_fractions) != 4 or min(self.id_fractions) < 0 or abs(sum(self.id_fractions) - 1) > 1e-6:
            raise ValueError(f"id_fractions: {self.id_fractions} must be 4 non-negative shares summing to 1")
        if not 0 < self.ood_test_fraction <= 1:
            raise ValueError(f"ood_test_fraction: {self.ood_test_fraction} must be in (0, 1]")
        if not 0 < self.held_out_fraction < 1:
            raise ValueError(f"held_out_fraction: {self.held_out_fraction} must be in (0, 1)")


@dataclass
class Split:
    parts: dict                           # part name -> DataFrame of pairs
    config: SplitConfig
    ood_queries: int = 0
    held_out: list = field(default_factory=list)
    leakage_dropped: dict = field(default_factory=dict)  # part -> {rule: pairs dropped}, see DROP_RULES
    load_dropped: dict = field(default_factory=dict)  # what the loader dropped by design
    directory: str = ""                               # where it was saved

    def __getitem__(self, part: str) -> pd.DataFrame:
        return self.parts[part]

    def summary(self) -> pd.DataFrame:
        rows = []
        for name in PARTS:
            df = self.parts[name]
            counts = np.bincount(df["label"], minlength=3) if len(df) else np.zeros(3)
            rows.append({"part": name, "pairs": len(df), "queries": df["query"].nunique(),
                         "items": df["item_id"].nunique(),
                         **{f"% {d}": round(100 * c / max(len(df), 1), 1) for d, c in zip(DEGREES, counts)},
                         **{column: self.dropped(name, rule) for rule, column in DROP_RULES.items()}})
        return pd.DataFrame(rows).set_index("part")

    def dropped(self, part: str, rule: str) -> int:
        """Pairs of `part` that the leakage `rule` removed (0 for train, and when the rules were off)."""
        return self.leakage_dropped.get(part, {}).get(rule, 0)

    def total_dropped(self, parts=PARTS) -> int:
        """Pairs the leakage rules removed from `parts`, all rules together."""
        return sum(self.dropped(p, rule) for p in parts for rule in DROP_RULES)

    def dropped_frame(self) -> pd.DataFrame:
        """Per part: pairs assigned before the leakage rules, what each rule dropped, pairs kept, % dropped."""
        rows = []
        for name in PARTS:
            after, gone = len(self.parts[name]), self.total_dropped((name,))
            rows.append({"part": name, "pairs before": after + gone,
                         **{column: self.dropped(name, rule) for rule, column in DROP_RULES.items()},
                         "pairs after": after, "% dropped": round(100 * gone / max(after + gone, 1), 1)})
        return pd.DataFrame(rows).set_index("part")

    def save(self, directory: str | Path) -> Path:
        """Parts as CSV, the summary and the settings; written aside, then moved in whole."""
        directory = Path(directory)
        tmp = directory.with_name(f"{directory.name}.part{os.getpid()}")
        tmp.mkdir(parents=True, exist_ok=True)
        for name, df in self.parts.items():
            df.to_csv(tmp / f"{name}.csv.gz", index=False)
        self.summary().to_csv(tmp / "summary.csv")
        meta = {"config": asdict(self.config), "held_out": self.held_out, "ood_queries": self.ood_queries,
                "leakage_dropped": self.leakage_dropped, "load_dropped": self.load_dropped}
        (tmp / "split.json").write_text(json.dumps(meta, indent=2, default=str))
        if directory.exists():
            shutil.rmtree(directory, ignore_errors=True)
        try:
            tmp.replace(directory)
        except OSError:  # another process (a report's worker) saved it meanwhile: the same split, kept
            if not (directory / "split.json").exists():
                raise
            shutil.rmtree(tmp)
        return directory


def ood_mask(pairs: pd.DataFrame, config: SplitConfig, dataset: str = "csv") -> tuple[pd.Series, list]:
    """Per pair: is its query OOD under the protocol? Also returns the held-out groups (department only)."""
    if config.protocol == "query_form":
        return pairs["query"].str.contains(r"\d"), []
    if config.protocol == "unseen_words":
        return pairs["query"].map(unseen_word_queries(pairs)), []
    if pairs["group"].isna().all():
        if dataset != "homedepot":
            raise DataError("protocol 'department' needs a group column (WANDS query_class or a CSV group "
                            "column); this data has none")
        groups = query_groups(pairs, item_department(pairs["item"]))
        held = list(config.held_out or DEFAULT_HELD_OUT)
    else:
        # WANDS and user CSVs give the group per pair; a query's group is its majority.
        groups = query_groups(pairs, pairs["group"])
        held = list(config.held_out) or choose_held_out_groups(pairs, groups, config.held_out_fraction,
                                                                config.seed)
    unknown = sorted(set(held) - set(groups))
    if unknown:
        raise DataError(f"held_out: unknown group(s) {unknown}; the data has {sorted(groups.unique())}")
    return pairs["query"].map(groups).isin(held), held


def assign_parts(pairs: pd.DataFrame, is_ood: pd.Series, config: SplitConfig) -> np.ndarray:
    """Part name of each pair, by the hash of its query (so parts are query-disjoint)."""
    u = pairs["query"].map(lambda q: stable_unit(q, f"part{config.seed}")).to_numpy()
    bounds = np.cumsum(config.id_fractions)
    id_part = np.array(ID_PARTS)[np.minimum(np.searchsorted(bounds, u, side="right"), 3)]
    ood_part = np.where(u < config.ood_test_fraction, "ood_test", "pool_ood")
    return np.where(is_ood.to_numpy(), ood_part, id_part).astype(object)


def drop_shared_products(pairs: pd.DataFrame, titles: pd.Series, part: np.ndarray, sources: tuple,
                         targets: tuple) -> tuple[np.ndarray, dict]:
    """Relabel as dropped the pairs of `targets` whose product (item id or normalised title) is in a `sources`
    part; returns the new labels and the count per target part."""
    # Both keys: one product can carry several ids (Home Depot: 944 normalised titles under 2+ uids).
    source = np.isin(part, sources)
    shared = (pairs["item_id"].isin(set(pairs["item_id"][source])) | titles.isin(set(titles[source]))).to_numpy()
    part, counts = part.copy(), {}
    for name in targets:
        hit = (part == name) & shared
        counts[name] = int(hit.sum())
        part[hit] = _DROPPED
    return part, counts


def make_split(pairs: pd.DataFrame, config: SplitConfig | None = None, dataset: str = "csv") -> Split:
    config = config or SplitConfig()
    config.validate()
    is_ood, held = ood_mask(pairs, config, dataset)
    part = assign_parts(pairs, is_ood, config)
    dropped = {name: dict.fromkeys(DROP_RULES, 0) for name in HELD_OUT_PARTS}
    if config.drop_leakage:
        titles = normalise_title(pairs["item"])
        # Rule 2 reads the pools as rule 1 left them: a pool pair already gone cannot reach train.
        for rule, sources, targets in (("train_product", ("train",), HELD_OUT_PARTS),
                                       ("pool_product", POOL_PARTS, TEST_PARTS)):
            part, counts = drop_shared_products(pairs, titles, part, sources, targets)
            for name, n in counts.items():
                dropped[name][rule] = n
    parts = {name: pairs[part == name].reset_index(drop=True) for name in PARTS}
    for name in ("train", "id_val", "id_test", "ood_test"):
        if parts[name].empty:
            gone = sum(dropped.get(name, {}).values())
            raise DataError(f"split: part {name!r} is empty under protocol {config.protocol!r} "
                            f"({int(is_ood.sum())} of {len(pairs)} pairs are OOD; the leakage rules dropped "
                            f"{gone} of its pairs); too little data, a protocol that marks (almost) every "
                            f"query the same, or products shared by (almost) every query")
    return Split(parts, config, int(pairs.loc[is_ood.to_numpy(), "query"].nunique()), held, dropped)


def subsample(df: pd.DataFrame, max_pairs: int | None, seed: int = 0) -> pd.DataFrame:
    """Whole queries in a stable hashed order until `max_pairs` (keeps parts query-disjoint)."""
    if not max_pairs or len(df) <= max_pairs:
        return df
    order = df["query"].drop_duplicates()
    order = order.iloc[np.argsort(order.map(lambda q: stable_unit(q, f"sub{seed}")).to_numpy(), kind="stable")]
    sizes = df["query"].value_counts()[order].cumsum()
    keep = set(sizes.index[sizes <= max_pairs]) or {order.iloc[0]}
    return df[df["query"].isin(keep)].reset_index(drop=True)
