"""Golden tests: a small fixed results store rendered to Markdown and LaTeX."""

from __future__ import annotations

import numpy as np

from bench.report import build_tables, to_latex, to_markdown, write_reports
from bench.store import ResultStore


def record(method, fold, hamming, mAP, overrides=None, undefined=None):
    return {
        "job_id": f"{method}-{fold}-{overrides}", "overrides": overrides or {},
        "config": {"dataset": "toy", "method": method, "protocol": "kfold", "n_folds": 3, "fold": fold, "seed": 0},
        "metrics": {"hamming_loss": hamming, "mAP": mAP}, "undefined": undefined or {"mAP": 0},
        "timings": {},
    }


# br: hamming 0.10/0.20/0.30 -> mean 0.2, sample std 0.1; mAP 0.5/0.6/0.7 -> 0.6 ± 0.1
# rmlc: hamming 0.05/0.15 (two runs of three) -> 0.1 ± 0.0707; mAP 0.8/0.9 -> 0.85 ± 0.0707
RECORDS = [record("br", f, h, m) for f, h, m in [(0, 0.1, 0.5), (1, 0.2, 0.6), (2, 0.3, 0.7)]] + [
    record("rmlc", 0, 0.05, 0.8, undefined={"mAP": 1}), record("rmlc", 1, 0.15, 0.9),
    record("br", 0, 0.4, 0.6, overrides={"C": 0.1}),
]

GOLDEN_MD = """\
**Table: toy, 3-fold iteratively stratified CV: mean ± std over runs (sample std, ddof=1); ↓ lower is better, ↑ higher is better; best in bold.**

| Method | Hamming loss ↓ | mAP ↑ |
| --- | :-: | :-: |
| br | 0.200 ± 0.100 | 0.600 ± 0.100 |
| br (C=0.1) † (1/3 runs) | 0.400 | 0.600 |
| rmlc † (2/3 runs) | **0.100 ± 0.071** | **0.850 ± 0.071** |

Undefined entries left out of averages, summed over runs (labels or examples): mAP 1.
"""

GOLDEN_TEX = r"""\begin{table}[t]
\centering
\caption{toy, 3-fold iteratively stratified CV: mean $\pm$ std over runs (sample std, ddof=1); $\downarrow$ lower is better, $\uparrow$ higher is better; best in bold.}
\label{tab:toy__kfold3}
\begin{tabular}{lcc}
\toprule
Method & Hamming loss $\downarrow$ & mAP $\uparrow$ \\
\midrule
br & 0.200 $\pm$ 0.100 & 0.600 $\pm$ 0.100 \\
br (C=0.1) $^\dagger$ (1/3 runs) & 0.400 & 0.600 \\
rmlc $^\dagger$ (2/3 runs) & \textbf{0.100} $\pm$ 0.071 & \textbf{0.850} $\pm$ 0.071 \\
\bottomrule
\end{tabular}
\par\smallskip\footnotesize Undefined entries left out of averages, summed over runs (labels or examples): mAP 1.
\end{table}
"""


def test_markdown_golden():
    (table,) = build_tables(RECORDS, metrics=["hamming_loss", "mAP"])
    assert to_markdown(table) == GOLDEN_MD


def test_latex_golden_and_balanced():
    (table,) = build_tables(RECORDS, metrics=["hamming_loss", "mAP"])
    tex = to_latex(table)
    assert tex == GOLDEN_TEX
    assert tex.count("{") == tex.count("}") and tex.count("$") % 2 == 0
    assert tex.index(r"\toprule") < tex.index(r"\midrule") < tex.index(r"\bottomrule")


def test_best_follows_direction_and_ties_bold_both():
    recs = [record("a", 0, 0.3, 0.5), record("b", 0, 0.1, 0.5)]
    (table,) = build_tables(recs, metrics=["hamming_loss", "mAP"])
    md = to_markdown(table)
    assert "| a | 0.300 | **0.500** |" in md and "| b | **0.100** | **0.500** |" in md


def test_transposed_markdown_puts_metrics_in_rows():
    (table,) = build_tables(RECORDS, metrics=["hamming_loss", "mAP"])
    md = to_markdown(table, transpose=True)
    assert "| Metric | br | br (C=0.1) † (1/3 runs) | rmlc † (2/3 runs) |" in md
    assert "| mAP ↑ | 0.600 ± 0.100 | 0.600 | **0.850 ± 0.071** |" in md


def test_reports_are_rebuilt_from_the_store(tmp_path):
    store = ResultStore(tmp_path / "results")
    for rec in RECORDS:
        store.write(rec, {"scores": np.zeros(1)})
    tables, written = write_reports(store, tmp_path / "reports")
    assert [p.name for p in written] == ["toy__kfold3.md", "toy__kfold3.tex"]
    assert "**0.850 ± 0.071**" in written[0].read_text()
    assert tables[0].runs.to_dict() == {"br": 3, "br (C=0.1)": 1, "rmlc": 2}
