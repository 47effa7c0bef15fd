"""The results layer: the stored records one command reads, read once, and the rules on them.

Everything the read side shows (tables, statistics, figures, MLflow) comes from one
:class:`Results`, built once per command by :func:`load` (or :func:`from_records`):

1. the selected records are read from the store once (each JSON parsed and its arrays' SHA-256
   checked once, by :class:`bench.store.ResultStore`) and typed (:class:`bench.records.Record`);
2. records that cannot share a row with today's runs are left out, with **one** warning that says
   how many and why (the files stay in the store):

   * *stale configurations*: hyper-parameters that differ from what the same command would run
     today (a default changed since, a parameter came or went);
   * *other data versions*: a dataset whose stored runs have several data fingerprints keeps one,
     the data as it is now (``current``, or read from the data root), or, where that cannot be
     read or has no run, the newest stored one. A row never averages runs of two versions;
   * *smoke runs* (``bench run --smoke``: a one-epoch check of a set-up, not a result) unless the
     selection asks for them (``smoke=True``: then only them, each row labelled ``(smoke)``), so
     they never share a table, a ranking or an MLflow aggregate with real runs;

3. the kept records are grouped into **rows**. A row (:class:`Row`) is one method with its resolved
   hyper-parameters and readout (``""``: the method's own output, else a name from
   ``predict_readouts``), on one dataset at one data fingerprint, under one protocol and number of
   folds, aggregated over folds x seeds. Its id (:attr:`Row.id`) hashes exactly that key, and its
   label (``br``, ``br (C=0.1)``, ``der:first_stream``) is unique within its table;
4. :attr:`Results.frame` is the tidy frame (one line per row and record: identifying columns, then
   one column per metric and ``ap:<class>``), and :attr:`Results.mean`, :attr:`std`,
   :attr:`runs` its aggregates per row: mean and sample standard deviation (``ddof`` =
   :data:`DDOF`; NaN entries left out), the only aggregate tables, figures and MLflow show.

A job's stored arrays (scores, class maps) are read through :meth:`Results.arrays`, from the store
the results were loaded from.

Plug-in knowledge is read here once too: each dataset's metric set (``Dataset.metric_set``) and
whether its papers print a per-class table (``Dataset.per_class_table``), each method's family
(``Method.ablation_of``).
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType

import numpy as np
import pandas as pd

from bench.api import EXECUTION_PARAMS, PER_RUN_PARAMS
from bench.errors import BenchError
from bench.metrics import METRIC_SETS
from bench.records import Record, is_schedule_key
from bench.store import ResultStore

log = logging.getLogger(__name__)

DDOF = 1
#: The metric set of a dataset that no installed plug-in knows (a removed plug-in, a test's "toy").
FALLBACK_METRIC_SET = "all"
PER_CLASS_PREFIX = "ap:"
PROTOCOL_TEXT = {
    "kfold": "{n_folds}-fold iteratively stratified CV",
    "official": "official train/test split",
    "holdout": "random 80/20 hold-out",
}


# --------------------------------------------------------------------------- names
def protocol_slug(protocol: str, n_folds: int) -> str:
    """``kfold10``, ``official``, ``holdout``: the protocol part of file and run names."""
    return f"{protocol}{n_folds}" if protocol == "kfold" else protocol


def protocol_text(protocol: str, n_folds: int) -> str:
    return PROTOCOL_TEXT[protocol].format(n_folds=n_folds)


def table_slug(dataset: str, protocol: str, n_folds: int) -> str:
    """The file stem of a (dataset, protocol) table and its figures: ``yeast__kfold10``."""
    return f"{dataset}__{protocol_slug(protocol, n_folds)}"


def _json(value) -> str:
    return json.dumps(value, sort_keys=True, default=repr)


def _plain(params: Mapping) -> dict:
    """Hyper-parameters as a stored record holds them (through JSON: tuples become lists)."""
    return json.loads(json.dumps(dict(params), default=repr))


def identity_params(params: Mapping) -> dict:
    """The hyper-parameters that make a row: all but execution and per-run ones (the seed)."""
    return {k: v for k, v in params.items() if k not in EXECUTION_PARAMS | PER_RUN_PARAMS}


# --------------------------------------------------------------------------- rows
@dataclass(frozen=True)
class Row:
    """One table line (see the module docstring); ``records`` are its runs, folds x seeds."""

    method: str
    readout: str
    dataset: str
    fingerprint: str
    protocol: str
    n_folds: int
    params: dict
    overrides: dict
    scale_defaults: dict
    family: str
    records: tuple[Record, ...] = field(repr=False)
    label: str = ""
    smoke: bool = False
    search: dict = field(default_factory=dict)  # the in-fold search (bench.tuning): part of the row

    @property
    def key(self) -> tuple:
        key = (self.method, _json(self.params), self.readout, self.dataset, self.fingerprint,
               self.protocol, self.n_folds)
        if self.search:  # rows without a search keep their ids
            key = (*key, "search", _json(self.search))
        return (*key, "smoke") if self.smoke else key  # real rows keep their ids

    @property
    def id(self) -> str:
        return hashlib.sha256(_json(self.key).encode()).hexdigest()[:16]

    @property
    def table_key(self) -> tuple[str, str, int]:
        return self.dataset, self.protocol, self.n_folds

    @property
    def base_label(self) -> str:
        """``br``, ``br (C=0.1)``, ``br (smoke)``, ``der:first_stream``: method, ``--set`` overrides,
        search, smoke, readout (:func:`base_label`)."""
        notes = []
        if self.search:
            from bench.tuning import search_label

            notes.append(search_label(self.search))
        if self.smoke:
            notes.append("smoke")
        return base_label(self.method, self.overrides, self.readout, notes)

    def metrics_of(self, record: Record) -> dict:
        return record.readouts[self.readout].metrics if self.readout else record.metrics

    def undefined_of(self, record: Record) -> dict:
        return record.readouts[self.readout].undefined if self.readout else record.undefined

    def per_label_ap_of(self, record: Record):
        return record.readouts[self.readout].per_label_ap if self.readout else record.per_label_ap


def base_label(method: str, overrides: Mapping = MappingProxyType({}), readout: str = "",
               notes: Iterable[str] = ()) -> str:
    """A row's label before :func:`_labelled` makes it unique: the method, its ``--set`` overrides
    and ``notes`` in brackets, then ``:readout``; the one rule by which a row is named."""
    text = method
    if overrides:
        text += f" ({', '.join(f'{k}={v}' for k, v in sorted(overrides.items()))})"
    text += "".join(f" ({note})" for note in notes)
    return f"{text}:{readout}" if readout else text


def _row_of(record: Record, readout: str, family: str) -> Row:
    cfg = record.config
    params = identity_params(cfg.params) if cfg.params is not None else dict(record.overrides)
    return Row(cfg.method, readout, cfg.dataset, cfg.data_fingerprint, cfg.protocol, int(cfg.n_folds),
               params, dict(record.overrides), dict(cfg.scale_defaults), family, (), smoke=cfg.smoke,
               search=cfg.search)


def rows_of(records: Iterable[Record], families: Mapping[str, str] | None = None) -> list[Row]:
    """The rows (each with its records) of ``records``: the method's own output and each readout."""
    families = families or {}
    groups: dict[str, list] = {}
    for rec in records:
        family = families.get(rec.config.method) or rec.config.method
        for readout in ("", *sorted(rec.readouts)):
            row = _row_of(rec, readout, family)
            groups.setdefault(row.id, [row, []])[1].append(rec)
    rows = [replace(row, records=tuple(recs)) for row, recs in groups.values()]
    return _labelled(rows)


def _labelled(rows: list[Row]) -> list[Row]:
    """Each row with a label unique within its table: the base label, and where two rows share
    one (a dataset-scale setting against the paper's defaults, another feature extractor) the
    hyper-parameters or data in which they differ, in brackets."""
    by_label: dict[tuple, list[Row]] = defaultdict(list)
    for row in rows:
        by_label[row.table_key, row.base_label].append(row)
    out = []
    for (_, base), group in by_label.items():
        if len(group) == 1:
            out.append(replace(group[0], label=base))
            continue
        names = sorted({k for r in group for k in r.params})
        differ = [k for k in names if len({_json(r.params.get(k)) for r in group}) > 1]
        for row in group:
            parts = [f"{k}={row.params.get(k)}" for k in differ]
            if len({r.fingerprint for r in group}) > 1:
                parts.append(f"data {row.fingerprint}")
            out.append(replace(row, label=f"{base} [{', '.join(parts)}]"))
    return sorted(out, key=lambda r: (r.table_key, r.label))


# --------------------------------------------------------------------------- plug-in knowledge
@dataclass(frozen=True)
class Knowledge:
    """What the plug-ins say about the datasets and methods in a selection."""

    metric_sets: Mapping[str, str] = field(default_factory=dict)  # dataset -> METRIC_SETS key
    per_class: frozenset[str] = frozenset()  # datasets whose papers print a per-class AP table
    ablation_of: Mapping[str, str] = field(default_factory=dict)  # ablation method -> full method


def _dataset_class(name: str):
    from bench import plugins

    try:
        return plugins.get("datasets", name)
    except BenchError:  # a removed plug-in: the store still holds its runs
        return None


def _method_class(name: str):
    from bench import plugins

    try:
        return plugins.get("methods", name)
    except BenchError:
        return None


def plugin_knowledge(datasets: Iterable[str], methods: Iterable[str]) -> Knowledge:
    classes = {d: _dataset_class(d) for d in set(datasets)}
    metric_sets = {d: getattr(c, "metric_set", FALLBACK_METRIC_SET) for d, c in classes.items()}
    per_class = frozenset(d for d, c in classes.items() if getattr(c, "per_class_table", False))
    ablation_of = {}
    for name in set(methods):
        cls = _method_class(name)
        if cls is not None and getattr(cls, "ablation_of", ""):
            ablation_of[name] = cls.ablation_of
    return Knowledge(metric_sets, per_class, ablation_of)


# --------------------------------------------------------------------------- what is left out
def _defaults(method: str, cache: dict) -> dict | None:
    """The method's current default hyper-parameters (one instance per method and command)."""
    if method not in cache:
        cls = _method_class(method)
        cache[method] = None if cls is None else _plain(identity_params(cls().get_params(deep=False)))
    return cache[method]


def stale_keys(record: Record, cache: dict | None = None) -> list[str]:
    """The hyper-parameters in which a stored run differs from the job `bench run` would run today
    for the same method, overrides and dataset-scale settings (a default changed since, or a
    parameter came or went); empty when it is current, when its method is not installed here, or
    for a hand-made record without parameters (nothing to compare)."""
    cfg = record.config
    defaults = _defaults(cfg.method, {} if cache is None else cache) if cfg.params is not None else None
    if defaults is None:
        return []
    expected = {**defaults, **_plain(identity_params(record.overrides)), **_plain(cfg.scale_defaults)}
    if cfg.smoke:
        from bench.params import smoke_caps

        expected = {**expected, **_smoke_values(cfg.method), **smoke_caps(expected)}
    stored = _plain(identity_params(cfg.params))
    missing = object()  # a parameter that came or went differs from any value
    changed = [k for k in expected.keys() | stored.keys() if expected.get(k, missing) != stored.get(k, missing)]
    declared = _declared_scale(cfg.method, cfg.dataset, stored)
    changed += [k for k, v in _plain(cfg.scale_defaults).items() if k in declared and declared[k] != v]
    return sorted(set(changed))


def _declared_scale(method: str, dataset: str, params: dict) -> dict:
    """The dataset's scale settings as they apply to ``method`` today (its family's scope included)."""
    from bench.params import applicable

    cls, declared = _method_class(method), getattr(_dataset_class(dataset), "scale_defaults", None) or {}
    return {} if cls is None else _plain(applicable(cls, declared, params, family=True))


def _smoke_values(method: str) -> dict:
    """What ``bench run --smoke`` sets today for ``method`` (it wins over overrides and scale settings;
    its size caps depend on those, :func:`bench.params.smoke_caps`)."""
    from bench.params import smoke_values

    cls = _method_class(method)
    return {} if cls is None else _plain(identity_params(smoke_values(cls)))


def _read_fingerprint(dataset: str, data_root: Path | None) -> str | None:
    """The fingerprint of the dataset as it is now under ``data_root``; None if it cannot be read."""
    cls = _dataset_class(dataset)
    if cls is None or data_root is None:
        return None
    from bench.plugins import load_dataset

    try:
        if not (cls.embedded or cls().is_available(Path(data_root))):
            return None
        return load_dataset(dataset, str(data_root)).fingerprint()
    except (BenchError, OSError, ValueError) as exc:
        log.debug("cannot read %s to tell its current data version: %s", dataset, exc)
        return None


@dataclass
class _LeftOut:
    """Counts of the records left out, for the one warning."""

    stale: dict = field(default_factory=lambda: defaultdict(lambda: [0, set()]))  # (method, dataset) -> [n, keys]
    versions: dict = field(default_factory=dict)  # dataset -> (kept fingerprint, why, {fingerprint: n})
    smoke: int = 0  # smoke runs left out of a selection of real ones (real ones left out of smoke: silently)

    def message(self) -> str:
        parts = []
        for (method, dataset), (n, keys) in sorted(self.stale.items()):
            parts.append(f"{n} of {method} on {dataset} made with other hyper-parameters than the current "
                         f"defaults ({', '.join(sorted(keys))})")
        for dataset, (kept, why, others) in sorted(self.versions.items()):
            listed = ", ".join(f"{fp} ({n})" for fp, n in sorted(others.items()))
            parts.append(f"{sum(others.values())} on {dataset} made on other versions of its data "
                         f"(fingerprints {listed}; shown: {kept}, {why})")
        if parts:
            parts[-1] += "; they stay in the store (`bench run` the same command again for current ones)"
        if self.smoke:
            parts.append(f"{self.smoke} smoke run(s) of `bench run --smoke` (a check, not a result; "
                         "`bench report --smoke` shows them)")
        if not parts:
            return ""
        total = (sum(n for n, _ in self.stale.values()) + sum(sum(o.values()) for _, _, o in self.versions.values())
                 + self.smoke)
        return f"left out {total} stored run(s): " + "; ".join(parts)


def _smoke_or_real(records: list[Record], left: _LeftOut, smoke: bool) -> list[Record]:
    """The smoke runs (``smoke``) or the real ones; smoke runs left out are counted in ``left``."""
    kept = [r for r in records if r.config.smoke == smoke]
    if not smoke:
        left.smoke = len(records) - len(kept)
    return kept


def _current_only(records: list[Record], left: _LeftOut) -> list[Record]:
    kept, cache = [], {}
    for rec in records:
        keys = stale_keys(rec, cache)
        if keys:
            entry = left.stale[rec.config.method, rec.config.dataset]
            entry[0] += 1
            entry[1].update(keys)
        else:
            kept.append(rec)
    return kept


def _one_data_version(records: list[Record], left: _LeftOut, current: Mapping[str, str],
                      data_root: Path | None) -> list[Record]:
    by_dataset: dict[str, dict[str, list[Record]]] = defaultdict(lambda: defaultdict(list))
    for rec in records:
        by_dataset[rec.config.dataset][rec.config.base_fingerprint].append(rec)
    kept = []
    for dataset, versions in by_dataset.items():
        if len(versions) == 1:
            kept += next(iter(versions.values()))
            continue
        now = current.get(dataset) or _read_fingerprint(dataset, data_root)
        now = now.split("+", 1)[0] if now else None
        if now in versions:
            chosen, why = now, "the data as it is now"
        else:
            chosen = max(versions, key=lambda fp: max(r.finished_at for r in versions[fp]))
            why = ("the newest stored; the data as it is now has no stored run" if now
                   else "the newest stored; the data cannot be read here")
        kept += versions[chosen]
        left.versions[dataset] = (chosen, why, {fp: len(v) for fp, v in versions.items() if fp != chosen})
    return kept


# --------------------------------------------------------------------------- the layer
def read_records(store: ResultStore, datasets=None, methods=None) -> list[Record]:
    """The stored records of ``datasets`` x ``methods`` (all when None), each read once."""
    out = []
    for dataset in datasets or [None]:
        for method in methods or [None]:
            for raw in store.records(dataset, method):
                try:
                    out.append(Record.from_dict(raw))
                except ValueError as exc:  # the store checked the JSON; this is a record bench never wrote
                    cfg = raw["config"]
                    path = store.root / str(cfg.get("dataset")) / str(cfg.get("method")) / f"{raw['job_id']}.json"
                    log.warning("ignoring result %s (%s)", path, exc)
    return out


def load(store: ResultStore, datasets=None, methods=None, *, data_root: Path | str | None = None,
         current: Mapping[str, str] | None = None, warn: bool = True, smoke: bool = False) -> Results:
    """The :class:`Results` of the stored runs of ``datasets`` x ``methods`` (all when None).

    ``current``: dataset -> its data fingerprint now (``bench run`` knows it from its jobs);
    otherwise, for a dataset stored under several fingerprints, the data under ``data_root`` is
    read to tell which one is current. ``smoke``: the smoke runs instead of the real ones.
    """
    results = from_records(read_records(store, datasets, methods), data_root=data_root, current=current, warn=warn,
                           smoke=smoke)
    return replace(results, store=store)


def from_records(records: Iterable[Record | dict], *, knowledge: Knowledge | None = None,
                 data_root: Path | str | None = None, current: Mapping[str, str] | None = None,
                 warn: bool = True, smoke: bool = False) -> Results:
    """:class:`Results` of already-read records (dicts are typed first); see :func:`load`."""
    records = [r if isinstance(r, Record) else Record.from_dict(r) for r in records]
    left = _LeftOut()
    records = _smoke_or_real(records, left, smoke)
    records = _one_data_version(_current_only(records, left), left, current or {},
                                Path(data_root) if data_root is not None else None)
    if warn and (message := left.message()):
        log.warning("%s", message)
    if knowledge is None:
        knowledge = plugin_knowledge({r.config.dataset for r in records}, {r.config.method for r in records})
    return Results(rows_of(records, knowledge.ablation_of), knowledge, left.message())


@dataclass
class Results:
    """The rows of one selection and their aggregates (see the module docstring)."""

    rows: list[Row]
    knowledge: Knowledge = field(default_factory=Knowledge)
    left_out: str = ""  # the warning about the records left out ("" when none)
    store: ResultStore | None = field(default=None, repr=False)  # where :func:`load` read them

    def __bool__(self) -> bool:
        return bool(self.rows)

    def arrays(self, record: Record, names: Iterable[str] | None = None) -> dict[str, np.ndarray]:
        """The stored arrays of one of the records (all, or those of ``names`` it holds); empty
        for results made from records alone (:func:`from_records`), which have no store."""
        return {} if self.store is None else self.store.arrays(record, names)

    @property
    def records(self) -> list[Record]:
        """Every kept record, once (a record with readouts is in several rows)."""
        seen = {}
        for row in self.rows:
            for rec in row.records:
                seen.setdefault(rec.job_id, rec)
        return list(seen.values())

    def only(self, job_ids: Iterable[str]) -> Results:
        """The rows restricted to the records of ``job_ids`` (labels kept), rows without any dropped."""
        job_ids = set(job_ids)
        rows = [replace(r, records=tuple(x for x in r.records if x.job_id in job_ids)) for r in self.rows]
        return replace(self, rows=[r for r in rows if r.records])

    def touching(self, job_ids: Iterable[str]) -> Results:
        """The rows that hold one of ``job_ids``, with all their records."""
        job_ids = set(job_ids)
        return replace(self, rows=[r for r in self.rows if any(x.job_id in job_ids for x in r.records)])

    # ------------------------------------------------------------------ tidy frame and aggregates
    @functools.cached_property
    def frame(self) -> pd.DataFrame:
        """One line per (row, record): identifying columns, then metrics and ``ap:<class>``."""
        lines = []
        for row in self.rows:
            for rec in row.records:
                ap = row.per_label_ap_of(rec)
                per_class = {}
                if ap is not None and rec.label_names:
                    values = np.asarray(ap, dtype=float)  # JSON null -> NaN
                    per_class = {f"{PER_CLASS_PREFIX}{n}": v for n, v in zip(rec.label_names, values, strict=True)}
                lines.append({"row": row.id, "label": row.label, "method": row.method, "family": row.family,
                              "readout": row.readout, "dataset": row.dataset, "protocol": row.protocol,
                              "n_folds": row.n_folds, "job_id": rec.job_id, "seed": rec.config.seed,
                              "fold": rec.config.fold, **row.metrics_of(rec), **per_class})
        return pd.DataFrame(lines, columns=None if lines else list(self.ID_COLUMNS))

    ID_COLUMNS = ("row", "label", "method", "family", "readout", "dataset", "protocol", "n_folds",
                  "job_id", "seed", "fold")

    @property
    def value_columns(self) -> list[str]:
        return [c for c in self.frame.columns if c not in self.ID_COLUMNS]

    @functools.cached_property
    def _grouped(self):
        values = self.frame[["row", *self.value_columns]].copy()
        values[self.value_columns] = values[self.value_columns].apply(pd.to_numeric, errors="coerce")
        return values.groupby("row", sort=False)

    @functools.cached_property
    def mean(self) -> pd.DataFrame:
        """Row id x metric: the mean over the row's runs (NaN entries left out)."""
        return self._grouped.mean()

    @functools.cached_property
    def std(self) -> pd.DataFrame:
        """Row id x metric: the sample standard deviation (``ddof`` = :data:`DDOF`) over its runs."""
        return self._grouped.std(ddof=DDOF)

    @functools.cached_property
    def runs(self) -> pd.Series:
        """Row id -> number of runs (folds x seeds) behind the row."""
        return pd.Series({row.id: len(row.records) for row in self.rows}, dtype=int)

    @functools.cached_property
    def expected_runs(self) -> pd.Series:
        """Row id -> the runs a complete row has: its folds (1 for a fixed split) x its seeds."""
        return pd.Series({row.id: row.n_folds * len({r.config.seed for r in row.records}) for row in self.rows},
                         dtype=int)

    def run_values(self, rows: list[Row], metric: str) -> pd.DataFrame:
        """Runs (seed, fold) x row labels (in the order of ``rows``): ``metric`` in each run, NaN
        where a row lacks the run or the value (what pairwise tests and per-run figures read)."""
        labels = [r.label for r in rows]
        part = self.frame[self.frame["row"].isin({r.id for r in rows})]
        if part.empty or metric not in part:
            return pd.DataFrame(columns=labels)
        part = part.assign(value=pd.to_numeric(part[metric], errors="coerce"))
        table = part.pivot_table(index=["seed", "fold"], columns="label", values="value", aggfunc="mean",
                                 dropna=False)
        return table.reindex(columns=labels).sort_index()

    def undefined(self, rows: Iterable[Row], columns: Iterable[str]) -> dict[str, int]:
        """Entries left out of the averages of ``columns``, summed over the rows' runs."""
        columns = set(columns)
        out: dict[str, int] = {}
        for row in rows:
            for rec in row.records:
                for key, count in (row.undefined_of(rec) or {}).items():
                    if key in columns and count:
                        out[key] = out.get(key, 0) + int(count)
        return out

    def cells(self, rows: list[Row], columns: list[str]) -> tuple[pd.DataFrame, pd.DataFrame, pd.Series]:
        """(mean, std, runs) of ``rows`` x ``columns``, indexed by row label, in the given orders."""
        ids = [r.id for r in rows]
        labels = pd.Index([r.label for r in rows])
        mean = self.mean.reindex(index=ids, columns=columns).set_axis(labels, axis=0)
        std = self.std.reindex(index=ids, columns=columns).set_axis(labels, axis=0)
        return mean, std, self.runs.reindex(ids).set_axis(labels)

    # ------------------------------------------------------------------ grouping
    def by_table(self, readouts: bool = False) -> dict[tuple[str, str, int], list[Row]]:
        """(dataset, protocol, folds) -> its rows (the methods' own outputs unless ``readouts``)."""
        groups: dict[tuple[str, str, int], list[Row]] = defaultdict(list)
        for row in self.rows:
            if readouts or not row.readout:
                groups[row.table_key].append(row)
        return dict(sorted(groups.items()))

    def metric_columns(self, dataset: str, metrics: Iterable[str] | None = None) -> list[str]:
        """The dataset's metric columns (its papers' set unless ``metrics``) that the runs recorded."""
        if metrics is None:
            key = self.knowledge.metric_sets.get(dataset, FALLBACK_METRIC_SET)
            metrics = METRIC_SETS.get(key, METRIC_SETS[FALLBACK_METRIC_SET])
        present = set(self.value_columns)
        return [m for m in metrics if m in present]

    # ------------------------------------------------------------------ curves
    def history(self) -> pd.DataFrame:
        """Per-epoch history of the rows' runs: table (its key), row, label, family, job, epoch, key,
        value, and ``schedule`` (True for timing and learning-rate entries)."""
        lines = [{"table": row.table_key, "row": row.id, "label": row.label, "family": row.family,
                  "job": rec.job_id, "epoch": epoch, "key": key, "value": value, "schedule": is_schedule_key(key)}
                 for row in self.rows if not row.readout for rec in row.records
                 for key, value, epoch in rec.history_points()]
        columns = ["table", "row", "label", "family", "job", "epoch", "key", "value", "schedule"]
        frame = pd.DataFrame(lines, columns=columns)
        return frame.replace([np.inf, -np.inf], np.nan).dropna(subset=["value"])

    def steps(self) -> pd.DataFrame:
        """Metrics after each modality (``predict_steps``): table, row, label, t, metric, value."""
        lines = [{"table": row.table_key, "row": row.id, "label": row.label, "t": t, "metric": m, "value": v}
                 for row in self.rows if not row.readout for rec in row.records
                 for t, entry in enumerate(rec.step_metrics or [], 1) for m, v in entry.items()]
        columns = ["table", "row", "label", "t", "metric", "value"]
        return pd.DataFrame(lines, columns=columns).dropna(subset=["value"])

    @functools.cached_property
    def colours(self) -> dict[str, str]:
        """One colour per row label across every figure of a report (the same method is the same
        colour on every dataset and panel)."""
        from matplotlib import colormaps

        labels = sorted({r.label for r in self.rows}, key=lambda lab: (lab.split(" ")[0].split(":")[0], lab))
        palette = colormaps["tab10"].colors if len(labels) <= 10 else colormaps["tab20"].colors
        return {label: _hex(palette[i % len(palette)]) for i, label in enumerate(labels)}


def _hex(rgb) -> str:
    return "#" + "".join(f"{round(c * 255):02x}" for c in rgb[:3])
