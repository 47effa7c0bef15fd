"""Paper-style tables, regenerated from the results store alone.

Four kinds of table, each a :class:`Table` rendered by :func:`to_markdown` and :func:`to_latex`:

* **main** (one per dataset and protocol): methods as rows, the columns its papers report
  (``Dataset.metric_set`` -> :data:`bench.metrics.METRIC_SETS`: the RMLC set for multi-modal data,
  ML-GCN's mAP/CP/.../OF1 and top-3 forms for COCO and NUS-WIDE, mAP for VOC, the RETDM set for
  scene and MIRFLICKR), each cell the mean ± sample standard deviation (ddof = 1, stated in the
  caption) over the runs of that protocol (folds x seeds);
* **per-class AP** (VOC datasets, DER Table II's shape): the classes as columns, then mAP;
* **ablation** (one per method family): a method beside its registered ablations (methods whose
  ``ablation_of`` names it) and its runs with other hyper-parameters;
* the cross-dataset **leaderboard** and its tests, built in :mod:`bench.stats`.

In every column the best value is in bold and the second best underlined (lowest for losses, highest
otherwise), compared *as printed* so that a tie on the page is a tie in the marks. A row with fewer
runs than the most complete row of its table is marked with a dagger and its run count, so a partial
run never passes for a finished one. Entries left out of a macro average because they are undefined
in a test fold (see :mod:`bench.metrics`) are summed in a footnote.
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from bench.api import EXECUTION_PARAMS, PER_RUN_PARAMS
from bench.errors import BenchError
from bench.metrics import METRIC_SETS, METRICS, direction_arrow
from bench.store import ResultStore, atomic_write_bytes

log = logging.getLogger(__name__)

DDOF = 1
DECIMALS = 3
PROTOCOL_TEXT = {
    "kfold": "{n_folds}-fold iteratively stratified CV",
    "official": "official train/test split",
    "holdout": "random 80/20 hold-out",
}
#: The metric set of a dataset that no installed plug-in knows (a removed plug-in, a test's "toy").
FALLBACK_METRIC_SET = "all"
#: The datasets whose per-class AP table is built (Pascal VOC, DER Table II).
PER_CLASS_METRIC_SETS = frozenset({"voc"})
PER_CLASS_PREFIX = "ap:"
MARKS = "best in bold, second underlined"


def table_slug(dataset: str, protocol: str, n_folds: int) -> str:
    """The file stem of a (dataset, protocol) table and its figures: ``yeast__kfold10``."""
    return f"{dataset}__{protocol}{n_folds if protocol == 'kfold' else ''}"


@dataclass(frozen=True)
class Table:
    """The aggregated numbers of one table, and how to present them.

    ``mean``/``std`` have one row per table row and one column per metric key (or ``ap:<class>``);
    ``directions`` overrides which way is better for a column (True: higher), ``headers`` its
    printed name; ``caption`` and ``name`` override the generated ones (leaderboard tables).
    """

    dataset: str
    protocol: str
    n_folds: int
    mean: pd.DataFrame  # rows: row labels, columns: metrics
    std: pd.DataFrame
    runs: pd.Series  # runs per row
    undefined: dict[str, int]
    kind: str = "main"  # main | per_class | ablation | leaderboard
    family: str = ""  # the ablation family's method
    directions: Mapping[str, bool] = field(default_factory=dict)
    headers: Mapping[str, str] = field(default_factory=dict)
    caption_text: str = ""
    name: str = ""
    notes: tuple[str, ...] = ()

    @property
    def slug(self) -> str:
        if self.name:
            return self.name
        base = table_slug(self.dataset, self.protocol, self.n_folds)
        return {"main": base, "per_class": f"{base}__per_class_ap",
                "ablation": f"{base}__ablation_{self.family}"}.get(self.kind, base)

    @property
    def caption(self) -> str:
        if self.caption_text:
            return self.caption_text
        proto = PROTOCOL_TEXT[self.protocol].format(n_folds=self.n_folds)
        if self.kind == "per_class":
            return (f"{self.dataset}, {proto}: average precision per class and mAP ↑, mean over runs "
                    f"(standard deviations left out for width; kept in the table data); {MARKS}.")
        what = f"ablation of {self.family} on {self.dataset}" if self.kind == "ablation" else self.dataset
        return (f"{what}, {proto}: mean ± std over runs (sample std, ddof={DDOF}); "
                f"↓ lower is better, ↑ higher is better; {MARKS}.")

    def higher_is_better(self, column: str) -> bool:
        if column in self.directions:
            return self.directions[column]
        return column.startswith(PER_CLASS_PREFIX) or METRICS[column].higher_is_better

    def header(self, column: str) -> str:
        if column in self.headers:
            return self.headers[column]
        if column.startswith(PER_CLASS_PREFIX):
            return column[len(PER_CLASS_PREFIX):]
        return f"{METRICS[column].label} {direction_arrow(column)}"


def row_label(record: dict) -> str:
    """``br`` for default hyper-parameters, ``br (C=0.1)`` for a run with overrides."""
    overrides = record.get("overrides") or {}
    if not overrides:
        return record["config"]["method"]
    return f"{record['config']['method']} ({', '.join(f'{k}={v}' for k, v in sorted(overrides.items()))})"


def history_points(record: dict) -> list[tuple[str, float, int]]:
    """(key, value, epoch) for every numeric entry of a record's per-epoch ``history``."""
    return [(key, float(value), int(entry.get("epoch", i)))
            for i, entry in enumerate(record.get("history") or []) for key, value in entry.items()
            if key != "epoch" and isinstance(value, int | float) and not isinstance(value, bool)]


def records_frame(records) -> pd.DataFrame:
    """One row per finished job: identifying columns, then one column per metric."""
    rows = []
    for rec in records:
        cfg = rec["config"]
        rows.append({
            "dataset": cfg["dataset"], "protocol": cfg["protocol"], "n_folds": cfg["n_folds"],
            "method": cfg["method"], "row": row_label(rec), "seed": cfg["seed"], "fold": cfg["fold"],
            "undefined": json.dumps(rec.get("undefined", {})),
            **rec["metrics"],
        })
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- plug-in knowledge
def dataset_metric_sets(datasets: Iterable[str]) -> dict[str, str]:
    """Each dataset's ``metric_set`` from its plug-in; :data:`FALLBACK_METRIC_SET` when unknown."""
    from bench import plugins

    registry = plugins.load("datasets")
    return {d: getattr(registry.get(d), "metric_set", FALLBACK_METRIC_SET) for d in datasets}


def method_ablation_parents() -> dict[str, str]:
    """``{ablation method: the method it ablates}`` from the method plug-ins' ``ablation_of``."""
    from bench import plugins

    return {name: cls.ablation_of for name, cls in plugins.load("methods").items() if cls.ablation_of}


def _metrics_for(dataset: str, frame: pd.DataFrame, metrics, metric_sets) -> list[str]:
    if metrics is None:
        metrics = METRIC_SETS.get(metric_sets.get(dataset, FALLBACK_METRIC_SET), METRIC_SETS[FALLBACK_METRIC_SET])
    # Metrics absent from every record (an older store, a subset) are left out rather than shown empty.
    return [m for m in metrics if m in frame.columns]


def _groups(frame: pd.DataFrame):
    return frame.groupby(["dataset", "protocol", "n_folds"], sort=True)


def _undefined(part: pd.DataFrame, metrics: list[str]) -> dict[str, int]:
    undefined: dict[str, int] = {}
    for text in part["undefined"]:
        for key, count in json.loads(text).items():
            if key in metrics and count:
                undefined[key] = undefined.get(key, 0) + int(count)
    return undefined


def _aggregate(part: pd.DataFrame, metrics: list[str], order: list[str] | None = None):
    grouped = part.groupby("row", sort=True)[metrics]
    mean, std, runs = grouped.mean(), grouped.std(ddof=DDOF), grouped.size()
    if order is not None:
        mean, std, runs = mean.loc[order], std.loc[order], runs.loc[order]
    return mean, std, runs


def build_tables(records, metrics: list[str] | None = None,
                 metric_sets: Mapping[str, str] | None = None) -> list[Table]:
    """One main table per (dataset, protocol, folds).

    ``metrics`` fixes the columns of every table; by default each dataset gets its papers' set
    (``metric_sets``: dataset -> key of :data:`METRIC_SETS`, default read from the plug-ins).
    """
    frame = records_frame(records)
    if frame.empty:
        return []
    if metrics is None and metric_sets is None:
        metric_sets = dataset_metric_sets(frame["dataset"].unique())
    tables = []
    for (dataset, protocol, n_folds), part in _groups(frame):
        cols = _metrics_for(dataset, part, metrics, metric_sets or {})
        mean, std, runs = _aggregate(part, cols)
        tables.append(Table(dataset, protocol, int(n_folds), mean, std, runs, _undefined(part, cols)))
    return tables


def build_per_class_tables(records, metric_sets: Mapping[str, str] | None = None,
                           datasets: Iterable[str] | None = None) -> list[Table]:
    """Per-class AP tables (classes as columns, then mAP) from the records' ``per_label_ap``.

    Built for ``datasets`` (default: those whose metric set is in :data:`PER_CLASS_METRIC_SETS`).
    A class undefined in a fold (no positive there) is left out of that class's mean.
    """
    records = [r for r in records if r.get("per_label_ap") is not None and r.get("label_names")]
    if not records:
        return []
    if datasets is None:
        names = {r["config"]["dataset"] for r in records}
        sets = metric_sets if metric_sets is not None else dataset_metric_sets(names)
        datasets = {d for d in names if sets.get(d) in PER_CLASS_METRIC_SETS}
    datasets = set(datasets)
    rows = []
    for rec in records:
        cfg = rec["config"]
        if cfg["dataset"] not in datasets:
            continue
        ap = np.asarray(rec["per_label_ap"], dtype=float)  # JSON null -> NaN
        rows.append({"dataset": cfg["dataset"], "protocol": cfg["protocol"], "n_folds": cfg["n_folds"],
                     "row": row_label(rec), "undefined": json.dumps(rec.get("undefined", {})),
                     **{f"{PER_CLASS_PREFIX}{n}": v for n, v in zip(rec["label_names"], ap, strict=True)},
                     "mAP": rec["metrics"].get("mAP", np.nan)})
    if not rows:
        return []
    frame = pd.DataFrame(rows)
    tables = []
    for (dataset, protocol, n_folds), part in _groups(frame):
        cols = [c for c in part.columns if c.startswith(PER_CLASS_PREFIX) and part[c].notna().any()] + ["mAP"]
        mean, std, runs = _aggregate(part, cols)
        tables.append(Table(dataset, protocol, int(n_folds), mean, std, runs, _undefined(part, ["mAP"]),
                            kind="per_class"))
    return tables


def build_ablation_tables(records, ablation_of: Mapping[str, str] | None = None,
                          metric_sets: Mapping[str, str] | None = None) -> list[Table]:
    """One table per method family with at least two rows on a (dataset, protocol).

    A family is a method, the methods whose ``ablation_of`` names it, and the runs of any of them
    with hyper-parameter overrides (each its own row). The full method with its defaults comes
    first, then its own hyper-parameter variants, then the ablations in name order.
    """
    frame = records_frame(records)
    if frame.empty:
        return []
    if ablation_of is None:
        ablation_of = method_ablation_parents()
    if metric_sets is None:
        metric_sets = dataset_metric_sets(frame["dataset"].unique())
    frame["family"] = frame["method"].map(lambda m: ablation_of.get(m) or m)
    tables = []
    for (dataset, protocol, n_folds), part in _groups(frame):
        cols = _metrics_for(dataset, part, None, metric_sets)
        for family, members in part.groupby("family", sort=True):
            order = sorted(members["row"].unique(), key=lambda row: _family_order(row, members, family))
            if len(order) < 2:
                continue
            mean, std, runs = _aggregate(members, cols, order)
            tables.append(Table(dataset, protocol, int(n_folds), mean, std, runs, _undefined(members, cols),
                                kind="ablation", family=family))
    return tables


def _family_order(row: str, members: pd.DataFrame, family: str) -> tuple:
    method = members.loc[members["row"] == row, "method"].iloc[0]
    return (method != family, method, row != method, row)


# --------------------------------------------------------------------------- formatting
def _shown(table: Table, column: str) -> pd.Series:
    """The column's means as printed (rounded), so that marks follow what a reader sees."""
    return table.mean[column].astype(float).round(DECIMALS).dropna()


def _marks(table: Table) -> dict[str, dict[str, str]]:
    """For each column, ``{row: "best" | "second"}`` by competition rank of the printed values.

    Rank = 1 + the number of rows printed strictly better. Rank 1 is bold (ties share it), rank 2
    underlined; after a tie for the best there is no second. Nothing is underlined in a column with
    fewer than three values (the second of two is simply the other one).
    """
    marks = {}
    for column in table.mean.columns:
        shown = _shown(table, column)
        values = -shown if table.higher_is_better(column) else shown
        rank = values.rank(method="min")
        col = dict.fromkeys(rank.index[rank == 1], "best")
        if len(shown) >= 3:
            col.update(dict.fromkeys(rank.index[rank == 2], "second"))
        marks[column] = col
    return marks


def _cell(mean: float, std: float, pm: str) -> str:
    if np.isnan(mean):
        return "–"
    if np.isnan(std):
        return f"{mean:.{DECIMALS}f}"
    return f"{mean:.{DECIMALS}f}{pm}{std:.{DECIMALS}f}"


def _row_name(table: Table, row: str) -> str:
    full = table.runs.max()
    return row if table.runs[row] == full else f"{row} † ({table.runs[row]}/{full} runs)"


def _footnotes(table: Table) -> list[str]:
    notes = list(table.notes)
    if table.undefined:
        parts = ", ".join(f"{k} {v}" for k, v in sorted(table.undefined.items()))
        notes.append(f"Undefined entries left out of averages, summed over runs (labels or examples): {parts}.")
    return notes


def _show_std(table: Table) -> bool:
    return table.kind not in ("per_class", "leaderboard")


MD_MARK = {"best": "**{}**", "second": "<u>{}</u>", None: "{}"}


def to_markdown(table: Table, transpose: bool = False) -> str:
    """A GitHub-flavoured Markdown table; ``transpose`` puts metrics in rows (terminal-friendly).

    Best cells are ``**bold**``, second-best ``<u>underlined</u>`` (GitHub renders the HTML tag)."""
    marks = _marks(table)
    metrics = list(table.mean.columns)
    nan = np.nan
    cells = {
        (row, m): MD_MARK[marks[m].get(row)].format(
            _cell(table.mean.at[row, m], table.std.at[row, m] if _show_std(table) else nan, " ± "))
        for row in table.mean.index for m in metrics
    }
    heads = {m: table.header(m) for m in metrics}
    rows = [_row_name(table, r) for r in table.mean.index]
    if transpose:
        header = ["Metric", *rows]
        body = [[heads[m], *(cells[r, m] for r in table.mean.index)] for m in metrics]
    else:
        header = ["Method", *(heads[m] for m in metrics)]
        body = [[name, *(cells[r, m] for m in metrics)] for name, r in zip(rows, table.mean.index, strict=True)]
    lines = [f"**Table: {table.caption}**", "", md_row(header), md_row(["---"] + [":-:"] * (len(header) - 1))]
    lines += [md_row(line) for line in body]
    if notes := _footnotes(table):
        lines += ["", *notes]
    return "\n".join(lines) + "\n"


def md_row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#",
                  "_": r"\_", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\^{}",
                  "±": r"$\pm$", "↓": r"$\downarrow$", "↑": r"$\uparrow$", "†": r"$^\dagger$",
                  "χ": r"$\chi$", "²": r"$^2$", "α": r"$\alpha$", "−": "-", "Δ": r"$\Delta$", "<": r"$<$", ">": r"$>$"}
TEX_MARK = {"best": r"\textbf{{{}}}", "second": r"\underline{{{}}}", None: "{}"}


def latex_escape(text: str) -> str:
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in text)


def to_latex(table: Table) -> str:
    """A booktabs table (needs ``\\usepackage{booktabs}``); the mark covers the mean, not the std."""
    marks = _marks(table)
    metrics = list(table.mean.columns)
    header = ["Method", *(latex_escape(table.header(m)) for m in metrics)]
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
            text = TEX_MARK[marks[m].get(row)].format(_cell(mean, np.nan, ""))
            if _show_std(table) and not (np.isnan(mean) or np.isnan(std)):
                text += rf" $\pm$ {std:.{DECIMALS}f}"
            cells.append(text)
        name = latex_escape(_row_name(table, row))
        lines.append(" & ".join([name, *cells]) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    for note in _footnotes(table):
        lines.append(rf"\par\smallskip\footnotesize {latex_escape(note)}")
    lines.append(r"\end{table}")
    return "\n".join(lines) + "\n"


RENDERERS: dict[str, tuple[Callable[[Table], str], str]] = {"md": (to_markdown, ".md"), "latex": (to_latex, ".tex")}


def build_all_tables(records, metric_sets: Mapping[str, str] | None = None,
                     ablation_of: Mapping[str, str] | None = None) -> list[Table]:
    """Main, per-class AP and ablation tables of ``records`` (the leaderboard is :mod:`bench.stats`)."""
    records = list(records)
    if not records:
        return []
    if metric_sets is None:
        metric_sets = dataset_metric_sets({r["config"]["dataset"] for r in records})
    return (build_tables(records, metric_sets=metric_sets)
            + build_per_class_tables(records, metric_sets=metric_sets)
            + build_ablation_tables(records, ablation_of=ablation_of, metric_sets=metric_sets))


def write_tables(tables: Iterable[Table], out_dir: Path, formats=("md", "latex")) -> list[Path]:
    """Write each table as ``<slug>.md`` / ``<slug>.tex`` (atomically)."""
    written = []
    for table in tables:
        for fmt in formats:
            fn, ext = RENDERERS[fmt]
            path = Path(out_dir) / f"{table.slug}{ext}"
            atomic_write_bytes(path, fn(table).encode())
            written.append(path)
    return written


def select_records(store: ResultStore, datasets=None, methods=None, warn: bool = True) -> list[dict]:
    """The stored runs of ``datasets`` x ``methods`` (all when None) made with the current defaults."""
    return current_records([r for r in store.records()
                            if (not datasets or r["config"]["dataset"] in datasets)
                            and (not methods or r["config"]["method"] in methods)], warn)


def stale_keys(record: dict) -> list[str]:
    """The hyper-parameters in which a stored run differs from the job `bench run` would run today
    for the same method and overrides (a default changed since, or a parameter came or went);
    empty when it is current, or when its method is not installed here (nothing to compare)."""
    from bench import plugins
    from bench.params import current_params

    cfg = record["config"]
    if "params" not in cfg:  # a hand-made record: nothing to compare
        return []
    try:
        cls = plugins.get("methods", cfg["method"])
    except BenchError:
        return []
    params = current_params(cls, record)
    skip = EXECUTION_PARAMS | PER_RUN_PARAMS
    # Through JSON like the stored record (tuples become lists).
    expected = json.loads(json.dumps({k: v for k, v in params.items() if k not in skip}, default=repr))
    stored = {k: v for k, v in cfg["params"].items() if k not in skip}
    missing = object()
    return sorted(k for k in expected.keys() | stored.keys() if expected.get(k, missing) != stored.get(k, missing))


def current_records(records: Iterable[dict], warn: bool = True) -> list[dict]:
    """``records`` without the stale ones (:func:`stale_keys`), so that a table row never averages
    runs of two configurations; one warning says what was left out (the files stay in the store)."""
    kept, stale = [], defaultdict(set)
    counts: dict[tuple[str, str], int] = defaultdict(int)
    for rec in records:
        keys = stale_keys(rec)
        if not keys:
            kept.append(rec)
            continue
        where = (rec["config"]["method"], rec["config"]["dataset"])
        stale[where].update(keys)
        counts[where] += 1
    if stale and warn:
        what = "; ".join(f"{counts[w]} of {w[0]} on {w[1]} ({', '.join(sorted(stale[w]))})" for w in sorted(stale))
        log.warning("left out stored runs made with other hyper-parameters than the current defaults: %s; "
                    "they stay in the store; `bench run` the same command again for current ones", what)
    return kept


def write_reports(store: ResultStore, out_dir: Path, formats=("md", "latex"), datasets=None, methods=None,
                  metric_sets: Mapping[str, str] | None = None, ablation_of: Mapping[str, str] | None = None,
                  leaderboard: bool = True) -> tuple[list[Table], list[Path]]:
    """Rebuild every table from the store into ``out_dir``.

    Writes the main, per-class AP and ablation tables (``<slug>.{md,tex}``) and, with
    ``leaderboard``, the cross-dataset leaderboard, its tests and critical-difference diagrams
    (:func:`bench.stats.write_leaderboard`). Returns the tables (the leaderboard's included) and
    the files written, figures last.
    """
    records = select_records(store, datasets, methods)
    tables = build_all_tables(records, metric_sets=metric_sets, ablation_of=ablation_of)
    written = write_tables(tables, out_dir, formats)
    if leaderboard and tables:
        from bench.stats import write_leaderboard

        board_tables, board_files = write_leaderboard([t for t in tables if t.kind == "main"], out_dir, formats)
        tables += board_tables
        written += board_files
    return tables, written
