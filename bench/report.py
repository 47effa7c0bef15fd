"""Paper-style tables, regenerated from the results store alone.

One table per (dataset, protocol): methods as rows, metrics as columns, each cell the mean ± sample
standard deviation (ddof = 1, stated in the caption) over the runs of that protocol (folds x seeds),
the best mean of each column in bold (lowest for losses, highest otherwise, compared as printed).
A row with fewer runs than the most complete row of its table is marked with a dagger and its run
count, so a partial run never passes for a finished one. Entries left out of a macro average
because they are undefined in a test fold (see :mod:`bench.metrics`) are summed in a footnote.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from bench.metrics import METRICS, direction_arrow
from bench.store import ResultStore, atomic_write_bytes

DDOF = 1
DECIMALS = 3
PROTOCOL_TEXT = {
    "kfold": "{n_folds}-fold iteratively stratified CV",
    "official": "official train/test split",
    "holdout": "random 80/20 hold-out",
}


@dataclass(frozen=True)
class Table:
    """The aggregated numbers of one (dataset, protocol) table."""

    dataset: str
    protocol: str
    n_folds: int
    mean: pd.DataFrame  # rows: method labels, columns: metrics
    std: pd.DataFrame
    runs: pd.Series  # runs per row
    undefined: dict[str, int]

    @property
    def slug(self) -> str:
        suffix = f"{self.n_folds}" if self.protocol == "kfold" else ""
        return f"{self.dataset}__{self.protocol}{suffix}"

    @property
    def caption(self) -> str:
        proto = PROTOCOL_TEXT[self.protocol].format(n_folds=self.n_folds)
        return (f"{self.dataset}, {proto}: mean ± std over runs (sample std, ddof={DDOF}); "
                f"↓ lower is better, ↑ higher is better; best in bold.")


def row_label(record: dict) -> str:
    """``br`` for default hyper-parameters, ``br (C=0.1)`` for a run with overrides."""
    overrides = record.get("overrides") or {}
    if not overrides:
        return record["config"]["method"]
    return f"{record['config']['method']} ({', '.join(f'{k}={v}' for k, v in sorted(overrides.items()))})"


def records_frame(records) -> pd.DataFrame:
    """One row per finished job: identifying columns, then one column per metric."""
    rows = []
    for rec in records:
        cfg = rec["config"]
        rows.append({
            "dataset": cfg["dataset"], "protocol": cfg["protocol"], "n_folds": cfg["n_folds"],
            "row": row_label(rec), "seed": cfg["seed"], "fold": cfg["fold"],
            "undefined": json.dumps(rec.get("undefined", {})),
            **rec["metrics"],
        })
    return pd.DataFrame(rows)


def build_tables(records, metrics: list[str] | None = None) -> list[Table]:
    frame = records_frame(records)
    if frame.empty:
        return []
    # Metrics absent from every record (an older store, a subset) are left out rather than shown empty.
    metrics = [m for m in (metrics or METRICS) if m in frame.columns]
    tables = []
    for (dataset, protocol, n_folds), part in frame.groupby(["dataset", "protocol", "n_folds"], sort=True):
        grouped = part.groupby("row", sort=True)[metrics]
        undefined: dict[str, int] = {}
        for text in part["undefined"]:
            for key, count in json.loads(text).items():
                if key in metrics and count:
                    undefined[key] = undefined.get(key, 0) + int(count)
        tables.append(Table(dataset, protocol, int(n_folds), grouped.mean(), grouped.std(ddof=DDOF),
                            grouped.size(), undefined))
    return tables


# --------------------------------------------------------------------------- formatting
def _best_rows(table: Table) -> dict[str, set[str]]:
    """For each metric, the rows whose printed mean is the best of the column."""
    best = {}
    for metric in table.mean.columns:
        shown = table.mean[metric].round(DECIMALS).dropna()
        if shown.empty:
            best[metric] = set()
            continue
        target = shown.max() if METRICS[metric].higher_is_better else shown.min()
        best[metric] = set(shown.index[shown == target])
    return best


def _cell(mean: float, std: float, pm: str) -> str:
    if np.isnan(mean):
        return "–"
    if np.isnan(std):
        return f"{mean:.{DECIMALS}f}"
    return f"{mean:.{DECIMALS}f}{pm}{std:.{DECIMALS}f}"


def _row_name(table: Table, row: str) -> str:
    full = table.runs.max()
    return row if table.runs[row] == full else f"{row} † ({table.runs[row]}/{full} runs)"


def _footnote(table: Table) -> str:
    if not table.undefined:
        return ""
    parts = ", ".join(f"{k} {v}" for k, v in sorted(table.undefined.items()))
    return f"Undefined entries left out of averages, summed over runs (labels or examples): {parts}."


def to_markdown(table: Table, transpose: bool = False) -> str:
    """A GitHub-flavoured Markdown table; ``transpose`` puts metrics in rows (terminal-friendly)."""
    best = _best_rows(table)
    metrics = list(table.mean.columns)
    cells = {
        (row, m): (lambda text, b: f"**{text}**" if b else text)(
            _cell(table.mean.at[row, m], table.std.at[row, m], " ± "), row in best[m])
        for row in table.mean.index for m in metrics
    }
    heads = {m: f"{METRICS[m].label} {direction_arrow(m)}" for m in metrics}
    rows = [_row_name(table, r) for r in table.mean.index]
    if transpose:
        header = ["Metric", *rows]
        body = [[heads[m], *(cells[r, m] for r in table.mean.index)] for m in metrics]
    else:
        header = ["Method", *(heads[m] for m in metrics)]
        body = [[name, *(cells[r, m] for m in metrics)] for name, r in zip(rows, table.mean.index, strict=False)]
    lines = [f"**Table: {table.caption}**", "", _md_row(header), _md_row(["---"] + [":-:"] * (len(header) - 1))]
    lines += [_md_row(line) for line in body]
    if note := _footnote(table):
        lines += ["", note]
    return "\n".join(lines) + "\n"


def _md_row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#",
                  "_": r"\_", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\^{}",
                  "±": r"$\pm$", "↓": r"$\downarrow$", "↑": r"$\uparrow$", "†": r"$^\dagger$"}


def latex_escape(text: str) -> str:
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in text)


def to_latex(table: Table) -> str:
    """A booktabs table (needs ``\\usepackage{booktabs}``)."""
    best = _best_rows(table)
    metrics = list(table.mean.columns)
    header = ["Method", *(latex_escape(f"{METRICS[m].label} {direction_arrow(m)}") for m in metrics)]
    lines = [
        r"\begin{table}[t]", r"\centering",
        rf"\caption{{{latex_escape(table.caption)}}}",
        rf"\label{{tab:{table.slug}}}",
        rf"\begin{{tabular}}{{l{'c' * len(metrics)}}}", r"\toprule", " & ".join(header) + r" \\", r"\midrule",
    ]
    for row in table.mean.index:
        cells = []
        for m in metrics:
            mean, std = table.mean.at[row, m], table.std.at[row, m]
            text = _cell(mean, np.nan, "")
            if row in best[m]:
                text = rf"\textbf{{{text}}}"
            if not (np.isnan(mean) or np.isnan(std)):
                text += rf" $\pm$ {std:.{DECIMALS}f}"
            cells.append(text)
        name = latex_escape(_row_name(table, row))
        lines.append(" & ".join([name, *cells]) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    if note := _footnote(table):
        lines.append(rf"\par\smallskip\footnotesize {latex_escape(note)}")
    lines.append(r"\end{table}")
    return "\n".join(lines) + "\n"


def write_reports(store: ResultStore, out_dir: Path, formats=("md", "latex"), datasets=None,
                  methods=None) -> tuple[list[Table], list[Path]]:
    """Rebuild every table from the store and write ``<dataset>__<protocol>.{md,tex}``."""
    records = [r for r in store.records()
               if (not datasets or r["config"]["dataset"] in datasets)
               and (not methods or r["config"]["method"] in methods)]
    tables = build_tables(records)
    written = []
    render = {"md": (to_markdown, ".md"), "latex": (to_latex, ".tex")}
    for table in tables:
        for fmt in formats:
            fn, ext = render[fmt]
            path = Path(out_dir) / f"{table.slug}{ext}"
            atomic_write_bytes(path, fn(table).encode())
            written.append(path)
    return tables, written
