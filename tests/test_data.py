import gzip
import shutil
from pathlib import Path

import pandas as pd
import pytest

from darl_utils.data import (
    DataError,
    download_wands,
    load_csv,
    load_homedepot,
    load_pairs,
    load_wands,
    rating_to_degree,
)

WANDS_QUERIES = Path(__file__).resolve().parents[2] / "shared" / "data" / "wands" / "query.csv"


def write(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.write_bytes(text.encode(encoding))
    return path


# --- Home Depot ---------------------------------------------------------------------------------------------

def test_homedepot_real_file(homedepot_path):
    pairs = load_homedepot(homedepot_path)
    df = pairs.frame
    # 74,067 rows; after whitespace and HTML clean-up 9 rows repeat a (query, product) pair: one with the same
    # label (kept once), four pairs with different labels (all 8 rows dropped). Everything dropped is counted.
    assert len(df) == 74058 and pairs.dropped == {"duplicate_pair_same_label": 0, "same_after_cleaning_same_label": 1,
                                                  "same_after_cleaning_conflicting_labels": 8}
    shares = df["label"].value_counts(normalize=True).sort_index().round(3).tolist()
    assert shares == [0.161, 0.376, 0.464]  # strict scheme: irrelevant, weak, strong (docs/STUDY.md section 2)
    assert not df["item"].str.contains("&#39;|&amp;").any()  # HTML entities unescaped
    assert df["row"].min() == 2 and df["row"].max() == 74068
    assert not df.duplicated(["query", "item_id"]).any()


def test_homedepot_round_scheme(homedepot_path):
    df = load_homedepot(homedepot_path, scheme="round").frame
    assert round((df["label"] == 0).mean(), 3) == 0.069


def test_rating_cutoffs():
    degrees = rating_to_degree(pd.Series([1.0, 1.67, 1.99, 2.0, 2.33, 2.5, 2.67, 3.0]), "strict").tolist()
    assert degrees == [0, 0, 0, 1, 1, 1, 2, 2]
    with pytest.raises(DataError, match="unknown degree scheme 'fuzzy'"):
        rating_to_degree(pd.Series([1.0]), "fuzzy")


HD_HEADER = "id,product_uid,product_title,search_term,relevance\n"


def test_homedepot_bad_label(tmp_path):
    path = write(tmp_path / "hd.csv", HD_HEADER + '1,100,"Drill","drill",3\n2,101,"Saw","saw",4.5\n')
    with pytest.raises(DataError, match=r"hd.csv: row 3: unknown label '4.5'"):
        load_homedepot(path)


def test_homedepot_missing_column(tmp_path):
    path = write(tmp_path / "hd.csv", "id,product_uid,product_title,relevance\n1,100,Drill,3\n")
    with pytest.raises(DataError, match=r"hd.csv: missing column\(s\) \['search_term'\]"):
        load_homedepot(path)


def test_homedepot_gzip_and_empty_text(tmp_path):
    path = tmp_path / "hd.csv.gz"
    with gzip.open(path, "wt", encoding="latin-1") as f:
        f.write(HD_HEADER + '1,100,"Drill","drill",3\n2,101,"Saw","  ",2\n')
    with pytest.raises(DataError, match=r"row 3: empty or NaN text in column 'query'"):
        load_homedepot(path)


def test_broken_gzip_and_folder(tmp_path):
    path = tmp_path / "hd.csv.gz"
    path.write_bytes(gzip.compress((HD_HEADER + '1,100,"Drill","drill",3\n').encode())[:30])  # cut short
    with pytest.raises(DataError, match=r"hd.csv.gz: cannot be read \((EOFError|BadGzipFile|error)"):
        load_homedepot(path)
    with pytest.raises(DataError, match=r": is a folder; expected a file"):
        load_homedepot(tmp_path)


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="nope.csv: file not found"):
        load_homedepot(tmp_path / "nope.csv")


# --- generic CSV / TSV ---------------------------------------------------------------------------------------

def test_csv_names_columns_and_maps_labels(tmp_path):
    path = write(tmp_path / "mine.tsv", "q\ttitle\tgrade\tcat\nred lamp\tRed Lamp\t2\tlight\n"
                                        "red lamp\tBlue Lamp\tok\tlight\nsaw\tHand Saw\tStrong\ttools\n")
    pairs = load_csv(path, query="q", item="title", label="grade", group="cat", label_map={"ok": "weak"})
    assert pairs.frame["label"].tolist() == [2, 1, 2]
    assert pairs.frame["group"].tolist() == ["light", "light", "tools"]
    assert pairs.frame["item_id"].tolist() == ["Red Lamp", "Blue Lamp", "Hand Saw"]


def test_csv_bad_label_map_and_encoding(tmp_path):
    path = write(tmp_path / "mine.csv", "query,item,label\na,b,great\n")
    with pytest.raises(DataError, match=r"label_map: 'great' -> 7; a label maps to one of"):
        load_csv(path, label_map={"great": 7})
    with pytest.raises(DataError, match=r"label_map: 'great' -> 'superb'"):
        load_csv(path, label_map={"great": "superb"})
    with pytest.raises(DataError, match=r"mine.csv: unknown encoding 'utf-9'"):
        load_csv(path, encoding="utf-9")


BAD_CSVS = {  # file content -> the one error it must give (file, row, problem)
    "unknown label": ("query,item,label\na,b,strong\nc,d,meh\n", r"mine.csv: row 3: unknown label 'meh'"),
    "missing column": ("query,title,label\na,b,strong\n",
                       r"mine.csv: missing column\(s\) \['item'\]; the file has \['query', 'title', 'label'\]"),
    "malformed": ("query,item,label\na,b,strong\nc,d,weak,extra\n", r"mine.csv: malformed CSV"),
    "empty text": ("query,item,label\na,b,strong\nc,,weak\n", r"mine.csv: row 3: empty or NaN text in column 'item'"),
    "conflicting duplicate": ("query,item,label\na,b,strong\nc,d,weak\na,b,irrelevant\n",
                              r"mine.csv: rows \[2, 4\]: duplicate pair .* "
                              r"conflicting labels \['strong', 'irrelevant'\]"),
    "header only": ("query,item,label\n", r"mine.csv: no rows of data \(only a header\)"),
    "NUL byte": ("query,item,label\na,b,strong\nc,d\x00e,weak\n", r"mine.csv: row 3: NUL byte in column 'item'"),
}


@pytest.mark.parametrize("case", BAD_CSVS)
def test_bad_csv_gives_one_clear_error(tmp_path, case):
    content, message = BAD_CSVS[case]
    with pytest.raises(DataError, match=message):
        load_csv(write(tmp_path / "mine.csv", content))


def test_csv_undecodable_bytes_name_the_row(tmp_path):
    path = tmp_path / "mine.csv"
    path.write_bytes(b"query,item,label\na,b,strong\nc,caf\xe9,weak\n")
    with pytest.raises(DataError, match=r"mine.csv: row 3 is not valid utf-8"):
        load_csv(path)
    assert load_csv(path, encoding="latin-1").frame["item"].tolist() == ["b", "café"]


def test_duplicates_same_label_dropped_and_counted(tmp_path):
    path = write(tmp_path / "mine.csv", "query,item,label\na,b,strong\na,b,strong\nc,d,weak\n")
    pairs = load_csv(path)
    assert len(pairs) == 2 and pairs.dropped["duplicate_pair_same_label"] == 1


def test_load_pairs_unknown_dataset():
    with pytest.raises(DataError, match="unknown dataset 'amazon'"):
        load_pairs("amazon", "x")


# --- WANDS -----------------------------------------------------------------------------------------------------

def wands_folder(tmp_path: Path, labels: str | None = None) -> Path:
    folder = tmp_path / "wands"
    folder.mkdir()
    shutil.copy(WANDS_QUERIES, folder / "query.csv")  # the real query file, 480 queries
    write(folder / "product.csv", "product_id\tproduct_name\tproduct_class\tcategory_hierarchy\n"
                                  "10\tsalon chair deluxe\tMassage Chairs\tFurniture / Chairs\n"
                                  "11\toak coffee table\tCoffee & Cocktail Tables\tFurniture / Tables\n"
                                  "12\tplush dinosaur\tKids Decor\tKids\n")
    write(folder / "label.csv", labels or "id\tquery_id\tproduct_id\tlabel\n0\t0\t10\tExact\n1\t0\t11\tIrrelevant\n"
                                          "2\t1\t11\tPartial\n3\t2\t12\tExact\n")
    return folder


def test_wands_loader_on_real_queries(tmp_path):
    pairs = load_wands(wands_folder(tmp_path), download=False)
    df = pairs.frame
    assert df["query"].tolist() == ["salon chair", "salon chair", "smart coffee table", "dinosaur"]
    assert df["label"].tolist() == [2, 0, 1, 2]
    assert df["group"].tolist() == ["Massage Chairs", "Massage Chairs", "Coffee & Cocktail Tables", "Kids Wall Décor"]


def test_wands_unknown_label_and_unknown_product(tmp_path):
    folder = wands_folder(tmp_path, "id\tquery_id\tproduct_id\tlabel\n0\t0\t10\tExact\n1\t0\t11\tMaybe\n")
    with pytest.raises(DataError, match=r"label.csv: row 3: unknown label 'Maybe'"):
        load_wands(folder, download=False)
    (folder / "label.csv").write_text("id\tquery_id\tproduct_id\tlabel\n0\t0\t99\tExact\n")
    with pytest.raises(DataError, match=r"label.csv: row 2: product_id '99' not found in .*product.csv"):
        load_wands(folder, download=False)


def test_wands_download_fetches_missing_files(tmp_path):
    remote = wands_folder(tmp_path)  # stands in for the raw GitHub folder
    local = tmp_path / "local"
    download_wands(local, url=remote.as_uri() + "/{name}")
    assert sorted(p.name for p in local.iterdir()) == ["label.csv", "product.csv", "query.csv"]
    assert len(load_wands(local, download=False)) == 4


def test_wands_failed_download_leaves_nothing(tmp_path):
    with pytest.raises(DataError, match=r"query.csv: absent, and downloading .* failed"):
        download_wands(tmp_path / "w", url=(tmp_path / "missing").as_uri() + "/{name}")
    assert list((tmp_path / "w").iterdir()) == []
