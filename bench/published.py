"""The numbers the five papers report, read from ``reports/published/*.csv``, beside ours.

Each CSV is one table of one paper, transcribed once from ``../shared/papers/*.txt`` (see
``reports/published/README.md`` for the mapping of the papers' names to ours and for the cells left
out because the text is damaged). Tidy columns: ``paper, table, dataset, method, metric, value, std``,
with ``dataset`` a harness dataset name, ``metric`` a key of :data:`bench.metrics.METRICS` or
``ap:<class>`` (one class's AP, VOC's per-class tables), values on the harness's scale (fractions,
not percent; coverage in labels, 0-based) and ``std`` empty where the paper gives none.

:func:`paper_comparison` puts our measured rows of a report table above the published rows for the
same dataset and metrics, each published cell followed by the difference *measured - published*.
"""

from __future__ import annotations

import functools
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from bench.errors import BenchError
from bench.metrics import METRICS
from bench.results import base_label
from bench.tables import md_row

#: The default tolerance of a reproduced cell, in the metric's units (1 percentage point).
DEFAULT_TOLERANCE = 0.01
COLUMNS = ("paper", "table", "dataset", "method", "metric", "value", "std")
KEY = ("paper", "table", "dataset", "method", "metric")
#: Per-class AP columns of the VOC tables: ``ap:`` + the devkit's class name.
PER_CLASS_PREFIX = "ap:"
#: The 20 Pascal VOC class names in the devkit's order (the columns of DER Table II / CMSG Table 2).
VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
    "tvmonitor",
)
#: Metrics whose values are counts of labels, not fractions in [0, 1].
UNBOUNDED = frozenset({"coverage"})

#: The file beside the CSVs that says which harness method each published row is run as.
DEFINITIONS = "tables.toml"


@dataclass(frozen=True)
class Target:
    """What a published row is run as here: a method, its ``--set`` settings, one of its readouts."""

    method: str
    settings: Mapping = field(default_factory=dict)
    readout: str = ""

    @property
    def label(self) -> str:
        """The label our row of this target has in a report table (:func:`bench.results.base_label`)."""
        return base_label(self.method, self.settings, self.readout)


@dataclass(frozen=True)
class Definitions:
    """``tables.toml``: the row -> :class:`Target` map per paper, the rows not run and why, and the
    tolerance of a reproduced cell."""

    targets: Mapping[str, Mapping[str, Target]]  # paper -> normalised row name -> target
    not_run: Mapping[str, Mapping[str, str]]  # paper -> normalised row name -> why
    tolerance: float

    def target(self, paper: str, published_method: str) -> Target | None:
        return self.targets.get(paper, {}).get(_normalise(published_method))

    def label(self, paper: str, published_method: str) -> str | None:
        """The label of our row that a paper's row is (DER's ``"Our DER"`` -> ``"der"``), if any."""
        target = self.target(paper, published_method)
        return target.label if target else None

    def why_not_run(self, paper: str, published_method: str) -> str:
        return self.not_run.get(paper, {}).get(_normalise(published_method), "")


def default_folder() -> Path:
    from bench.plugins import project_root

    return project_root() / "reports" / "published"


def load_published(folder: Path | str | None = None) -> pd.DataFrame:
    """Every published number under ``folder`` (default ``reports/published``), validated."""
    folder = Path(folder) if folder is not None else default_folder()
    paths = sorted(folder.glob("*.csv"))
    if not paths:
        raise BenchError(f"no published-results CSV in {folder}; expected files such as rmlc_table3.csv")
    frames = [read_csv(path) for path in paths]
    frame = pd.concat(frames, ignore_index=True)
    _check_duplicates(frame, "the files in " + str(folder))
    return frame


def read_csv(path: Path | str) -> pd.DataFrame:
    """One published table, checked: its columns, metric keys, value ranges and duplicate rows."""
    path = Path(path)
    try:
        frame = pd.read_csv(path, dtype={"table": str}, keep_default_na=False, na_values={"std": [""]})
    except (OSError, ValueError) as exc:
        raise BenchError(f"{path}: cannot read as CSV: {exc}") from None
    if tuple(frame.columns) != COLUMNS:
        raise BenchError(f"{path}: columns must be {','.join(COLUMNS)}, found {','.join(map(str, frame.columns))}")
    for column in ("value", "std"):
        values = pd.to_numeric(frame[column], errors="coerce")
        bad = values.isna() & (frame[column].astype(str) != "") & frame[column].notna()
        if column == "value":
            bad |= values.isna()
        if bad.any():
            line = int(np.flatnonzero(bad.to_numpy())[0]) + 2
            raise BenchError(f"{path}, line {line}: field {column!r} must be a number, got {frame[column].iloc[line - 2]!r}")
        frame[column] = values
    for line, row in enumerate(frame.itertuples(index=False), start=2):
        _check_row(path, line, row)
    _check_duplicates(frame, str(path))
    return frame


def _check_row(path: Path, line: int, row) -> None:
    where = f"{path}, line {line}"
    if not all(str(getattr(row, c)).strip() for c in KEY):
        raise BenchError(f"{where}: fields {', '.join(KEY)} must not be empty")
    metric = row.metric
    if metric.startswith(PER_CLASS_PREFIX):
        if metric[len(PER_CLASS_PREFIX):] not in VOC_CLASSES:
            raise BenchError(f"{where}: per-class metric {metric!r} names no VOC class ({', '.join(VOC_CLASSES)})")
    elif metric not in METRICS:
        raise BenchError(f"{where}: unknown metric {metric!r}; expected one of {', '.join(METRICS)} or ap:<class>")
    upper = np.inf if metric in UNBOUNDED else 1.0
    if not 0.0 <= row.value <= upper:
        raise BenchError(f"{where}: {metric} value {row.value} outside [0, {upper}] (percent not divided by 100?)")
    if not (np.isnan(row.std) or 0.0 <= row.std <= upper):
        raise BenchError(f"{where}: {metric} std {row.std} outside [0, {upper}]")


def _check_duplicates(frame: pd.DataFrame, where: str) -> None:
    dup = frame.duplicated(list(KEY), keep=False)
    if dup.any():
        first = frame[dup].iloc[0]
        raise BenchError(f"{where}: duplicate published entry {', '.join(str(first[c]) for c in KEY)}")


def _normalise(name: str) -> str:
    return re.sub(r"[^0-9a-zŷ]", "", name.lower().replace("*", "star"))


def load_definitions(folder: Path | str | None = None) -> Definitions:
    """``tables.toml`` of ``folder`` (default ``reports/published``), checked; none there: no row
    maps to a method (every published row is published-only)."""
    path = (Path(folder) if folder is not None else default_folder()) / DEFINITIONS
    return _definitions(path, path.stat().st_mtime_ns if path.is_file() else None)


@functools.lru_cache(maxsize=8)
def _definitions(path: Path, mtime_ns: int | None) -> Definitions:
    if mtime_ns is None:
        return Definitions({}, {}, DEFAULT_TOLERANCE)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise BenchError(f"{path}: cannot read as TOML: {exc}") from None
    unknown = set(raw) - {"tolerance", "methods", "not_run"}
    if unknown:
        raise BenchError(f"{path}: unknown key(s) {', '.join(sorted(unknown))}; expected tolerance, methods, not_run")
    tolerance = raw.get("tolerance", DEFAULT_TOLERANCE)
    if not isinstance(tolerance, int | float) or isinstance(tolerance, bool) or not 0 <= tolerance < 1:
        raise BenchError(f"{path}: tolerance must be a number in [0, 1), got {tolerance!r}")
    targets = {paper: {_normalise(name): _target(path, paper, name, value) for name, value in rows.items()}
               for paper, rows in _tables_of(path, raw, "methods").items()}
    not_run = {paper: {_normalise(name): str(why) for name, why in rows.items()}
               for paper, rows in _tables_of(path, raw, "not_run").items()}
    return Definitions(targets, not_run, float(tolerance))


def _tables_of(path: Path, raw: dict, key: str) -> dict[str, dict]:
    section = raw.get(key, {})
    if not isinstance(section, dict) or not all(isinstance(v, dict) for v in section.values()):
        raise BenchError(f"{path}: [{key}.<paper>] must be tables of 'row name' = ... entries")
    return section


def _target(path: Path, paper: str, name: str, value) -> Target:
    where = f"{path}: [methods.{paper}] {name!r}"
    if isinstance(value, str):
        method, settings = value, {}
    elif isinstance(value, dict) and set(value) <= {"method", "set"} and isinstance(value.get("method"), str) \
            and isinstance(value.get("set", {}), dict):
        method, settings = value["method"], dict(value.get("set", {}))
    else:
        raise BenchError(f"{where} must be \"method\", \"method:readout\" or {{ method = \"...\", set = {{ ... }} }}, "
                         f"got {value!r}")
    method, _, readout = method.partition(":")
    if not method:
        raise BenchError(f"{where}: no method named")
    return Target(method, settings, readout)


# --------------------------------------------------------------------------- side by side
def comparison_frame(table, published: pd.DataFrame, reference: str | None = None,
                     definitions: Definitions | None = None) -> pd.DataFrame:
    """Tidy rows ``source, row, metric, value, std, delta, against`` for one report table.

    ``table`` is a :class:`bench.tables.Table`; only its metrics that a paper reports for its
    dataset are kept. ``delta`` = our mean - published value, against our row of the same method
    when we ran it (``tables.toml``: :func:`load_definitions`), otherwise against ``reference`` (default: our only row
    when the table has one); NaN when there is no row to compare with.
    """
    definitions = definitions or load_definitions()
    ours = table.mean
    pub = published[(published["dataset"] == table.dataset) & published["metric"].isin(ours.columns)]
    if pub.empty:
        return pd.DataFrame(columns=["source", "row", "metric", "value", "std", "delta", "against"])
    if reference is not None and reference not in ours.index:
        raise BenchError(f"--paper-reference {reference!r} is not a row of the {table.dataset} table; "
                         f"rows: {', '.join(ours.index)}")
    default_ref = reference or (ours.index[0] if len(ours.index) == 1 else None)
    rows = []
    metrics = [m for m in ours.columns if m in set(pub["metric"])]
    for row in ours.index:
        rows += [{"source": "measured", "row": row, "metric": m, "value": ours.at[row, m],
                  "std": table.std.at[row, m], "delta": np.nan, "against": ""} for m in metrics]
    for rec in pub.itertuples(index=False):
        mapped = definitions.label(rec.paper, rec.method)
        against = mapped if mapped in ours.index else default_ref
        delta = ours.at[against, rec.metric] - rec.value if against else np.nan
        rows.append({"source": f"published ({rec.paper} Tab. {rec.table})", "row": rec.method,
                     "metric": rec.metric, "value": rec.value, "std": rec.std, "delta": delta,
                     "against": against or ""})
    return pd.DataFrame(rows)


def paper_comparison(table, published: pd.DataFrame, reference: str | None = None,
                     decimals: int = 3, definitions: Definitions | None = None) -> str:
    """Markdown: our rows, then the published rows (marked) with ``Δ`` = measured - published.

    ``table`` is a main or per-class AP :class:`bench.tables.Table` (whose columns name the metrics).
    """
    frame = comparison_frame(table, published, reference, definitions)
    if frame.empty:
        return f"_{table.dataset}: no published numbers for these metrics._\n"
    metrics = list(dict.fromkeys(frame["metric"]))
    order = list(dict.fromkeys(zip(frame["source"], frame["row"], frame["against"], strict=True)))
    cells = {(r.source, r.row, r.metric): r for r in frame.itertuples(index=False)}
    head = ["Source", "Method", *(table.header(m) for m in metrics), "Δ against"]
    lines = [f"**{table.dataset}: measured (ours) beside the papers' published numbers; "
             f"Δ = measured − published.**", "", md_row(head), md_row(["---", "---", *[":-:"] * len(metrics), "---"])]
    for source, row, against in order:
        texts = []
        for m in metrics:
            cell = cells.get((source, row, m))
            texts.append("" if cell is None else _comparison_cell(cell, decimals))
        lines.append(md_row([source, row, *texts, against if source != "measured" else ""]))
    return "\n".join(lines) + "\n"


def _comparison_cell(cell, decimals: int) -> str:
    text = f"{cell.value:.{decimals}f}"
    if not np.isnan(cell.std):
        text += f" ± {cell.std:.{decimals}f}"
    if cell.source != "measured" and not np.isnan(cell.delta):
        text += f" (Δ {cell.delta:+.{decimals}f})"
    return text
