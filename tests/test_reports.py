"""The main table's best-in-bold and the claim-5 verdict, on hand-made numbers."""
import re

import numpy as np
import pandas as pd

from darl_utils import reports


def rows(model, id_f1, ood_f1, ece=0.1):
    return [{"model": model, "seed": s, "id_macro_f1": i, "ood_macro_f1": o, "gap": i - o, "id_ece": ece}
            for s, (i, o) in enumerate(zip(id_f1, ood_f1))]


def frame(*groups):
    return pd.DataFrame([r for g in groups for r in g])


COLUMNS = {"id_macro_f1": ("ID macro-F1", "max"), "gap": ("gap", "zero"), "id_ece": ("ID ECE", "min")}


def test_best_mean_is_bold_per_column_and_gap_best_is_closest_to_zero():
    table = frame(rows("FT", [0.50, 0.52], [0.40, 0.42], ece=0.20), rows("LP", [0.40, 0.40], [0.45, 0.43], ece=0.05),
                  rows(reports.DARL, [0.55, 0.57], [0.50, 0.46], ece=0.10))
    html = reports.bold_best_table(table, COLUMNS)
    cells = dict(re.findall(r"<tr><th>([^<]+)</th>(.*?)</tr>", html.split("<tbody>")[1]))
    assert list(cells) == ["FT", "LP", reports.DARL]  # MAIN_MODELS order
    bold = {m: re.findall(r"<td><b>([^<]+)</b></td>", c) for m, c in cells.items()}
    assert bold[reports.DARL] == ["0.560 ± 0.014"]  # highest ID macro-F1
    assert bold["LP"] == ["-0.040 ± 0.014", "0.050 ± 0.000"]  # gap nearest 0 (|-0.04| < 0.08), lowest ECE
    assert bold["FT"] == []
    assert "<td>2</td>" in cells["FT"]  # seeds


def test_a_missing_metric_shows_a_dash_and_is_never_best():
    table = frame(rows("FT", [0.5], [0.4]), rows("LP", [0.4], [0.4])).assign(id_ece=[np.nan, 0.1])
    html = reports.bold_best_table(table, COLUMNS)
    assert "<td>–</td>" in html and "<td><b>0.100</b></td>" in html


def test_claim5_verdict_reads_the_numbers():
    base = [rows("FT", [0.50, 0.51], [0.40, 0.41]), rows("LP", [0.45, 0.46], [0.42, 0.43]),
            rows("DaRL without DASA", [0.55, 0.56], [0.41, 0.42])]
    better = frame(*base, rows(reports.DARL, [0.56, 0.57], [0.46, 0.47]))
    text = reports.verdict_claim5(better)
    assert text.startswith("Claim 5 holds here") and "best baseline there (LP, 0.4250)" in text
    assert "DASA ID +0.0100, OOD +0.0500 (beyond the seed spread)" in text
    worse_ood = frame(*base, rows(reports.DARL, [0.56, 0.57], [0.42, 0.425]))
    assert reports.verdict_claim5(worse_ood).startswith("Claim 5 holds in part")
    assert reports.verdict_claim5(frame(*base)).startswith("Claim 5: not tested here")
    assert "alpha* is 0" not in text
    probe_only = better.assign(alpha=np.where(better["model"] == reports.DARL, 0.0, 1.0))
    assert "DaRL's alpha* is 0 on every seed" in reports.verdict_claim5(probe_only)
