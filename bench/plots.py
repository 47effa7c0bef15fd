"""The papers' figures, drawn from the results layer (matplotlib, PNG and PDF).

* **Convergence** (RMLC Fig. 2, RETDM Fig. 6): one figure per method family (a method and its
  registered ablations, whose loss terms are alike) and table: every numeric entry of the rows'
  per-epoch ``history_`` (loss terms first, then ``val_`` metrics) against the epoch, one line per
  row with a band of ± one sample std over runs (folds x seeds). A run that stopped early simply
  leaves the mean of the later epochs, so the band narrows to the runs still training. No curve is
  ever dropped: a family with more than :data:`MAX_PANELS` curves gets more figures (``…_2``).
  Timing and learning rate (``time_s``, ``lr``) are not convergence: they get their own figure,
  ``…__schedule_<family>``.
* **Metric vs. number of modalities used** (RMLC Fig. 3): the metrics of ``predict_steps``' output
  after t modalities (``step_metrics`` of a record), mean ± std over runs, for methods that have it.
* **Hyper-parameter sensitivity** (DER Figs. 6-7, CMSG's heads/layers study): when the rows of one
  method differ in exactly one numeric hyper-parameter (``--set alpha=...``), the metric against
  that hyper-parameter, mean ± std over runs.
* **Runs side by side**: per main table, each row's value of the table's first metric (mAP where
  the table has it) in every run, the mean as a bar; the runs joined across rows.
* **Class maps** (DER Figs. 2 and 8; Order-Free RNN's and CMSG's attention maps): for each row of
  a method with ``class_maps``, its first run's (by fold, seed) stored test images
  (:data:`bench.outputs.CLASS_MAP_IMAGES`), one line each: the image, then one overlay per predicted
  label (by score, at most :data:`MAX_OVERLAYS`; none predicted: the top-scored one, titled "not
  predicted"): the label's map upsampled bilinearly to the image (the model saw the whole image
  resized to a square, so the map covers the whole image), scaled to [0, 1] per map and drawn in
  a colormap over it, titled with the label, its score and ✓/✗ for a true or a false label.

What a reader can rely on: each row has one colour in every panel and figure of a report
(:attr:`bench.results.Results.colours`); each figure has a legend naming its rows, and a panel
that draws only some of them has its own; a panel whose curves span more than a factor
:data:`LOG_RATIO` is drawn on a log axis. Figures are built with
:class:`matplotlib.figure.Figure` directly (no pyplot, no global backend: headless-safe) and grouped
like the tables: per (dataset, protocol, folds). The metric panels follow the dataset family's
metric set (:data:`bench.metrics.METRIC_SETS`).
"""

from __future__ import annotations

import io
import math
import re
import textwrap
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from bench.metrics import METRICS, direction_arrow
from bench.results import DDOF, Results, Row, identity_params, protocol_text, table_slug
from bench.store import atomic_write_bytes

MAX_PANELS = 12
MAX_METRIC_PANELS = 6
#: Panels for a dataset whose family shows every metric: the ones most papers share.
DEFAULT_PANELS = ("hamming_loss", "ranking_loss", "average_precision", "example_f1", "micro_f1", "mAP")
#: A panel whose positive curves span more than this factor gets a log y axis.
LOG_RATIO = 10.0
#: Class maps: the overlays per image (predicted labels, by score), colormap and opacity.
MAX_OVERLAYS = 4
MAP_COLORMAP = "jet"
MAP_ALPHA = 0.5
#: The stored arrays a class-map figure reads (bench.worker computes them, bench.runner stores them).
MAP_ARRAYS = ("class_maps", "class_map_images", "class_map_image_sizes", "class_map_labels", "scores",
              "y_pred", "test_index")


@dataclass
class Plot:
    """One figure: ``name`` (file stem), the ``dataset`` and row labels (``rows``) it shows, the
    figure, and the files :func:`save` wrote it to."""

    name: str
    dataset: str
    rows: set[str]
    figure: object = field(repr=False)
    paths: list[Path] = field(default_factory=list)


def _subtitle(key: tuple[str, str, int]) -> str:
    dataset, protocol, n_folds = key
    return f"{dataset}, {protocol_text(protocol, n_folds)}: mean ± std over runs (ddof={DDOF})"


def panel_metrics(results: Results, dataset: str, available: Iterable[str]) -> list[str]:
    """The dataset family's metrics (its papers' columns) among ``available``, at most MAX_METRIC_PANELS."""
    family = results.knowledge.metric_sets.get(dataset, "all")
    wanted = DEFAULT_PANELS if family == "all" else results.metric_columns(dataset)
    available = set(available)
    return [m for m in wanted if m in available][:MAX_METRIC_PANELS]


def _grid(n_panels: int, legend_rows: int, title: str):
    """A figure of ``n_panels`` panels (3 per line) under a wrapped ``title`` and room for a legend
    of ``legend_rows`` lines; returns the figure, its panels and the legend's top (figure units)."""
    from matplotlib.figure import Figure

    cols = min(3, n_panels)
    rows = math.ceil(n_panels / cols)
    width = 4.2 * cols
    title = textwrap.fill(title, width=int(width * 11))  # ~11 characters per inch at 12 pt
    title_h = 0.25 * (title.count("\n") + 1) + 0.15
    legend_h = 0.25 * legend_rows + 0.1
    height = 3.2 * rows + 0.55 + title_h + legend_h
    fig = Figure(figsize=(width, height))
    fig.suptitle(title, y=1 - 0.08 / height, va="top")
    # Fixed margins in inches: a constrained layout would double the drawing time.
    fig.subplots_adjust(left=0.75 / width, right=1 - 0.2 / width, bottom=0.55 / height,
                        top=1 - (title_h + legend_h + 0.3) / height, wspace=0.3, hspace=0.55)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax in axes[n_panels:]:
        ax.set_visible(False)
    return fig, axes[:n_panels], 1 - title_h / height


def _band(ax, frame: pd.DataFrame, x: str, label: str, colour: str) -> pd.Series:
    """Mean line and ± std band of ``value`` over runs at each ``x``; returns the means."""
    stats = frame.groupby(x)["value"].agg(["mean", "std"]).sort_index()
    ax.plot(stats.index, stats["mean"], marker="o" if len(stats) <= 12 else None, ms=3, label=label, color=colour)
    std = stats["std"].fillna(0.0)
    ax.fill_between(stats.index, stats["mean"] - std, stats["mean"] + std, color=colour, alpha=0.2)
    return stats["mean"]


def _log_if_wide(ax, means: list[pd.Series]) -> None:
    values = pd.concat(means).dropna() if means else pd.Series(dtype=float)
    if len(values) and (values > 0).all() and values.max() / values.min() > LOG_RATIO:
        ax.set_yscale("log")


def _panel(ax, frame: pd.DataFrame, x: str, title: str, xlabel: str, colours: dict[str, str]) -> set[str]:
    """One panel: a mean ± std band per table row against an integer x; returns the rows drawn."""
    means = [_band(ax, part, x, label, colours[label]) for label, part in frame.groupby("label", sort=True)]
    _log_if_wide(ax, means)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.grid(alpha=0.3)
    return set(frame["label"])


def _legends(fig, axes, drawn: list[set[str]], colours: dict[str, str], top: float) -> set[str]:
    """A figure legend of every row drawn; a panel that draws only some of them gets its own."""
    from matplotlib.lines import Line2D

    rows = sorted(set().union(*drawn), key=list(colours).index)
    handles = [Line2D([], [], color=colours[r], marker="o", ms=3) for r in rows]
    fig.legend(handles, rows, loc="upper center", bbox_to_anchor=(0.5, top),
               ncol=min(len(rows), 4), fontsize="small", frameon=False)
    for ax, labels in zip(axes, drawn, strict=True):
        if labels != set(rows):
            ax.legend(fontsize="x-small")
    return set(rows)


def _label(metric: str) -> str:
    return f"{METRICS[metric].label} {direction_arrow(metric)}" if metric in METRICS else metric


def _legend_rows(n: int) -> int:
    return math.ceil(n / 4)


# --------------------------------------------------------------------------- convergence
def _curve_order(key: str) -> tuple[int, str]:
    """Training loss terms first (``loss`` leading), then validation metrics."""
    return (key.startswith("val_"), key != "loss", key)


def _curve_title(key: str) -> str:
    return key.removeprefix("val_") + (" (validation)" if key.startswith("val_") else "")


def _curve_figures(results: Results, frame: pd.DataFrame, name: str, title: str, key) -> list[Plot]:
    """Figures of every curve in ``frame`` (one panel each), :data:`MAX_PANELS` per figure."""
    keys = sorted(frame["key"].unique(), key=_curve_order)
    chunks = [keys[i:i + MAX_PANELS] for i in range(0, len(keys), MAX_PANELS)]
    plots = []
    for n, chunk in enumerate(chunks, 1):
        part = frame[frame["key"].isin(chunk)]
        suffix = f" ({n} of {len(chunks)})" if len(chunks) > 1 else ""
        fig, axes, top = _grid(len(chunk), _legend_rows(part["label"].nunique()), f"{title}{suffix} — {_subtitle(key)}")
        drawn = [_panel(ax, part[part["key"] == curve], "epoch", _curve_title(curve), "epoch", results.colours)
                 for ax, curve in zip(axes, chunk, strict=True)]
        rows = _legends(fig, axes, drawn, results.colours, top)
        plots.append(Plot(name + (f"_{n}" if n > 1 else ""), key[0], rows, fig))
    return plots


def convergence_plots(results: Results) -> list[Plot]:
    """Per table and method family: the convergence curves, and the schedule (timing, lr) apart."""
    plots = []
    for (table, family), part in results.history().groupby(["table", "family"], sort=True):
        slug = table_slug(*table)
        curves, schedule = part[~part["schedule"]], part[part["schedule"]]
        if len(curves):
            plots += _curve_figures(results, curves, f"{slug}__convergence_{family}",
                                    f"Convergence of {family}", table)
        if len(schedule):
            plots += _curve_figures(results, schedule, f"{slug}__schedule_{family}",
                                    f"Training schedule of {family} (epoch time, learning rate)", table)
    return plots


# --------------------------------------------------------------------------- modalities
def modality_plots(results: Results) -> list[Plot]:
    plots = []
    for table, frame in results.steps().groupby("table", sort=True):
        metrics = panel_metrics(results, table[0], frame["metric"].unique())
        if not metrics or frame["t"].nunique() < 2:  # one modality (yeast): a point per panel says nothing
            continue
        fig, axes, top = _grid(len(metrics), _legend_rows(frame["label"].nunique()),
                               f"Performance vs. number of modalities — {_subtitle(table)}")
        drawn = [_panel(ax, frame[frame["metric"] == metric], "t", _label(metric), "modalities used (t)",
                        results.colours) for ax, metric in zip(axes, metrics, strict=True)]
        rows = _legends(fig, axes, drawn, results.colours, top)
        plots.append(Plot(f"{table_slug(*table)}__modalities", table[0], rows, fig))
    return plots


# --------------------------------------------------------------------------- sensitivity
def _numeric(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def sweeps(rows: Iterable[Row]) -> dict[tuple[str, str], list[Row]]:
    """(method, hyper-parameter) -> the rows (methods' own outputs) that differ only in that
    numeric hyper-parameter, when at least two values of it were run (the largest such family)."""
    by_method: dict[str, list[Row]] = defaultdict(list)
    for row in rows:
        if not row.readout:
            by_method[row.method].append(row)
    found = {}
    for method, members in by_method.items():
        params = [identity_params(r.params) for r in members]
        for name in sorted(set().union(*params)):
            families: dict[str, list[Row]] = defaultdict(list)
            for row, p in zip(members, params, strict=True):
                if _numeric(p.get(name)):
                    rest = repr(sorted((k, repr(v)) for k, v in p.items() if k != name))
                    families[rest].append(row)
            best = max(families.values(), key=lambda fam: len({r.params[name] for r in fam}), default=[])
            if len({r.params[name] for r in best}) >= 2:
                found[method, name] = best
    return found


def sensitivity_plots(results: Results) -> list[Plot]:
    plots = []
    for table, rows in results.by_table().items():
        for (method, name), family in sorted(sweeps(rows).items()):
            frame = pd.DataFrame([{"x": row.params[name], "metric": m, "value": v}
                                  for row in family for rec in row.records
                                  for m, v in row.metrics_of(rec).items()]).dropna(subset=["value"])
            metrics = panel_metrics(results, table[0], frame["metric"].unique())
            if not metrics:
                continue
            # The curve takes the colour of the row run at the parameter's default (not --set);
            # its legend names that row and the parameter varied.
            default = min(family, key=lambda r: (name in r.overrides, len(r.overrides), r.label))
            colour = results.colours[default.label]
            legend = f"{default.label}, {name} varied"
            fig, axes, top = _grid(len(metrics), 1, f"Sensitivity of {method} to {name} — {_subtitle(table)}")
            for ax, metric in zip(axes, metrics, strict=True):
                _log_if_wide(ax, [_band(ax, frame[frame["metric"] == metric], "x", legend, colour)])
                ax.set_title(_label(metric))
                ax.set_xlabel(name)
                ax.grid(alpha=0.3)
            _legends(fig, axes, [{legend}] * len(axes), {legend: colour}, top)
            plots.append(Plot(f"{table_slug(*table)}__sensitivity_{method}_{name}", table[0],
                              {r.label for r in family}, fig))
    return plots


# --------------------------------------------------------------------------- class maps
def shown_labels(scores, y_pred) -> list[tuple[int, bool]]:
    """(label, predicted) of the overlays of one image: the predicted labels by score (at most
    :data:`MAX_OVERLAYS`), or, when none is predicted, the top-scored label."""
    predicted = np.flatnonzero(y_pred)
    if not predicted.size:
        return [(int(np.argmax(scores)), False)]
    order = predicted[np.argsort(-scores[predicted], kind="stable")]
    return [(int(label), True) for label in order[:MAX_OVERLAYS]]


def upsampled_map(grid_map, height: int, width: int):
    """A map on the backbone grid, upsampled bilinearly (pixel centres aligned, as torch's
    ``align_corners=False``) to ``height x width`` and scaled to [0, 1] (a flat map: all 0)."""
    from scipy import ndimage

    grid_map = np.asarray(grid_map, dtype=np.float64)
    zoom = (height / grid_map.shape[0], width / grid_map.shape[1])
    up = ndimage.zoom(grid_map, zoom, order=1, grid_mode=True, mode="nearest")
    low, high = up.min(), up.max()
    return (up - low) / (high - low) if high > low else np.zeros_like(up)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", text).strip("_")


def _short(text: str, width: int) -> str:
    return text if len(text) <= width else text[:width - 1] + "…"


def _overlay_title(name: str, score: float, true: bool, predicted: bool) -> str:
    title = f"{_short(name, 24)} {score:.2f} {'✓' if true else '✗'}"
    return title if predicted else f"{title}\n(not predicted)"


def _class_map_figure(row: Row, record, arrays: dict, table: tuple[str, str, int]) -> Plot:
    from matplotlib.figure import Figure

    maps, images, sizes = arrays["class_maps"], arrays["class_map_images"], arrays["class_map_image_sizes"]
    k = len(maps)
    truth, scores, y_pred = arrays["class_map_labels"], arrays["scores"][:k], arrays["y_pred"][:k]
    names = record.label_names or [str(j) for j in range(maps.shape[1])]
    shown = [shown_labels(scores[i], y_pred[i]) for i in range(k)]
    cols = 1 + max(len(s) for s in shown)
    cfg = record.config
    title = textwrap.fill(f"Class maps of {row.label} — {cfg.dataset}, {protocol_text(*table[1:])}, fold "
                          f"{cfg.fold}, seed {cfg.seed}: each test image, then its predicted labels' maps "
                          f"(✓ a true label, ✗ not)", width=int(2.6 * cols * 11))
    title_h = 0.25 * (title.count("\n") + 1) + 0.2
    height = 2.6 * k + title_h
    fig = Figure(figsize=(2.6 * cols, height))
    fig.suptitle(title, y=1 - 0.08 / height, va="top")
    fig.subplots_adjust(left=0.02, right=0.98, bottom=0.02, top=1 - title_h / height, wspace=0.08, hspace=0.45)
    axes = fig.subplots(k, cols, squeeze=False)
    for i in range(k):
        h, w = sizes[i]
        image = images[i, :h, :w]
        true = [names[j] for j in np.flatnonzero(truth[i])]
        axes[i, 0].imshow(image)
        axes[i, 0].set_title(_short(f"test #{arrays['test_index'][i]}: {', '.join(true) or 'no label'}", 32), fontsize="small")
        for ax, (label, predicted) in zip(axes[i, 1:], shown[i], strict=False):
            ax.imshow(image)
            ax.imshow(upsampled_map(maps[i, label], h, w), cmap=MAP_COLORMAP, alpha=MAP_ALPHA, vmin=0, vmax=1)
            ax.set_title(_overlay_title(names[label], float(scores[i, label]), bool(truth[i, label]), predicted),
                         fontsize="small")
        for ax in axes[i, 1 + len(shown[i]):]:
            fig.delaxes(ax)
        for ax in axes[i, :1 + len(shown[i])]:
            ax.set_axis_off()
    return Plot(f"{table_slug(*table)}__class_maps_{_slug(row.label)}", table[0], {row.label}, fig)


def class_map_plots(results: Results) -> list[Plot]:
    """Per table and row of a method's own output whose runs stored class maps: one figure."""
    plots = []
    for table, rows in results.by_table().items():
        for row in rows:
            record = min(row.records, key=lambda r: (r.config.fold, r.config.seed))
            maps = results.arrays(record, MAP_ARRAYS[:1])
            if maps:
                arrays = {**maps, **results.arrays(record, MAP_ARRAYS[1:])}
                plots.append(_class_map_figure(row, record, arrays, table))
    return plots


# --------------------------------------------------------------------------- runs side by side
def run_plots(results: Results) -> list[Plot]:
    """Per main table (rows of >= 2 runs): each row's value of the table's first panel metric in
    every run (one dot per fold/seed, runs joined across rows by a faint line so a hard fold shows
    as a hard fold everywhere), the row's mean as a bar: what the mean ± std of the table hides."""
    plots = []
    for key, rows in results.by_table().items():
        if len(rows) < 2 or max(len(r.records) for r in rows) < 2:
            continue
        metrics = panel_metrics(results, key[0], results.value_columns)
        metric = "mAP" if "mAP" in metrics else (metrics[0] if metrics else None)
        if metric is None:
            continue
        plots.append(_run_figure(results.run_values(rows, metric), metric, key, results.colours))
    return plots


def _run_figure(runs: pd.DataFrame, metric: str, key: tuple[str, str, int], colours: dict[str, str]) -> Plot:
    from matplotlib.figure import Figure

    labels = list(runs.columns)
    width = max(5.0, 0.75 * len(labels) + 1.5)
    fig = Figure(figsize=(width, 4.6))
    ax = fig.subplots()
    x = np.arange(len(labels))
    # each run keeps one small offset in every row, so its grey line passes through its own dots
    offsets = np.linspace(-0.12, 0.12, len(runs)) if len(runs) > 1 else np.zeros(len(runs))
    for offset, (_, values) in zip(offsets, runs.iterrows(), strict=True):
        ax.plot(x + offset, values.to_numpy(dtype=float), color="0.8", lw=0.6, zorder=1)
    for i, label in enumerate(labels):
        values = runs[label].to_numpy(dtype=float)
        ax.scatter(i + offsets, values, s=12, color=colours[label], zorder=3)
        if np.isfinite(values).any():
            ax.hlines(np.nanmean(values), i - 0.3, i + 0.3, color=colours[label], lw=2, zorder=4)
    ax.set_xticks(x, labels, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel(_label(metric))
    dataset, protocol, n_folds = key
    title = (f"{dataset}, {protocol_text(protocol, n_folds)}: {_label(metric)} of each run (dots; bar: the mean; "
             "a grey line joins one run across the rows)")
    ax.set_title(textwrap.fill(title, width=int(width * 14)), fontsize=9)
    fig.tight_layout()
    return Plot(f"runs_{table_slug(*key)}_{metric}", dataset, set(labels), fig)


# --------------------------------------------------------------------------- all figures
def make_plots(results: Results) -> list[Plot]:
    """Every figure the rows support (figures stay open until :func:`close`)."""
    if not results:
        return []
    return (run_plots(results) + convergence_plots(results) + modality_plots(results) + sensitivity_plots(results)
            + class_map_plots(results))


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
