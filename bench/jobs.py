"""The plan: what a job is and which jobs a command means.

A job is one (method, resolved hyper-parameters, dataset@fingerprint, protocol, fold, seed); its
id is the hash of that full configuration plus the digest of the split's indices, so a stored job
is found again by the same command (:mod:`bench.runner` skips it). Hyper-parameters are resolved
and validated in :mod:`bench.params`, searches in :mod:`bench.tuning`; every check runs here,
before any job. A job carries only plain data (names, parameters, indices): the worker re-reads
the plug-in by name, so no dynamically imported class ever needs pickling. A task is one job, or
the pending folds of a method that trains them together (:func:`group_jobs`, :mod:`bench.stacked`).

Pure: no torch and no I/O beyond reading the plug-ins and the datasets the jobs are made of.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass, field, replace
from pathlib import Path

from bench import image_features, params, plugins, tuning
from bench.api import EXECUTION_PARAMS, supports_stacking
from bench.data import MultiLabelData
from bench.errors import BenchError
from bench.plugins import load_dataset
from bench.protocols import MIN_CARVE_OUT_EXAMPLES, Split, make_splits

log = logging.getLogger(__name__)

#: A test fold smaller than this gets a warning: its metrics are noisy and some are undefined.
MIN_TEST_EXAMPLES = 10


@dataclass(frozen=True, eq=False)
class Job:
    method: str
    dataset: str
    params: dict
    overrides: dict
    split: Split
    data_fingerprint: str
    data_root: str = ""
    store_root: str = ""
    scale_defaults: dict = field(default_factory=dict)  # the dataset-scale settings applied (bench.params)
    paper_defaults: bool = False  # run with --paper-defaults (recorded; not part of the identity)
    extractor: str = ""  # the frozen CNN of derived feature views ("" : the dataset's own views)
    threads: int = 0  # the thread limit the job runs under (0: the cores of this machine)
    views_file: str = ""  # derived feature views extracted by the orchestrator (image_features)
    smoke: bool = False  # bench run --smoke: a tiny schedule (bench.params.SMOKE_SCHEDULE), not a result
    search: dict = field(default_factory=dict)  # the in-fold search (bench.tuning; {}: none)
    # Where the worker finds plug-ins: the orchestrator's BENCH_PLUGIN_PATH (not part of the identity).
    plugin_path: str = field(default_factory=lambda: os.environ.get("BENCH_PLUGIN_PATH", ""))
    config: dict = field(init=False)
    job_id: str = field(init=False)

    def __post_init__(self):
        identity = {k: v for k, v in self.params.items() if k not in EXECUTION_PARAMS}
        config = {
            "method": self.method,
            "dataset": self.dataset,
            "params": identity,
            "protocol": self.split.protocol,
            "n_folds": self.split.n_folds,
            "fold": self.split.fold,
            "seed": self.split.seed,
            "split_hash": self.split.hash,
            "data_fingerprint": self.data_fingerprint,
        }
        if self.scale_defaults:  # absent when none applied, so earlier jobs keep their ids
            config["scale_defaults"] = dict(self.scale_defaults)
        if self.smoke:  # likewise absent for real jobs; a smoke job never shares a real one's id
            config["smoke"] = True
        if self.search:  # the search is the row's identity, not the values it chooses (bench.tuning)
            config["search"] = self.search
        digest = hashlib.sha256(json.dumps(config, sort_keys=True, default=repr).encode()).hexdigest()
        object.__setattr__(self, "config", config)
        object.__setattr__(self, "job_id", digest[:16])

    def describe(self) -> str:
        return f"{self.method} on {self.dataset} ({self.split.protocol} seed {self.split.seed} fold {self.split.fold})"

    @property
    def uses_torch(self) -> bool:
        """A method with a ``device`` parameter runs on torch (and may want a GPU); others never do."""
        return "device" in self.params

    def failure(self, error: str, trace: str | None = None) -> dict:
        """The record of this job when it failed: what the run summary and the error report read."""
        return {"job_id": self.job_id, "job": self.describe(), "error": error,
                **({"traceback": trace} if trace is not None else {})}


def build_jobs(
    methods: list[str], datasets: list[str], *, protocol: str | None, n_folds: int,
    seeds: tuple[int, ...] | None, overrides: dict, data_root: Path, store_root: Path,
    strict: bool = True, paper_defaults: bool = False, feature_extractor: str | None = None,
    smoke: bool = False, tune: dict | None = None,
) -> list[Job]:
    """Every job of the grid, each hyper-parameter checked before any job runs.

    An incompatible (method, dataset) pair, or a method whose file fails to import, is an error
    when ``strict``, else skipped with a warning (``--method all`` over mixed datasets). A dataset's ``scale_defaults`` apply unless
    ``paper_defaults``; ``feature_extractor`` (``"resnet101@448"``) chooses the frozen CNN of
    derived feature views; ``smoke`` makes smoke jobs (:data:`bench.params.SMOKE_SCHEDULE`);
    ``tune`` (``--tune``) adds to or overrides the methods' own in-fold searches (:mod:`bench.tuning`)."""
    classes = _method_classes(methods, strict)
    params.check_override_keys(overrides, classes)
    tuning.check_tune_keys(tune or {}, classes)
    extractor = image_features.Extractor.parse(feature_extractor) if feature_extractor else None
    jobs = []
    for ds_name in datasets:
        data = load_dataset(ds_name, str(data_root))
        splits = make_splits(data, protocol, n_folds, seeds)
        _warn_small_test_folds(data, splits)
        fingerprint = data.fingerprint()
        n_train = min(len(s.train) for s in splits)  # the smallest training part a job fits on
        if smoke:
            n_train = min(n_train, params.SMOKE_EXAMPLES)
        scale = {} if paper_defaults else dict(plugins.get("datasets", ds_name).scale_defaults)
        for cls in classes:
            try:
                views_from = image_features.plan(cls, data, extractor)
            except BenchError as exc:
                _skip_unless_strict(exc, strict)
                continue
            resolved = params.resolve(cls, overrides, scale, smoke)
            search = tuning.search_for(cls, tune or {}, overrides)
            try:
                _check_carve_out(cls, resolved.params, search, ds_name, n_train)
            except BenchError as exc:
                _skip_unless_strict(exc, strict)
                continue
            params.validate(cls, resolved, ds_name, data, n_train)
            for candidate in tuning.candidates(search.get("grid", {})):  # every candidate, before any job
                try:
                    params.validate(cls, replace(resolved, params={**resolved.params, **candidate}), ds_name,
                                    data, n_train)
                except BenchError as exc:
                    raise BenchError(f"search candidate {candidate} of method {cls.name!r}: {exc}") from None
            for split in splits:
                job_params = resolved.params
                if "random_state" in job_params:
                    job_params = {**job_params, "random_state": split.seed}
                jobs.append(Job(cls.name, ds_name, job_params, resolved.overrides, split,
                                image_features.job_fingerprint(fingerprint, views_from), str(data_root),
                                str(store_root), resolved.scale_defaults, paper_defaults, str(views_from or ""),
                                smoke=smoke, search=search))
    return jobs


def _method_classes(methods: list[str], strict: bool) -> list[type]:
    """The methods' classes; with ``strict`` off (``--method all``) one whose file fails to import
    is skipped with a warning instead of stopping the run."""
    classes = []
    for name in methods:
        try:
            classes.append(plugins.get("methods", name))
        except BenchError as exc:
            _skip_unless_strict(exc, strict)
    return classes


def _skip_unless_strict(exc: BenchError, strict: bool) -> None:
    """An entry the run cannot do: an error when ``strict``, else a warning and the run goes on."""
    if strict:
        raise exc
    log.warning("skipping: %s", exc)


def _check_carve_out(cls: type, job_params: dict, search: dict, dataset: str, n_train: int) -> None:
    """A method that carves a validation part out of each training part (its ``val_fraction``, or an
    in-fold search) cannot on training parts smaller than :data:`MIN_CARVE_OUT_EXAMPLES`: refused
    here, once, instead of failing in every job."""
    if n_train >= MIN_CARVE_OUT_EXAMPLES or not (float(job_params.get("val_fraction") or 0) > 0 or search):
        return
    why = "its in-fold search" if search else f"val_fraction={job_params['val_fraction']}"
    raise BenchError(f"method {cls.name!r} on dataset {dataset!r}: training parts hold as few as {n_train} "
                     f"examples; {why} carves a validation part out of them, which needs at least "
                     f"{MIN_CARVE_OUT_EXAMPLES}")


def _warn_small_test_folds(data: MultiLabelData, splits: list[Split]) -> None:
    smallest = min(len(s.test) for s in splits)
    if smallest < MIN_TEST_EXAMPLES:
        protocol = splits[0].protocol
        advice = "; use fewer folds" if protocol == "kfold" else ""  # the other protocols fix the test part's size
        log.warning("dataset %r: %s test folds hold as few as %d examples (fewer than %d): their metrics are "
                    "noisy and partly undefined%s", data.name, protocol, smallest, MIN_TEST_EXAMPLES, advice)


def group_jobs(pending: list[Job], stack: bool) -> list[tuple[Job, ...]]:
    """The tasks to run: with ``stack``, the pending folds of one method that can train them
    together (:func:`bench.api.supports_stacking`; same method, parameters, dataset, protocol
    and seed) form one task; every other job is a task of its own. Only pending jobs are grouped,
    so a rerun trains just the missing folds."""
    if not stack:
        return [(job,) for job in pending]
    groups: dict[str, list[Job]] = {}
    for job in pending:
        key = job.job_id
        if not job.search and supports_stacking(plugins.get("methods", job.method)):  # a search fits one fold
            key = json.dumps([{k: v for k, v in job.config.items() if k not in ("fold", "split_hash")},
                              job.data_root, job.extractor], sort_keys=True, default=repr)
        groups.setdefault(key, []).append(job)
    return [tuple(group) for group in groups.values()]
