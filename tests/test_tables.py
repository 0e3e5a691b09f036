"""The main table's best-in-bold and its extra columns, on hand-made numbers."""
import re

import numpy as np
import pandas as pd

from darl_utils import tables


def rows(model, id_f1, ood_f1, ece=0.1):
    return [{"model": model, "seed": s, "id_macro_f1": i, "ood_macro_f1": o, "gap": i - o, "id_ece": ece}
            for s, (i, o) in enumerate(zip(id_f1, ood_f1))]


def frame(*groups):
    return pd.DataFrame([r for g in groups for r in g])


COLUMNS = {"id_macro_f1": ("ID macro-F1", "max"), "gap": ("gap", "zero"), "id_ece": ("ID ECE", "min")}


def test_best_mean_is_bold_per_column_and_gap_best_is_closest_to_zero():
    table = frame(rows("FT", [0.50, 0.52], [0.40, 0.42], ece=0.20), rows("LP", [0.40, 0.40], [0.45, 0.43], ece=0.05),
                  rows(tables.DARL, [0.55, 0.57], [0.50, 0.46], ece=0.10))
    html = tables.bold_best_table(table, COLUMNS)
    cells = dict(re.findall(r"<tr><th>([^<]+)</th>(.*?)</tr>", html.split("<tbody>")[1]))
    assert list(cells) == ["FT", "LP", tables.DARL]  # MAIN_MODELS order
    bold = {m: re.findall(r"<td><b>([^<]+)</b></td>", c) for m, c in cells.items()}
    assert bold[tables.DARL] == ["0.560 ± 0.014"]  # highest ID macro-F1
    assert bold["LP"] == ["-0.040 ± 0.014", "0.050 ± 0.000"]  # gap nearest 0 (|-0.04| < 0.08), lowest ECE
    assert bold["FT"] == []
    assert "<td>2</td>" in cells["FT"]  # seeds


def test_a_missing_metric_shows_a_dash_and_is_never_best():
    table = frame(rows("FT", [0.5], [0.4]), rows("LP", [0.4], [0.4])).assign(id_ece=[np.nan, 0.1])
    html = tables.bold_best_table(table, COLUMNS)
    assert "<td>–</td>" in html and "<td><b>0.100</b></td>" in html


def test_extra_columns_follow_the_means():
    table = frame(rows("FT", [0.5], [0.4]), rows("LP", [0.4], [0.4]))
    html = tables.bold_best_table(table, COLUMNS, extra={"LP": {"ID − FT": "-0.100 [-0.2, 0.0]"}})
    assert "<th>ID − FT</th>" in html and "<td>-0.100 [-0.2, 0.0]</td>" in html and html.count("<td>–</td>") == 1


def test_mean_sd_keeps_counts_whole_and_marks_missing_values():
    from darl_utils.tables import mean_sd
    frame = pd.DataFrame({"method": ["FT", "FT", "FT+DASA"], "id_macro_f1": [0.5, 0.6, 0.7],
                          "train_pairs": [292, 300, 310], "added_ood_share": [np.nan, np.nan, 0.3]})
    table = mean_sd(frame, ["method"], ["id_macro_f1", "train_pairs", "added_ood_share"])
    assert table.loc["FT"].tolist() == ["0.5500 ± 0.0707", "296 ± 6", "–", 2]
    assert table.loc["FT+DASA"].tolist() == ["0.7000", "310", "0.3000", 1]


def test_the_index_names_the_alpha_each_interpolated_model_read():
    from darl_utils.index_page import alpha_star_line
    table = pd.DataFrame({"model": ["FT", "LPFT (alpha*)", "LPFT (alpha*)", "LPFT (alpha 0.6)", "DaRL without LPFT"],
                          "selected": [np.nan, True, True, False, np.nan], "alpha": [np.nan, 0.3, 1.0, 0.6, np.nan]})
    line = alpha_star_line(table)
    assert line.startswith("<p>alpha*, chosen on id_val (per seed): LPFT (alpha*) 0.3, 1. ")  # and nothing else
