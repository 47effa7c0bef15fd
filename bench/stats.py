"""The leaderboard across datasets and its significance tests (Demšar, JMLR 7:1-30, 2006).

For each metric: every row (method with its hyper-parameters) that has a value on every dataset is
ranked within each dataset (1 = best, ties share the average rank), and the ranks are averaged over
datasets. Then:

* the Friedman test of "all rows perform alike" (``scipy.stats.friedmanchisquare``, which also
  corrects for ties; Demšar's Eq. without the correction equals it when there are no ties), run when
  there are at least 2 datasets and 3 rows;
* the Nemenyi post-hoc test of every pair (``scikit_posthocs.posthoc_nemenyi_friedman``) and the
  critical difference ``CD = q_α sqrt(k(k+1) / (6N))``, ``q_α`` the studentized range quantile / √2
  (Demšar's Table 5), drawn as a critical-difference diagram
  (``scikit_posthocs.critical_difference_diagram``);
* for each pair, the Wilcoxon signed-rank test over datasets (``scipy.stats.wilcoxon``, zero
  differences split between the two sides as Demšar recommends), the p-values of a metric's pairs
  Holm-corrected (:func:`holm`).

One dataset contributes one block: if a dataset has tables under several protocols, the one with the
most rows is used (the caption names the tables used). When a test cannot run, the reason is stated
in the table's notes instead.
"""

from __future__ import annotations

import io
import itertools
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import scikit_posthocs
import scipy.stats

from bench.metrics import METRICS
from bench.store import atomic_write_bytes
from bench.tables import RENDERERS, Table, latex_text_table, md_row, write_text

ALPHA = 0.05
MIN_DATASETS = 2
MIN_ROWS = 2  # a ranking of one row is no ranking
MIN_METHODS_FRIEDMAN = 3
#: Metrics that get a critical-difference diagram (when their Friedman test ran).
DIAGRAM_METRICS = ("mAP", "average_precision", "micro_f1", "OF1", "CF1", "hamming_loss", "ranking_loss")


@dataclass
class MetricTest:
    """The ranks and tests of one metric across datasets."""

    metric: str
    datasets: list[str]  # the blocks the tests pair over: datasets (or, within one dataset, runs)
    ranks: pd.DataFrame  # datasets x rows, 1 = best
    left_out: list[str]  # rows without a value on every dataset
    friedman_stat: float = np.nan
    friedman_p: float = np.nan
    cd: float = np.nan
    nemenyi: pd.DataFrame | None = None
    wilcoxon: pd.DataFrame = field(default_factory=pd.DataFrame)
    reason: str = ""  # why the Friedman test did not run ("" when it did)

    @property
    def average_ranks(self) -> pd.Series:
        return self.ranks.mean(axis=0)

    @property
    def n_datasets(self) -> int:
        return len(self.datasets)


def _p(p: float) -> str:
    return "n/a" if np.isnan(p) else f"{p:.3g}"


# --------------------------------------------------------------------------- building blocks
def score_matrix(tables: list[Table], metric: str) -> tuple[pd.DataFrame, list[str]]:
    """Datasets x rows of mean scores for ``metric``, rows with a value on every dataset only.

    Returns the matrix and the rows left out. One table per dataset: the one with the most rows.
    """
    chosen: dict[str, Table] = {}
    for table in tables:
        if metric not in table.mean.columns:
            continue
        best = chosen.get(table.dataset)
        if best is None or len(table.mean.index) > len(best.mean.index):
            chosen[table.dataset] = table
    if not chosen:
        return pd.DataFrame(), []
    matrix = pd.DataFrame({d: t.mean[metric].astype(float) for d, t in sorted(chosen.items())}).T
    complete = matrix.columns[matrix.notna().all(axis=0)]
    left_out = sorted(set(matrix.columns) - set(complete))
    return matrix[sorted(complete)], left_out


def rank_matrix(matrix: pd.DataFrame, higher_is_better: bool) -> pd.DataFrame:
    """Within each dataset (row), rank 1 = best; ties get the average of the ranks they span."""
    values = -matrix.to_numpy() if higher_is_better else matrix.to_numpy()
    ranks = np.vstack([scipy.stats.rankdata(row, method="average") for row in values]) if len(values) else values
    return pd.DataFrame(ranks, index=matrix.index, columns=matrix.columns)


def critical_difference(k: int, n: int, alpha: float = ALPHA) -> float:
    """Nemenyi's critical difference of average ranks for ``k`` methods on ``n`` datasets."""
    q_alpha = scipy.stats.studentized_range.ppf(1 - alpha, k, np.inf) / np.sqrt(2)
    return float(q_alpha * np.sqrt(k * (k + 1) / (6 * n)))


def holm(pvalues) -> np.ndarray:
    """Holm's step-down adjusted p-values (NaN entries stay NaN and do not count as tests)."""
    p = np.asarray(pvalues, dtype=float)
    out = np.full(p.shape, np.nan)
    valid = np.flatnonzero(~np.isnan(p))
    order = valid[np.argsort(p[valid], kind="stable")]
    m = len(order)
    adjusted = np.maximum.accumulate((m - np.arange(m)) * p[order]) if m else np.array([])
    out[order] = np.minimum(adjusted, 1.0)
    return out


def wilcoxon_pairs(matrix: pd.DataFrame, higher_is_better: bool) -> pd.DataFrame:
    """Every pair of rows: Wilcoxon signed-rank over datasets, Holm-corrected; who is better."""
    records = []
    for a, b in itertools.combinations(matrix.columns, 2):
        diff = matrix[a].to_numpy() - matrix[b].to_numpy()
        if np.all(diff == 0):
            stat, p = np.nan, np.nan  # identical on every dataset: nothing to test
        else:
            res = scipy.stats.wilcoxon(matrix[a], matrix[b], zero_method="zsplit")
            stat, p = float(res.statistic), float(res.pvalue)
        wins = np.sum(diff > 0) if higher_is_better else np.sum(diff < 0)
        losses = np.sum(diff < 0) if higher_is_better else np.sum(diff > 0)
        better = a if wins > losses else b if losses > wins else "–"
        records.append({"a": a, "b": b, "statistic": stat, "p": p, "better": better,
                        "wins_a": int(wins), "wins_b": int(losses)})
    frame = pd.DataFrame(records, columns=["a", "b", "statistic", "p", "better", "wins_a", "wins_b"])
    frame["p_holm"] = holm(frame["p"]) if len(frame) else []
    return frame


def metric_test(tables: list[Table], metric: str) -> MetricTest:
    """Average ranks, Friedman, Nemenyi and pairwise Wilcoxon of one metric across the tables."""
    matrix, left_out = score_matrix(tables, metric)
    higher = METRICS[metric].higher_is_better
    ranks = rank_matrix(matrix, higher)
    test = MetricTest(metric, list(matrix.index), ranks, left_out)
    n, k = matrix.shape
    if n < MIN_DATASETS:
        test.reason = f"needs results on at least {MIN_DATASETS} datasets, found {n}"
        return test
    if k >= 2:
        test.wilcoxon = wilcoxon_pairs(matrix, higher)
    if k < MIN_METHODS_FRIEDMAN:
        test.reason = f"needs at least {MIN_METHODS_FRIEDMAN} rows with a value on every dataset, found {k}"
        return test
    if np.all(ranks.to_numpy() == ranks.to_numpy()[:, :1]):
        test.reason = "every row ties on every dataset"
        return test
    res = scipy.stats.friedmanchisquare(*(matrix[c].to_numpy() for c in matrix.columns))
    test.friedman_stat, test.friedman_p = float(res.statistic), float(res.pvalue)
    test.cd = critical_difference(k, n)
    nemenyi = scikit_posthocs.posthoc_nemenyi_friedman(matrix.to_numpy())
    nemenyi.index = nemenyi.columns = matrix.columns
    test.nemenyi = nemenyi
    return test


def leaderboard(tables: list[Table], metrics: list[str] | None = None) -> list[MetricTest]:
    """A :class:`MetricTest` per metric (default: every metric of any main table, in METRICS order)."""
    present = {m for t in tables for m in t.mean.columns}
    metrics = metrics or [m for m in METRICS if m in present]
    return [metric_test(tables, m) for m in metrics]


# --------------------------------------------------------------------------- presentation
def outcome_notes(tests: list[MetricTest]) -> tuple[str, ...]:
    """What could not be tested and what was left out, one line per reason (not one per metric)."""
    not_run, left_out = defaultdict(list), defaultdict(list)
    for t in tests:
        if t.reason:
            not_run[t.reason].append(METRICS[t.metric].label)
        if t.left_out:
            left_out[", ".join(t.left_out)].append(METRICS[t.metric].label)
    notes = []
    for reason, labels in not_run.items():
        which = "any metric" if len(labels) == len(tests) else ", ".join(labels)
        notes.append(f"Friedman test not run for {which}: {reason}.")
    for rows, labels in left_out.items():
        which = "every metric" if len(labels) == len(tests) else ", ".join(labels)
        notes.append(f"Left out of the ranks of {which} (no value on every dataset): {rows}.")
    return tuple(notes)


def leaderboard_table(tests: list[MetricTest]) -> Table:
    """Average rank per metric (rows x metrics; lower is better) as a report :class:`Table`."""
    ranks = pd.DataFrame({t.metric: t.average_ranks for t in tests})
    ranks = ranks.loc[sorted(ranks.index, key=lambda r: (ranks.loc[r].mean(), r))] if len(ranks) else ranks
    datasets = sorted({d for t in tests for d in t.datasets})
    caption = (f"Leaderboard over {len(datasets)} dataset(s) ({', '.join(datasets)}): average rank per metric "
               f"(1 = best; ties share the average rank), lower is better; {ALPHA:g}-level tests below; "
               "best in bold, second underlined.")
    return Table(
        "leaderboard", caption, mean=ranks, std=ranks * np.nan, runs=pd.Series(len(datasets), index=ranks.index),
        kind="leaderboard", dataset="all", directions=dict.fromkeys(ranks.columns, False),
        headers={m: f"{METRICS[m].label} (rank)" for m in ranks.columns}, notes=outcome_notes(tests), show_std=False,
    )


FRIEDMAN_CAPTION = (f"Friedman test of each metric over datasets (tie-corrected χ²) and Nemenyi's critical "
                    f"difference of average ranks at α = {ALPHA:g} (Demšar 2006).")
FRIEDMAN_HEADER = ["Metric", "N", "k", "Friedman χ²", "p", "Nemenyi CD"]


def _friedman_rows(tests: list[MetricTest]) -> list[list[str]]:
    """One row per metric whose Friedman test ran: datasets, rows, χ², p, CD."""
    return [[METRICS[t.metric].label, str(t.n_datasets), str(t.ranks.shape[1]), f"{t.friedman_stat:.3f}",
             _p(t.friedman_p), f"{t.cd:.3f}"] for t in tests if not t.reason]


def friedman_text(tests: list[MetricTest], fmt: str) -> str:
    """The Friedman table in ``fmt`` ("md" or "latex"); "" when no metric's test ran."""
    rows = _friedman_rows(tests)
    if not rows:
        return ""
    if fmt == "latex":
        return latex_text_table(FRIEDMAN_CAPTION, "leaderboard__friedman", FRIEDMAN_HEADER, rows, "lccccc")
    lines = [f"**Table: {FRIEDMAN_CAPTION}**", "", md_row(FRIEDMAN_HEADER), md_row(["---", *[":-:"] * 5]),
             *map(md_row, rows)]
    return "\n".join(lines) + "\n"


WILCOXON_CAPTION = (f"Wilcoxon signed-rank tests over datasets for each pair (zero differences split; "
                    f"p-values Holm-corrected over the pairs of each metric; * p_Holm < {ALPHA:g}).")
WILCOXON_HEADER = ["Metric", "Pair", "N", "W", "p", "p (Holm)", "Better (wins)"]


def _wilcoxon_rows(tests: list[MetricTest]) -> list[list[str]]:
    """One row per (metric, pair): statistic, p, Holm-adjusted p (starred when significant), better row, wins."""
    rows = []
    for t in tests:
        for r in t.wilcoxon.itertuples(index=False):
            star = "*" if r.p_holm < ALPHA else ""
            rows.append([METRICS[t.metric].label, f"{r.a} vs {r.b}", str(t.n_datasets),
                         "–" if np.isnan(r.statistic) else f"{r.statistic:g}", _p(r.p), _p(r.p_holm) + star,
                         f"{r.better} ({r.wins_a}:{r.wins_b})"])
    return rows


def wilcoxon_markdown(tests: list[MetricTest], caption: str = WILCOXON_CAPTION) -> str:
    rows = _wilcoxon_rows(tests)
    lines = [f"**Table: {caption}**", "", md_row(WILCOXON_HEADER),
             md_row(["---", "---", ":-:", ":-:", ":-:", ":-:", "---"]), *map(md_row, rows)]
    return "\n".join(lines) + "\n"


def wilcoxon_latex(tests: list[MetricTest], caption: str = WILCOXON_CAPTION, label: str = "leaderboard__wilcoxon",
                   unit: str = "datasets") -> str:
    """The pairs table in LaTeX: one heading per metric (with its N ``unit``), the pair and
    "better" columns wrapping to fit ``\\textwidth``."""
    rows: list[list[str] | str] = []
    for t in tests:
        pairs = _wilcoxon_rows([t])
        if pairs:
            rows.append(f"{METRICS[t.metric].label} (N = {t.n_datasets} {unit})")
            rows += [[pair, w, p, holm_p, better] for _, pair, _, w, p, holm_p, better in pairs]
    header = [h for h in WILCOXON_HEADER if h not in ("Metric", "N")]
    return latex_text_table(caption, label, header, rows, "lcccl", wrap_columns=(0, 4))


# --------------------------------------------------------------------------- within one dataset
#: Fewer paired runs than this and the two-sided exact Wilcoxon test cannot reach p < 0.05 at all.
MIN_RUNS_WILCOXON = 6
RUNS_CAPTION = ("Wilcoxon signed-rank tests over the runs (folds x seeds) of one table for each pair of rows, "
                "paired by run (zero differences split; p-values Holm-corrected over the pairs of each metric; "
                f"* p_Holm < {ALPHA:g}). The runs of k-fold CV share most of their training data, so they are "
                "not independent samples: read p as a ranking of consistency, not a calibrated error rate "
                "(Dietterich 1998; Nadeau & Bengio 2003).")


def run_tests(results, rows, metrics: list[str]) -> list[MetricTest]:
    """For each metric, every pair of one table's ``rows`` (a :class:`bench.results.Results`' rows):
    Wilcoxon paired by run, Holm-corrected. A row with a value in fewer than half the runs is left
    out; the others are compared over the runs all of them have. A metric with fewer than
    :data:`MIN_RUNS_WILCOXON` such runs, or fewer than two rows, is not tested."""
    tests = []
    for metric in metrics:
        matrix = results.run_values(rows, metric).dropna(axis=1, how="all")
        left_out = [label for label in matrix.columns if matrix[label].isna().mean() > 0.5]
        matrix = matrix.drop(columns=left_out).dropna(axis=0, how="any")
        if matrix.shape[0] < MIN_RUNS_WILCOXON or matrix.shape[1] < 2:
            continue
        higher = METRICS[metric].higher_is_better
        runs = [f"seed {s} fold {f}" for s, f in matrix.index]
        test = MetricTest(metric, runs, rank_matrix(matrix, higher), left_out)
        test.wilcoxon = wilcoxon_pairs(matrix, higher)
        tests.append(test)
    return tests


def write_run_tests(results, rows, metrics: list[str], slug: str, out_dir: Path,
                    formats=("md", "latex")) -> list[Path]:
    """``<slug>__wilcoxon.{md,tex}``: :func:`run_tests` of one table (nothing when no metric has
    enough shared runs)."""
    tests = run_tests(results, rows, metrics)
    if not tests:
        return []
    left_out = sorted({label for t in tests for label in t.left_out})
    caption = RUNS_CAPTION + (f" Left out (a value in fewer than half the runs): {', '.join(left_out)}."
                              if left_out else "")
    written = []
    for fmt in formats:
        ext = RENDERERS[fmt][1]
        text = (wilcoxon_markdown(tests, caption) if fmt == "md"
                else wilcoxon_latex(tests, caption, f"{slug}__wilcoxon", "runs"))
        written.append(write_text(Path(out_dir) / f"{slug}__wilcoxon{ext}", text))
    return written


def cd_diagram(test: MetricTest):
    """The critical-difference diagram of one metric (a matplotlib Figure, no pyplot state).

    scikit-posthocs draws the diagram and the Nemenyi crossbars; the CD scale bar is drawn here,
    above the rank axis's labels (scikit-posthocs' own bar would sit on them).
    """
    from matplotlib.figure import Figure
    from matplotlib.transforms import blended_transform_factory

    k = test.ranks.shape[1]
    fig = Figure(figsize=(7, 2.0 + 0.3 * k))
    ax = fig.subplots()
    scikit_posthocs.critical_difference_diagram(test.average_ranks, test.nemenyi, alpha=ALPHA, ax=ax)
    ax.set_title(f"{METRICS[test.metric].label}: average rank over N = {test.n_datasets} datasets; "
                 f"Friedman p = {_p(test.friedman_p)}; Nemenyi CD = {test.cd:.2f}", fontsize=9, pad=40)
    fig.tight_layout()
    above_labels = 1 + 0.32 / (ax.get_position().height * fig.get_figheight())  # axes units
    x0 = min(ax.get_xlim())
    bar = blended_transform_factory(ax.transData, ax.transAxes)
    ax.plot([x0, x0 + test.cd], [above_labels] * 2, color="k", lw=2, transform=bar, clip_on=False)
    ax.text(x0 + test.cd / 2, above_labels + 0.02, f"CD = {test.cd:.2f}", ha="center", va="bottom",
            fontsize=8, transform=bar)
    return fig


def write_leaderboard(main_tables: list[Table], out_dir: Path, formats=("md", "latex"),
                      metrics: list[str] | None = None,
                      diagram_metrics=DIAGRAM_METRICS) -> tuple[list[Table], list[Path]]:
    """``leaderboard.{md,tex}`` (the average ranks, then the Friedman tests that ran),
    ``leaderboard__wilcoxon.{md,tex}`` and ``cd_<metric>.{png,pdf}`` (when its Friedman test ran).

    Nothing is written when no ranking can be made (:func:`not_run_reason` says why).
    """
    if not_run_reason(main_tables):
        return [], []
    tests = [t for t in leaderboard(main_tables, metrics) if t.n_datasets >= MIN_DATASETS and t.ranks.shape[1] >= MIN_ROWS]
    if not tests:
        return [], []
    table = leaderboard_table(tests)
    written = []
    for fmt in formats:
        fn, ext = RENDERERS[fmt]
        friedman = friedman_text(tests, fmt)
        written.append(write_text(Path(out_dir) / f"leaderboard{ext}", fn(table) + ("\n" + friedman if friedman else "")))
        pairs = wilcoxon_markdown(tests) if fmt == "md" else wilcoxon_latex(tests)
        written.append(write_text(Path(out_dir) / f"leaderboard__wilcoxon{ext}", pairs))
    for test in tests:
        if test.metric in diagram_metrics and not test.reason:
            fig = cd_diagram(test)
            for ext in ("png", "pdf"):
                buffer = io.BytesIO()
                fig.savefig(buffer, format=ext, dpi=150)
                path = Path(out_dir) / "figures" / f"cd_{test.metric}.{ext}"
                atomic_write_bytes(path, buffer.getvalue())
                written.append(path)
    return [table], written


def not_run_reason(main_tables: list[Table]) -> str:
    """Why no leaderboard is built, in one line ("" when it is): it needs at least
    :data:`MIN_DATASETS` datasets and :data:`MIN_ROWS` rows with a value on each of them."""
    datasets = sorted({t.dataset for t in main_tables})
    if len(datasets) < MIN_DATASETS:
        return (f"the leaderboard and its tests need results on at least {MIN_DATASETS} datasets; "
                f"found {len(datasets)} ({', '.join(datasets) or 'none'})")
    metrics = {m for t in main_tables for m in t.mean.columns}
    shared = max((list(score_matrix(main_tables, m)[0].columns) for m in metrics), key=len, default=[])
    if len(shared) < MIN_ROWS:
        return (f"the leaderboard ranks rows (methods) against each other and needs at least {MIN_ROWS} with "
                f"results on every dataset ({', '.join(datasets)}); found {len(shared)}"
                f"{' (' + ', '.join(shared) + ')' if shared else ''}")
    return ""
