"""Paper-style tables, built from the results layer (:mod:`bench.results`) alone.

Four kinds of :class:`bench.tables.Table`, rendered by :mod:`bench.tables` to Markdown and LaTeX:

* **main** (one per dataset and protocol): the rows of the methods' own outputs, the columns its
  papers report (``Dataset.metric_set`` -> :data:`bench.metrics.METRIC_SETS`: the RMLC set for
  multi-modal data, ML-GCN's mAP/CP/.../OF1 and top-3 forms for COCO and NUS-WIDE, mAP for VOC,
  the RETDM set for scene and MIRFLICKR), each cell the mean ± sample standard deviation (ddof = 1,
  stated in the caption) over the runs of that protocol (folds x seeds);
* **per-class AP** (datasets whose papers print one, ``Dataset.per_class_table``: Pascal VOC, DER
  Table II's shape): the classes as columns, then mAP;
* **ablation** (one per method family): a method beside its registered ablations (methods whose
  ``ablation_of`` names it), its runs with other hyper-parameters and its readouts
  (``der:first_stream``: other outputs of the same trained model);
* the cross-dataset **leaderboard** and its tests, built in :mod:`bench.stats`.

A row with fewer runs than the most complete row of its table is marked with a dagger and its run
count, so a partial run never passes for a finished one. Entries left out of a macro average
because they are undefined in a test fold (see :mod:`bench.metrics`) are summed in a footnote.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path

from bench.results import DDOF, PER_CLASS_PREFIX, Results, Row, protocol_text, table_slug
from bench.tables import MARKS, Table, write_tables


def _caption(dataset: str, protocol: str, n_folds: int, what: str = "") -> str:
    return (f"{what or dataset}, {protocol_text(protocol, n_folds)}: mean ± std over runs (sample std, "
            f"ddof={DDOF}); ↓ lower is better, ↑ higher is better; {MARKS}.")


def _scale_notes(rows: Iterable[Row]) -> tuple[str, ...]:
    """Which rows ran with their dataset's scale settings instead of the papers' defaults."""
    groups: dict[str, list[str]] = defaultdict(list)
    for row in rows:
        if row.scale_defaults:
            groups[", ".join(f"{k}={v}" for k, v in sorted(row.scale_defaults.items()))].append(row.label)
    return tuple(f"Run with the dataset's scale settings ({settings}), not the papers' defaults: "
                 f"{', '.join(labels)} (`bench run --paper-defaults` for the papers' own)."
                 for settings, labels in sorted(groups.items()))


def _search_notes(rows: Iterable[Row]) -> tuple[str, ...]:
    """The values each searched row chose, per fold (:mod:`bench.tuning`)."""
    from bench.tuning import chosen_note

    return tuple(chosen_note(row.label, [(r.config.seed, r.config.fold, r.search.get("chosen", {}))
                                         for r in row.records])
                 for row in rows if row.search and not row.readout)


def _table(results: Results, rows: list[Row], columns: list[str], slug: str, caption: str, **kw) -> Table:
    mean, std, runs = results.cells(rows, columns)
    undefined = results.undefined(rows, columns)
    return Table(slug, caption, mean, std, runs, undefined, notes=_scale_notes(rows) + _search_notes(rows),
                 expected=_expected(results, rows), **kw)


def _expected(results: Results, rows: list[Row]):
    """The runs a complete row has, by row label (a row of 3 of its 4 folds says so)."""
    return results.expected_runs.reindex([r.id for r in rows]).set_axis([r.label for r in rows])


def build_tables(results: Results, metrics: list[str] | None = None) -> list[Table]:
    """One main table per (dataset, protocol, folds); ``metrics`` fixes the columns of every table
    (default: each dataset's papers' set, as far as its runs recorded it)."""
    tables = []
    for (dataset, protocol, n_folds), rows in results.by_table().items():
        columns = results.metric_columns(dataset, metrics)
        tables.append(_table(results, rows, columns, table_slug(dataset, protocol, n_folds),
                             _caption(dataset, protocol, n_folds), kind="main", dataset=dataset,
                             protocol=protocol, n_folds=n_folds))
    return tables


def build_per_class_tables(results: Results) -> list[Table]:
    """Per-class AP tables (classes as columns, then mAP) for the datasets whose papers print one.

    A class undefined in a fold (no positive there) is left out of that class's mean.
    """
    tables = []
    for (dataset, protocol, n_folds), rows in results.by_table().items():
        if dataset not in results.knowledge.per_class:
            continue
        ids = {r.id for r in rows}
        part = results.frame[results.frame["row"].isin(ids)]
        columns = [c for c in results.value_columns if c.startswith(PER_CLASS_PREFIX) and part[c].notna().any()]
        if not columns:
            continue
        proto = protocol_text(protocol, n_folds)
        caption = (f"{dataset}, {proto}: average precision per class and mAP ↑, mean over runs "
                   f"(standard deviations left out for width; kept in the table data); {MARKS}.")
        mean, std, runs = results.cells(rows, [*columns, "mAP"])
        tables.append(Table(f"{table_slug(dataset, protocol, n_folds)}__per_class_ap", caption, mean, std, runs,
                            results.undefined(rows, ["mAP"]), kind="per_class", dataset=dataset,
                            protocol=protocol, n_folds=n_folds, show_std=False, expected=_expected(results, rows)))
    return tables


def _family_order(row: Row) -> tuple:
    """The full method with its defaults first, then its hyper-parameter variants and readouts,
    then the ablations in name order (each followed by its own)."""
    return (row.method != row.family, row.method, bool(row.readout), bool(row.overrides), row.label)


def build_ablation_tables(results: Results, metrics: list[str] | None = None) -> list[Table]:
    """One table per method family with at least two rows on a (dataset, protocol).

    A family is a method, the methods whose ``ablation_of`` names it, their runs with
    hyper-parameter overrides and their readouts, each its own row.
    """
    tables = []
    for (dataset, protocol, n_folds), rows in results.by_table(readouts=True).items():
        columns = results.metric_columns(dataset, metrics)
        families: dict[str, list[Row]] = defaultdict(list)
        for row in rows:
            families[row.family].append(row)
        for family, members in sorted(families.items()):
            if len(members) < 2:
                continue
            members = sorted(members, key=_family_order)
            caption = _caption(dataset, protocol, n_folds, f"ablation of {family} on {dataset}")
            tables.append(_table(results, members, columns, f"{table_slug(dataset, protocol, n_folds)}__ablation_{family}",
                                 caption, kind="ablation", dataset=dataset, protocol=protocol, n_folds=n_folds,
                                 family=family))
    return tables


def build_all_tables(results: Results, metrics: list[str] | None = None) -> list[Table]:
    """Main, per-class AP and ablation tables (the leaderboard is :mod:`bench.stats`); ``metrics``
    fixes the columns of the main and ablation tables (default: each dataset's papers' set)."""
    if not results:
        return []
    return (build_tables(results, metrics) + build_per_class_tables(results)
            + build_ablation_tables(results, metrics))


def write_pair_tests(results: Results, out_dir: Path, formats=("md", "latex"),
                     metrics: list[str] | None = None) -> list[Path]:
    """``<slug>__wilcoxon.{md,tex}`` for each main table: its rows compared pairwise over the runs
    they share (:func:`bench.stats.write_run_tests`)."""
    written = []
    for (dataset, protocol, n_folds), rows in results.by_table().items():
        if len(rows) < 2:
            continue
        from bench.stats import write_run_tests  # scipy only when a table has rows to compare

        written += write_run_tests(results, rows, results.metric_columns(dataset, metrics),
                                   table_slug(dataset, protocol, n_folds), out_dir, formats)
    return written


def write_reports(results: Results, out_dir: Path, formats=("md", "latex"),
                  leaderboard: bool = True, metrics: list[str] | None = None) -> tuple[list[Table], list[Path]]:
    """Every table of ``results`` into ``out_dir``.

    Writes the main, per-class AP and ablation tables (``<slug>.{md,tex}``), the pairwise tests
    of each main table's rows over its runs (``<slug>__wilcoxon.{md,tex}``) and, with
    ``leaderboard``, the cross-dataset leaderboard, its tests and critical-difference diagrams
    (:func:`bench.stats.write_leaderboard`). Returns the tables (the leaderboard's included) and
    the files written, figures last. ``metrics``: the columns of the main and ablation tables and
    the metrics tested (default: each dataset's papers' set).
    """
    tables = build_all_tables(results, metrics)
    written = write_tables(tables, out_dir, formats) + write_pair_tests(results, out_dir, formats, metrics)
    main = [t for t in tables if t.kind == "main"]
    if leaderboard and len({t.dataset for t in main}) > 1:  # one dataset: no ranking (bench.stats says
        from bench.stats import write_leaderboard  # why); scipy.stats, scikit-posthocs only when one is built

        board_tables, board_files = write_leaderboard(main, out_dir, formats)
        tables += board_tables
        written += board_files
    return tables, written
