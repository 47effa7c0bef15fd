"""``bench reproduce PAPER TABLE``: one table of a paper, remade here and set beside the original.

The papers' numbers are transcribed in ``reports/published/*.csv``; ``tables.toml`` beside them says
which harness method each published row is run as (:mod:`bench.published`). From the two,
:func:`find` makes a :class:`Reproduction`: the table's datasets, the rows we run and the rows we
cannot (compared approaches that are not implemented: published-only, with the reason). Then:

* :func:`missing`: what this machine lacks for it (dataset files, ImageNet weights in the torch
  cache, the label-embedding model), one line each, before any job;
* :func:`build`: the jobs, with the papers' settings (``--paper-defaults``: backbone, weights, image
  size, schedule) and each dataset's own protocol and seeds; :func:`plan` lists them with an
  estimated cost from measured throughput (:func:`estimate`);
* :func:`compare`: our mean ± std over runs beside each published cell of a row we ran,
  Δ = measured − published and a :func:`verdict`; :func:`summary` says it in one line;
* :func:`to_markdown` / :func:`to_latex`: the table written to ``reports/reproduce/``.

Verdicts, in this order: ``within spread`` (|Δ| at most the larger of the published std and our
std over runs), ``within tolerance`` (|Δ| at most ``tables.toml``'s tolerance; for coverage, which
counts labels, that share of the published value), else ``below`` or ``above``, with "(better)" or
"(worse)" by the metric's direction. A cell counts as reproduced in the first two cases.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from bench import plugins, tuning
from bench.errors import BenchError
from bench.jobs import Job, build_jobs
from bench.metrics import METRICS
from bench.published import PER_CLASS_PREFIX, UNBOUNDED, Definitions, Target
from bench.tables import latex_text_table, md_row

REPRODUCED = ("within spread", "within tolerance")
#: Measured training throughput per method, from which :func:`estimate` gives a run's cost: one row
#: per (method, device, image_size; empty for a method that reads no image): ``images_per_s`` with the
#: ``machine`` and ``date`` it came from.
THROUGHPUT_COLUMNS = ("method", "device", "image_size", "images_per_s", "machine", "date")


def throughput_file() -> Path:
    return plugins.project_root() / "benchmarks" / "throughput.csv"


# --------------------------------------------------------------------------- the table
@dataclass(frozen=True)
class Reproduction:
    """One published table: its cells (``published``: the CSV's rows, one dataset or several) and
    what each of its rows is run as here."""

    paper: str
    table: str
    published: pd.DataFrame
    definitions: Definitions

    @property
    def name(self) -> str:
        return f"{self.paper} Table {self.table}"

    @property
    def typed(self) -> str:
        """How the table is named on the command line: ``der II``, ``order-free-rnn 1``."""
        return f"{self.paper.lower().replace(' ', '-')} {self.table}"

    @property
    def slug(self) -> str:
        """The file name: ``der_II``, ``order_free_rnn_2`` (as the CSVs name the papers)."""
        return f"{re.sub(r'[^0-9a-z]+', '_', self.paper.lower()).strip('_')}_{self.table}"

    @property
    def datasets(self) -> list[str]:
        return list(dict.fromkeys(self.published["dataset"]))

    def rows(self) -> list[str]:
        """The paper's row names, in the table's order."""
        return list(dict.fromkeys(self.published["method"]))

    def target(self, row: str) -> Target | None:
        """What the row is run as; None for a published-only row."""
        target = self.definitions.target(self.paper, row)
        return target if target is not None and not self.definitions.why_not_run(self.paper, row) else None

    def why_not_run(self, row: str) -> str:
        return self.definitions.why_not_run(self.paper, row) or "not implemented here"

    def targets(self) -> list[Target]:
        """The distinct methods-with-settings to run (a readout comes with its method's run)."""
        seen: dict[str, Target] = {}
        for row in self.rows():
            if (target := self.target(row)) is not None:
                run = Target(target.method, target.settings)
                seen.setdefault(run.label, run)
        return list(seen.values())

    def only(self, datasets: list[str]) -> Reproduction:
        unknown = [d for d in datasets if d not in self.datasets]
        if unknown:
            raise BenchError(f"--dataset {','.join(unknown)}: {self.name} reports on {', '.join(self.datasets)} only")
        part = self.published[self.published["dataset"].isin(datasets)].reset_index(drop=True)
        return Reproduction(self.paper, self.table, part, self.definitions)


def _key(text: str) -> str:
    """A paper or table name as typed: ``Order-Free RNN`` / ``order_free_rnn`` -> ``orderfreernn``."""
    return re.sub(r"[^0-9a-z]", "", text.lower())


_ROMAN = {"i": 1, "ii": 2, "iii": 3, "iv": 4, "v": 5, "vi": 6, "vii": 7, "viii": 8, "ix": 9, "x": 10}


def _table_key(text: str) -> str:
    """``II``, ``ii`` and ``2`` name the same table."""
    key = _key(text)
    return str(_ROMAN.get(key, key))


def tables(published: pd.DataFrame, definitions: Definitions) -> list[Reproduction]:
    """Every published table, in the order of the files."""
    out = []
    for (paper, table), part in published.groupby(["paper", "table"], sort=False):
        out.append(Reproduction(paper, table, part.reset_index(drop=True), definitions))
    return out


def find(published: pd.DataFrame, definitions: Definitions, paper: str, table: str) -> Reproduction:
    """The table ``table`` of ``paper`` (names as typed: ``der II``, ``order-free-rnn 2``)."""
    every = tables(published, definitions)
    for rep in every:
        if _key(rep.paper) == _key(paper) and _table_key(rep.table) == _table_key(table):
            _check_targets(rep)
            return rep
    names = ", ".join(r.typed for r in every)
    raise BenchError(f"no published table {paper} {table}; tables: {names} (bench reproduce --list)")


def _check_targets(rep: Reproduction) -> None:
    known = plugins.load("methods")
    for target in rep.targets():
        if target.method not in known:
            raise BenchError(f"tables.toml: {rep.paper}'s rows are run as {target.method!r}, which is no method "
                             f"(bench list)")


# --------------------------------------------------------------------------- before any job
def _settings(target: Target, overrides: dict) -> dict:
    """A target's settings with ``--set`` over them: what its jobs run with."""
    return {**target.settings, **overrides}


def _resolved(target: Target, overrides: dict, smoke: bool) -> dict:
    """The hyper-parameters a target's jobs will have, from its settings alone (no data read)."""
    from bench import params

    return params.resolve(plugins.get("methods", target.method), _settings(target, overrides), None, smoke).params


def absent_datasets(rep: Reproduction, data_root: Path) -> list[str]:
    """The datasets of ``rep`` whose files are not under ``data_root`` (their plug-ins check; nothing
    is read)."""
    return [name for name in rep.datasets
            if not (cls := plugins.get("datasets", name)).embedded and not cls().is_available(data_root)]


def missing(rep: Reproduction, data_root: Path, overrides: dict, smoke: bool = False) -> list[str]:
    """What this machine lacks to run ``rep``, one line per file or package (empty: nothing)."""
    from bench import backbones, label_embeddings, params
    from bench.fetch import files_hint

    params.check_override_keys(overrides, [plugins.get("methods", t.method) for t in rep.targets()])
    lines = [f"{name}: dataset files not found under {data_root} (see "
             f"{files_hint(name, plugins.get('datasets', name))})" for name in absent_datasets(rep, data_root)]
    weights: dict[Path, list[str]] = {}  # one line per absent file, naming the rows that need it
    for target in rep.targets():
        values = _resolved(target, overrides, smoke)
        backbone, pretrained = values.get("backbone"), values.get("pretrained", False)
        if backbone and (path := backbones.absent_checkpoint(backbone, pretrained)) is not None:
            weights.setdefault(path, []).append(target.label)
        source = values.get("label_embedding")
        if source and (why := label_embeddings.sentence_model_absent(source)):
            lines.append(f"{target.label}: {why}")
    for path, users in weights.items():
        lines.append(f"{path.name}: ImageNet weights ({', '.join(users)}) not in the torch cache; put the file "
                     f"into {path.parent}/ (or change the backbone's weights: --set pretrained=false)")
    return list(dict.fromkeys(lines))


def build(rep: Reproduction, *, data_root: Path, store_root: Path, overrides: dict,
          smoke: bool = False) -> dict[str, list[Job]]:
    """The jobs of ``rep`` by target label: each target with its settings (``--set`` over them), the
    paper's defaults, each dataset's own protocol and seeds (10 folds where it is k-fold CV). Two
    targets that ``--set`` makes the same share their jobs."""
    groups: dict[str, list[Target]] = {}  # the targets of one setting, built together
    for target in rep.targets():
        groups.setdefault(json.dumps(dict(target.settings), sort_keys=True, default=str), []).append(target)
    by_target = {}
    once = _Once()  # a dataset's warnings (a small test part) come once, not once per group
    logging.getLogger(build_jobs.__module__).addFilter(once)
    try:
        for targets in groups.values():
            jobs = build_jobs([t.method for t in targets], rep.datasets, protocol=None, n_folds=10, seeds=None,
                              overrides=_settings(targets[0], overrides), data_root=data_root,
                              store_root=store_root, strict=True, paper_defaults=True, smoke=smoke)
            for target in targets:
                by_target[target.label] = [job for job in jobs if job.method == target.method]
    finally:
        logging.getLogger(build_jobs.__module__).removeFilter(once)
    return by_target


class _Once(logging.Filter):
    """Lets each distinct message through once."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        first = message not in self.seen
        self.seen.add(message)
        return first


def distinct(by_target: dict[str, list[Job]]) -> list[Job]:
    """The jobs of :func:`build`, each once."""
    return list({job.job_id: job for jobs in by_target.values() for job in jobs}.values())


def _figures(throughput: Path | None) -> pd.DataFrame:
    path = throughput or throughput_file()
    return (pd.read_csv(path, dtype=str, keep_default_na=False) if path.is_file()
            else pd.DataFrame(columns=THROUGHPUT_COLUMNS))


def _figure(figures: pd.DataFrame, method: str, size, device: str) -> tuple[str, float | None]:
    """(``method@SIZEpx`` or ``method``, its images/s on ``device``, None when not measured)."""
    size_text = "" if size is None else str(size)  # empty: a method that reads no image
    match = figures[(figures["method"] == method) & (figures["device"] == device)
                    & (figures["image_size"] == size_text)]
    name = f"{method}@{size}px" if size_text else method
    return name, None if match.empty else float(match["images_per_s"].iloc[0])


def estimate(jobs: list[Job], throughput: Path | None = None, device: str = "cuda") -> tuple[float, list[str]]:
    """(estimated device-hours of the jobs' training passes, the methods without a measured figure).

    A job costs epochs x training images / images_per_s of ``throughput`` for its method, device kind
    and image size, once per candidate of its in-fold search; its test pass is not counted."""
    figures = _figures(throughput)
    hours, unknown = 0.0, []
    for job in jobs:
        name, rate = _figure(figures, job.method, job.params.get("image_size"), device)
        if rate is None:
            unknown.append(name)
            continue
        fits = len(tuning.candidates(job.search.get("grid", {}))) if job.search else 1
        hours += fits * job.params.get("epochs", 1) * len(job.split.train) / rate / 3600
    return hours, list(dict.fromkeys(unknown))


def unmeasured(rep: Reproduction, overrides: dict, smoke: bool = False, throughput: Path | None = None,
               device: str = "cuda") -> list[str]:
    """The targets of ``rep`` with no measured throughput, from their settings alone (no data needed)."""
    figures, names = _figures(throughput), []
    for target in rep.targets():
        name, rate = _figure(figures, target.method, _resolved(target, overrides, smoke).get("image_size"), device)
        if rate is None:
            names.append(name)
    return list(dict.fromkeys(names))


def plan(rep: Reproduction, absent: list[str], *, data_root: Path, store_root: Path, overrides: dict,
         smoke: bool = False, throughput: Path | None = None) -> list[str]:
    """What ``bench reproduce --plan`` prints: the jobs (stored ones marked), the published-only rows,
    what is missing (``absent``: :func:`missing`'s lines) and the estimated cost. The jobs of a
    dataset whose files are absent cannot be listed (their folds come from the data); the plan says so."""
    from bench.store import ResultStore

    absent_data = absent_datasets(rep, data_root)
    present = [d for d in rep.datasets if d not in absent_data]
    jobs = distinct(build(rep.only(present), data_root=data_root, store_root=store_root, overrides=overrides,
                          smoke=smoke)) if present else []
    store = ResultStore(store_root)
    stored = {j.job_id for j in jobs if store.load(j.dataset, j.method, j.job_id) is not None}
    lines = [f"{rep.name}: {len(jobs)} job(s), {len(stored)} already stored"]
    lines += [f"  {'stored' if j.job_id in stored else 'to run':<8}{j.describe()}" for j in jobs]
    for row in rep.rows():
        if rep.target(row) is None:
            lines.append(f"  published only: {row} ({rep.why_not_run(row)})")
    lines += [f"  missing: {line}" for line in absent]
    if absent_data:
        lines.append(f"  (the jobs on {', '.join(absent_data)} are listed once its files are there: their folds "
                     "come from the data)")
    pending = [j for j in jobs if j.job_id not in stored]
    hours, unknown = estimate(pending, throughput)
    if absent_data:  # the jobs cannot be sized, but the figures they would need can be named
        unknown = list(dict.fromkeys(unknown + unmeasured(rep, overrides, smoke, throughput)))
    if unknown:
        lines.append(f"  cost: unknown: no measured GPU throughput for {', '.join(unknown)} in "
                     f"{throughput or throughput_file()} (benchmarks/gpu_suite.py measures it on a GPU)")
    elif absent_data:
        lines.append(f"  cost: unknown until the files of {', '.join(absent_data)} are here (a job's cost "
                     "needs its training part's size)")
    elif pending:
        lines.append(f"  cost: about {hours:.2f} GPU-hours of training passes for {len(pending)} job(s)")
    return lines


def list_lines(reps: list[Reproduction], data_root: Path) -> list[str]:
    """What ``bench reproduce --list`` prints: each table as typed, its datasets, the methods it
    runs, its published-only rows and what this machine lacks for it."""
    lines = []
    for rep in reps:
        ran = sorted({t.label for t in rep.targets()})
        only = sum(rep.target(r) is None for r in rep.rows())
        absent = missing(rep, data_root, {})
        lines.append(f"{rep.typed}  {', '.join(rep.datasets)}: runs {', '.join(ran) or 'nothing'}; "
                     f"{only} published-only row(s)")
        lines += ["    missing here:", *(f"      {line}" for line in absent)] if absent else ["    missing here: nothing"]
    return lines


# --------------------------------------------------------------------------- beside the paper
def verdict(delta: float, spread: float, tolerance: float, metric: str) -> str:
    """See the module docstring; ``tolerance`` is in the metric's units (coverage: a share of the
    published value, applied by the caller)."""
    if np.isnan(delta):
        return "not measured"
    if abs(delta) <= spread:
        return "within spread"
    if abs(delta) <= tolerance:
        return "within tolerance"
    higher = metric.startswith(PER_CLASS_PREFIX) or METRICS[metric].higher_is_better
    better = (delta > 0) == higher
    return f"{'above' if delta > 0 else 'below'} ({'better' if better else 'worse'})"


def compare(rep: Reproduction, results, by_target: dict[str, list[Job]], overrides: dict | None = None) -> pd.DataFrame:
    """One line per published cell: ``dataset, row, ran_as, metric, published, published_std,
    measured, measured_std, runs, delta, verdict`` (``ran_as`` empty for published-only rows).

    ``results`` (:class:`bench.results.Results`) hold the stored runs of :func:`build`'s jobs
    ``by_target``; a paper's row is our row of its target's jobs and readout. ``ran_as`` names the
    method with the settings it ran under (the row's, then ``overrides``, the ``--set`` ones)."""
    tolerance = rep.definitions.tolerance
    lines = []
    for cell in rep.published.itertuples(index=False):
        target = rep.target(cell.method)
        ran_as = Target(target.method, _settings(target, overrides or {}), target.readout).label if target else ""
        line = {"dataset": cell.dataset, "row": cell.method, "ran_as": ran_as,
                "metric": cell.metric, "published": cell.value, "published_std": cell.std,
                "measured": np.nan, "measured_std": np.nan, "runs": 0, "delta": np.nan,
                "verdict": "published only" if target is None else "not measured"}
        row = _our_row(results, target, cell.dataset, by_target) if target else None
        if row is not None:
            mean, std, runs = results.cells([row], [cell.metric])
            line.update(measured=mean.iat[0, 0], measured_std=std.iat[0, 0], runs=int(runs.iat[0]))
            line["delta"] = line["measured"] - cell.value
            spread = np.nanmax([cell.std, line["measured_std"], 0.0])
            tol = tolerance * cell.value if cell.metric in UNBOUNDED else tolerance
            line["verdict"] = verdict(line["delta"], spread, tol, cell.metric)
        lines.append(line)
    return pd.DataFrame(lines)


def _our_row(results, target: Target, dataset: str, by_target: dict[str, list[Job]]):
    ids = {job.job_id for job in by_target.get(Target(target.method, target.settings).label, [])}
    for row in results.rows:
        if (row.dataset == dataset and row.method == target.method and row.readout == target.readout
                and any(rec.job_id in ids for rec in row.records)):
            return row
    return None


def _gap(metric: str, delta: float) -> str:
    """Δ as printed: percentage points for metrics in [0, 1], the metric's units for coverage."""
    return f"{delta:+.3f}" if metric in UNBOUNDED else f"{100 * delta:+.1f} pp"


def summary(frame: pd.DataFrame) -> str:
    """``14 of 20 cells within tolerance; largest gap mAP -3.1 pp (Our DER, voc2007)``: the cells of
    rows we ran and measured only."""
    measured = frame[frame["ran_as"].ne("") & frame["delta"].notna()]
    if measured.empty:
        return "no cell of this table was measured"
    hits = int(measured["verdict"].isin(REPRODUCED).sum())
    text = f"{hits} of {len(measured)} cells within tolerance"
    worst = measured.loc[measured["delta"].abs().idxmax()]
    if hits < len(measured):
        text += f"; largest gap {_metric_name(worst.metric)} {_gap(worst.metric, worst.delta)} ({worst.row}, {worst.dataset})"
    unmeasured = int((frame["ran_as"].ne("") & frame["delta"].isna()).sum())
    if unmeasured:
        text += f"; {unmeasured} cell(s) of rows we ran have no measured value"
    return text


def _value(value: float, std: float) -> str:
    if np.isnan(value):
        return "–"
    return f"{value:.3f}" if np.isnan(std) else f"{value:.3f} ± {std:.3f}"


def _metric_name(metric: str) -> str:
    return metric[len(PER_CLASS_PREFIX):] + " AP" if metric.startswith(PER_CLASS_PREFIX) else METRICS[metric].label


def heading(rep: Reproduction, frame: pd.DataFrame, smoke: bool, overrides: dict) -> list[str]:
    """The title and the lines under it: smoke or not, settings, tolerance, the summary."""
    title = f"{rep.name}, reproduced" + (" (SMOKE RUN: a tiny schedule; the verdicts mean nothing)" if smoke else "")
    lines = [title, f"Summary: {summary(frame)}.",
             "Settings: the papers' defaults (--paper-defaults), each dataset's protocol and seeds"
             + (f"; changed here: {', '.join(f'{k}={v}' for k, v in sorted(overrides.items()))}" if overrides else "")
             + f". Tolerance: {rep.definitions.tolerance:g} (coverage: that share of the published value)."]
    return lines


def _ran_lines(frame: pd.DataFrame) -> list[list[str]]:
    ran = frame[frame["ran_as"].ne("")]
    return [[r.dataset, r.row, r.ran_as, _metric_name(r.metric), _value(r.published, r.published_std),
             _value(r.measured, r.measured_std) + (f" ({r.runs})" if r.runs else ""),
             "–" if np.isnan(r.delta) else _gap(r.metric, r.delta), r.verdict] for r in ran.itertuples()]


def _published_only_lines(rep: Reproduction, frame: pd.DataFrame) -> list[list[str]]:
    only = frame[frame["ran_as"].eq("")]
    lines = []
    for (dataset, row), part in only.groupby(["dataset", "row"], sort=False):
        cells = "; ".join(f"{_metric_name(r.metric)} {_value(r.published, r.published_std)}" for r in part.itertuples())
        lines.append([dataset, row, rep.why_not_run(row), cells])
    return lines


RAN_HEADER = ["Dataset", "Paper's row", "Run as", "Metric", "Published", "Measured (runs)", "Δ", "Verdict"]
ONLY_HEADER = ["Dataset", "Paper's row", "Not run: why", "Published"]


def to_markdown(rep: Reproduction, frame: pd.DataFrame, smoke: bool = False, overrides: dict | None = None) -> str:
    title, *notes = heading(rep, frame, smoke, overrides or {})
    out = [f"**{title}**", "", *(f"{n}  " for n in notes), "", md_row(RAN_HEADER),
           md_row(["---"] * 4 + [":-:"] * 3 + ["---"]), *map(md_row, _ran_lines(frame))]
    only = _published_only_lines(rep, frame)
    if only:
        out += ["", "Published only (rows not run here):", "", md_row(ONLY_HEADER), md_row(["---"] * 4),
                *map(md_row, only)]
    return "\n".join(out) + "\n"


def to_latex(rep: Reproduction, frame: pd.DataFrame, smoke: bool = False, overrides: dict | None = None) -> str:
    title, *notes = heading(rep, frame, smoke, overrides or {})
    rows: list[list[str] | str] = [*_ran_lines(frame)]
    only = _published_only_lines(rep, frame)
    if only:
        rows.append("Published only (rows not run here)")
        rows += [[d, r, f"not run: {why}", "", cells, "", "", ""] for d, r, why, cells in only]
    return latex_text_table(f"{title}. {' '.join(notes)}", f"reproduce-{rep.slug}", RAN_HEADER, rows, "llllcccl",
                            wrap_columns=(4,))


def write(rep: Reproduction, by_target: dict[str, list[Job]], store_root: Path, out_dir: Path,
          overrides: dict, smoke: bool = False) -> tuple[str, list[Path]]:
    """Read the stored runs of ``by_target``'s jobs, compare them with the paper and write
    ``<out_dir>/<paper>_<table>.md`` and ``.tex``; (the Markdown, the files written)."""
    from bench import results as results_layer
    from bench.store import ResultStore
    from bench.tables import write_text

    jobs = distinct(by_target)
    results = results_layer.load(ResultStore(store_root), rep.datasets, sorted({j.method for j in jobs}),
                                 current={j.dataset: j.data_fingerprint for j in jobs}, smoke=smoke)
    frame = compare(rep, results.only({j.job_id for j in jobs}), by_target, overrides)
    markdown = to_markdown(rep, frame, smoke, overrides)
    written = [write_text(Path(out_dir) / f"{rep.slug}.md", markdown),
               write_text(Path(out_dir) / f"{rep.slug}.tex", to_latex(rep, frame, smoke, overrides))]
    return markdown, written
