"""The papers' figures, regenerated from the results store (matplotlib, PNG and PDF).

* **Convergence** (RMLC Fig. 2, RETDM Fig. 6): each numeric entry of the methods' per-epoch
  ``history_`` (loss terms, ``val_`` metrics) against the epoch, one line per table row with a band
  of ± one sample std over runs (folds x seeds). A run that stopped early simply leaves the mean of
  the later epochs, so the band narrows to the runs still training.
* **Metric vs. number of modalities used** (RMLC Fig. 3): the metrics of ``predict_steps``' output
  after t modalities (``step_metrics`` of a record), mean ± std over runs, for methods that have it.
* **Hyper-parameter sensitivity** (DER Figs. 6-7, CMSG's heads/layers study): when the store holds
  rows of one method that differ in exactly one numeric hyper-parameter (``--set alpha=...``), the
  metric against that hyper-parameter, mean ± std over runs.

Figures are built with :class:`matplotlib.figure.Figure` directly (no pyplot, no global backend:
headless-safe) and grouped like the tables: per (dataset, protocol, folds). The metric panels follow
the dataset family's metric set (:data:`bench.metrics.METRIC_SETS`).
"""

from __future__ import annotations

import io
import math
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from bench import plugins
from bench.api import PER_RUN_PARAMS
from bench.errors import BenchError
from bench.metrics import METRIC_SETS, METRICS, direction_arrow
from bench.report import DDOF, history_points, row_label, select_records, table_slug
from bench.store import ResultStore, atomic_write_bytes

MAX_PANELS = 6
MAX_CONVERGENCE_PANELS = 12  # loss terms and every validation curve of a method (RMLC records 11)
#: Panels for a dataset whose family shows every metric: the ones most papers share.
DEFAULT_PANELS = ("hamming_loss", "ranking_loss", "average_precision", "example_f1", "micro_f1", "mAP")


@dataclass
class Plot:
    """One figure: ``name`` (file stem), the ``dataset`` and table ``rows`` it shows, the figure,
    and the files :func:`save` wrote it to."""

    name: str
    dataset: str
    rows: set[str]
    figure: object = field(repr=False)
    paths: list[Path] = field(default_factory=list)


def _table_key(record: dict) -> tuple[str, str, int]:
    cfg = record["config"]
    return cfg["dataset"], cfg["protocol"], int(cfg["n_folds"])


def _subtitle(key: tuple[str, str, int]) -> str:
    dataset, protocol, n_folds = key
    proto = f"{n_folds}-fold CV" if protocol == "kfold" else protocol
    return f"{dataset}, {proto}: mean ± std over runs (ddof={DDOF})"


def panel_metrics(dataset: str, available: Iterable[str]) -> list[str]:
    """The dataset family's metrics (its papers' columns) among ``available``, at most MAX_PANELS."""
    try:
        family = plugins.get("datasets", dataset).metric_set
    except BenchError:  # a dataset plug-in no longer present: the store still holds its runs
        family = "all"
    wanted = DEFAULT_PANELS if family == "all" else METRIC_SETS.get(family, DEFAULT_PANELS)
    available = set(available)
    return [m for m in wanted if m in available][:MAX_PANELS]


def _grid(n_panels: int):
    from matplotlib.figure import Figure

    cols = min(3, n_panels)
    rows = math.ceil(n_panels / cols)
    width, height = 4.2 * cols, 3.2 * rows + 0.5
    fig = Figure(figsize=(width, height))
    # Fixed margins in inches: a constrained layout would double the drawing time.
    fig.subplots_adjust(left=0.75 / width, right=1 - 0.2 / width, bottom=0.55 / height, top=1 - 0.85 / height,
                        wspace=0.3, hspace=0.55)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax in axes[n_panels:]:
        ax.set_visible(False)
    return fig, axes[:n_panels]


def _band(ax, frame: pd.DataFrame, x: str, label: str) -> None:
    """Mean line and ± std band of ``value`` over runs at each ``x``."""
    stats = frame.groupby(x)["value"].agg(["mean", "std"]).sort_index()
    line, = ax.plot(stats.index, stats["mean"], marker="o" if len(stats) <= 12 else None, ms=3, label=label)
    std = stats["std"].fillna(0.0)
    ax.fill_between(stats.index, stats["mean"] - std, stats["mean"] + std, color=line.get_color(), alpha=0.2)


def _panel(ax, frame: pd.DataFrame, x: str, title: str, xlabel: str) -> None:
    """One panel: a mean ± std band per table row against an integer x (epoch, modalities)."""
    for row, part in frame.groupby("row", sort=True):
        _band(ax, part, x, row)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.grid(alpha=0.3)


def _label(metric: str) -> str:
    return f"{METRICS[metric].label} {direction_arrow(metric)}" if metric in METRICS else metric


# --------------------------------------------------------------------------- convergence
def _history_frame(records: list[dict]) -> pd.DataFrame:
    rows = [{"row": row_label(rec), "job": rec["job_id"], "epoch": epoch, "key": key, "value": value}
            for rec in records for key, value, epoch in history_points(rec)]
    return pd.DataFrame(rows, columns=["row", "job", "epoch", "key", "value"])


def _curve_order(key: str) -> tuple[int, str]:
    """Training loss terms first (``loss`` leading), then validation metrics."""
    return (key.startswith("val_"), key != "loss", key)


def convergence_plots(records: list[dict]) -> list[Plot]:
    plots = []
    for key, recs in _by_table(records).items():
        frame = _history_frame(recs).replace([np.inf, -np.inf], np.nan).dropna(subset=["value"])
        if frame.empty:
            continue
        keys = sorted(frame["key"].unique(), key=_curve_order)[:MAX_CONVERGENCE_PANELS]
        fig, axes = _grid(len(keys))
        for ax, curve in zip(axes, keys, strict=True):
            title = curve.removeprefix("val_") + (" (validation)" if curve.startswith("val_") else "")
            _panel(ax, frame[frame["key"] == curve], "epoch", title, "epoch")
        axes[0].legend(fontsize="small")
        fig.suptitle(f"Convergence — {_subtitle(key)}")
        plots.append(Plot(f"{table_slug(*key)}__convergence", key[0], set(frame["row"]), fig))
    return plots


# --------------------------------------------------------------------------- modalities
def modality_plots(records: list[dict]) -> list[Plot]:
    plots = []
    for key, recs in _by_table(records).items():
        rows = [{"row": row_label(r), "t": t, "metric": m, "value": v}
                for r in recs for t, entry in enumerate(r.get("step_metrics") or [], 1) for m, v in entry.items()]
        frame = pd.DataFrame(rows, columns=["row", "t", "metric", "value"]).dropna(subset=["value"])
        metrics = panel_metrics(key[0], frame["metric"].unique())
        if not metrics:
            continue
        fig, axes = _grid(len(metrics))
        for ax, metric in zip(axes, metrics, strict=True):
            _panel(ax, frame[frame["metric"] == metric], "t", _label(metric), "modalities used (t)")
        axes[0].legend(fontsize="small")
        fig.suptitle(f"Performance vs. number of modalities — {_subtitle(key)}")
        plots.append(Plot(f"{table_slug(*key)}__modalities", key[0], set(frame["row"]), fig))
    return plots


# --------------------------------------------------------------------------- sensitivity
def _numeric(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def sweeps(records: list[dict]) -> dict[tuple[str, str], list[dict]]:
    """(method, hyper-parameter) -> records of the rows that differ only in that numeric
    hyper-parameter, when at least two values of it were run (the largest such family)."""
    by_method: dict[str, list[dict]] = defaultdict(list)
    for rec in records:
        by_method[rec["config"]["method"]].append(rec)
    found = {}
    for method, recs in by_method.items():
        params = [{k: v for k, v in r["config"]["params"].items() if k not in PER_RUN_PARAMS} for r in recs]
        for name in sorted(set().union(*params)):
            families: dict[str, list[dict]] = defaultdict(list)
            for rec, p in zip(recs, params, strict=True):
                if _numeric(p.get(name)):
                    rest = repr(sorted((k, repr(v)) for k, v in p.items() if k != name))
                    families[rest].append(rec)
            best = max(families.values(), key=lambda fam: len({r["config"]["params"][name] for r in fam}),
                       default=[])
            if len({r["config"]["params"][name] for r in best}) >= 2:
                found[method, name] = best
    return found


def sensitivity_plots(records: list[dict]) -> list[Plot]:
    plots = []
    for key, recs in _by_table(records).items():
        for (method, name), family in sorted(sweeps(recs).items()):
            frame = pd.DataFrame([{"x": r["config"]["params"][name], "metric": m, "value": v}
                                  for r in family for m, v in r["metrics"].items()]).dropna(subset=["value"])
            metrics = panel_metrics(key[0], frame["metric"].unique())
            if not metrics:
                continue
            fig, axes = _grid(len(metrics))
            for ax, metric in zip(axes, metrics, strict=True):
                _band(ax, frame[frame["metric"] == metric], "x", method)
                ax.set_title(_label(metric))
                ax.set_xlabel(name)
                ax.grid(alpha=0.3)
            fig.suptitle(f"Sensitivity of {method} to {name} — {_subtitle(key)}")
            plots.append(Plot(f"{table_slug(*key)}__sensitivity_{method}_{name}", key[0],
                              {row_label(r) for r in family}, fig))
    return plots


# --------------------------------------------------------------------------- all figures
def _by_table(records: list[dict]) -> dict[tuple[str, str, int], list[dict]]:
    groups: dict[tuple[str, str, int], list[dict]] = defaultdict(list)
    for rec in records:
        groups[_table_key(rec)].append(rec)
    return dict(sorted(groups.items()))


def make_plots(store: ResultStore, datasets=None, methods=None) -> list[Plot]:
    """Every figure the stored runs support (figures stay open until :func:`close`)."""
    records = select_records(store, datasets, methods, warn=False)  # the tables have warned
    return convergence_plots(records) + modality_plots(records) + sensitivity_plots(records)


def save(plots: list[Plot], folder: Path, formats=("png", "pdf")) -> list[Path]:
    """Write each figure as ``<folder>/<name>.<fmt>``, atomically (and note the paths in ``plot.paths``)."""
    written = []
    for plot in plots:
        for fmt in formats:
            buf = io.BytesIO()
            plot.figure.savefig(buf, format=fmt, dpi=120)
            path = Path(folder) / f"{plot.name}.{fmt}"
            atomic_write_bytes(path, buf.getvalue())
            plot.paths.append(path)
            written.append(path)
    return written


def close(plots: list[Plot]) -> None:
    """Release the figures' memory (they were never registered with pyplot)."""
    for plot in plots:
        plot.figure.clear()
