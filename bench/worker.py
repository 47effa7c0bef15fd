"""What happens to one task in whatever process runs it (this one, a loky worker, a Ray task).

A task is one job, or the folds of one method trained together (:func:`bench.jobs.group_jobs`).
For each, the worker seeds, limits threads, loads the data (once per process), fits (one more try
at half the ``batch_size`` when a GPU runs out of memory; the folds of a task together through
:mod:`bench.stacked`), predicts the readouts and class maps (:mod:`bench.outputs`), evaluates and
returns each job's record and arrays. It never writes the results store: the orchestrating process
does, as results arrive (:mod:`bench.runner`).
"""

from __future__ import annotations

import logging
import platform
import random
import sys
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

import numpy as np

from bench import image_features, params, plugins, tuning
from bench.api import Method
from bench.backends import devices
from bench.data import MultiLabelData
from bench.environment import code_version, library_versions
from bench.errors import BenchError, one_line
from bench.metrics import evaluate
from bench.outputs import (
    CLASS_MAP_IMAGES,  # noqa: F401  (part of the worker's interface: the class-map figures read it)
    check_predictions,
    check_scores,
    class_maps,
    evaluated,
    readouts_of,
    step_scores,
)
from bench.plugins import load_dataset

if TYPE_CHECKING:  # the worker reads a job as plain data; the plan (bench.jobs) is not imported
    from bench.jobs import Job

log = logging.getLogger(__name__)


def run_task(task: Sequence[Job], device: str) -> list[tuple[dict, dict | None]]:
    """Run one task on ``device`` (the backend holds it: :func:`bench.backends.devices.run_holding`):
    a single job, or the folds of one method trained together. Each job gives ``(record, arrays)``;
    a failure gives an error record (``error``) and no arrays, for every job of the task."""
    try:
        if len(task) == 1:
            return [execute(task[0], device)]
        return execute_folds(task, device)
    except BenchError as exc:
        return [(j.failure(one_line(exc)), None) for j in task]
    except Exception as exc:  # a bug in one method must not lose the other jobs' results
        error, trace = one_line(exc, with_type=True), traceback.format_exc()
        return [(j.failure(error, trace), None) for j in task]


def execute(job: Job, device: str) -> tuple[dict, dict[str, np.ndarray]]:
    """Train and evaluate one job; its record and arrays."""
    part = _JobPart.of(job, device)
    with devices.thread_limits(job.threads or devices.threads_per_job(1)) as threads:
        searched = {}

        def fit(job_params):  # with a search: each candidate on the training part's carve-out
            method, searched["record"] = tuning.fit(part.cls, job_params, part.train, job.search,
                                                    lambda: seed_everything(job.split.seed))
            return [method]

        t0 = time.perf_counter()
        (method,), params_used = _fit_retrying_oom([job], part.params, fit)
        fit_s = time.perf_counter() - t0
        return part.finish(method, {"fit_s": fit_s}, threads, params_used, searched.get("record"))


def execute_folds(jobs: Sequence[Job], device: str) -> list[tuple[dict, dict[str, np.ndarray]]]:
    """Train the folds of one method (``jobs``: the same configuration but for the fold) as one
    stacked model (:mod:`bench.stacked`), then evaluate each fold: one record per fold, as
    :func:`execute` gives it, with the stacked training's time shared out in ``timings``."""
    from bench.stacked import fit_folds  # torch: only for the methods that train their folds together

    parts = [_JobPart.of(job, device) for job in jobs]
    with devices.thread_limits(jobs[0].threads or devices.threads_per_job(1)) as threads:
        def fit(job_params):
            seed_everything(jobs[0].split.seed)
            return fit_folds([p.cls(**job_params) for p in parts], [p.train for p in parts],
                             cuda_graph=devices.single_device(device).startswith("cuda"))

        t0 = time.perf_counter()
        methods, params_used = _fit_retrying_oom(jobs, parts[0].params, fit)
        shared_s = time.perf_counter() - t0
        timings = {"fit_s": shared_s / len(jobs), "fit_stacked_s": shared_s, "stacked_folds": len(jobs)}
        return [p.finish(m, dict(timings), threads, params_used) for p, m in zip(parts, methods, strict=True)]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    if "torch" in sys.modules:
        sys.modules["torch"].manual_seed(seed)


@dataclass
class _JobPart:
    """One job's data and plug-in, ready to fit."""

    job: Job
    cls: type
    data: MultiLabelData
    train: MultiLabelData
    test: MultiLabelData
    params: dict
    notes: list[str]
    device: str

    @classmethod
    def of(cls, job: Job, device: str) -> _JobPart:
        if plugins.use_plugin_path(job.plugin_path):  # a reused worker of an earlier run
            load_dataset.cache_clear()
        method_cls = plugins.get("methods", job.method)  # imports the method's file (and torch, if it uses it)
        data = load_dataset(job.dataset, job.data_root)
        if job.extractor:  # a feature-only method on an image-only dataset: the cached CNN features
            data = image_features.with_views(data, job.views_file)
        train_index, test_index = job.split.train, job.split.test
        if job.smoke:  # a check of the set-up, not a result: a few examples suffice
            train_index, test_index = train_index[:params.SMOKE_EXAMPLES], test_index[:params.SMOKE_EXAMPLES]
        train, test = data.subset(train_index), data.subset(test_index)
        job_params = dict(job.params)
        if "device" in job_params:
            job_params["device"] = device
        return cls(job, method_cls, data, train, test, job_params, _empty_label_notes(job, data, train), device)

    def finish(self, method: Method, timings: dict, threads: dict, params_used: dict, search: dict | None = None
               ) -> tuple[dict, dict[str, np.ndarray]]:
        """Predict, evaluate and build the record and arrays of the fitted ``method``."""
        job, test, name = self.job, self.test, self.job.method
        t1 = time.perf_counter()
        scores = check_scores(name, "predict_scores", method.predict_scores(test), test.Y.shape)
        y_pred = check_predictions(name, method.predict(test), test.Y.shape)
        t2 = time.perf_counter()
        readouts = readouts_of(name, method, test)
        steps = step_scores(name, method, test)
        t3 = time.perf_counter()
        maps = class_maps(name, method, test)
        t4 = time.perf_counter()
        environment = _environment(self.device, threads)
        result = evaluate(test.Y, scores, y_pred, ignore=test.ignore)
        notes = list(self.notes)
        changed = {k: v for k, v in params_used.items() if self.params.get(k) != v}
        if changed:
            notes.append(f"{job.describe()} was fitted with {changed} (its parameters: "
                         f"{ {k: self.params[k] for k in changed} }) after running out of GPU memory")
        record = {
            "job_id": job.job_id,
            "config": job.config,
            "overrides": job.overrides,
            "paper_defaults": job.paper_defaults,
            **evaluated(result),
            "label_names": list(self.data.label_names),
            "n_train": int(self.train.n_samples),
            "n_test": int(test.n_samples),
            "timings": {**timings, "predict_s": t2 - t1,
                        **({"readouts_s": t3 - t2} if readouts or steps is not None else {}),
                        **({"class_maps_s": t4 - t3} if maps else {})},
            "history": list(getattr(method, "history_", []) or []),
            "notes": notes,
            "environment": environment,
            # to the millisecond: a whole second made a later job's start (this time less its timings)
            # come out before an earlier one's, and a resumed row's MLflow parent start after a child's
            "finished_at": datetime.now().astimezone().isoformat(timespec="milliseconds"),
        }
        if changed:
            record["fitted_with"] = changed
        if search is not None:  # every candidate's validation score and the choice (bench.tuning)
            record["search"] = search
        arrays = {"test_index": job.split.test, "scores": scores.astype(np.float32), "y_pred": y_pred}
        if readouts:  # other readouts of the same fitted model, thresholded like predict's default
            record["readouts"] = {k: evaluated(evaluate(test.Y, s, (s >= method.threshold).astype(np.uint8),
                                                        ignore=test.ignore)) for k, s in readouts.items()}
            arrays.update({f"readout__{k}": s.astype(np.float32) for k, s in readouts.items()})
        if steps is not None:
            # The metrics after each modality / step (RMLC Fig. 3), thresholded like predict's default.
            record["step_metrics"] = [dict(evaluate(test.Y, s, (s >= method.threshold).astype(np.uint8),
                                                    ignore=test.ignore)) for s in steps]
            arrays["step_scores"] = steps.astype(np.float32)
        arrays.update(maps)
        return record, arrays


def _environment(device: str, threads: dict) -> dict:
    """Where a job ran: host, device, code version, the thread limits it ran under, the machine's
    load (its timings depend on it) and the versions of the libraries its numbers depend on (those
    imported by then)."""
    env = {"python": platform.python_version(), "host": platform.node(), "machine": platform.machine(),
           "cpus": devices.available_cores(), "load": round(devices.busy_cores(), 2), "device": device,
           "code": code_version(), "threads": threads, "libraries": library_versions()}
    torch = sys.modules.get("torch")
    if torch is not None and device.startswith("cuda") and torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return env


def _is_cuda_oom(exc: BaseException) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(exc, torch.cuda.OutOfMemoryError)


def _fit_retrying_oom(jobs: Sequence[Job], job_params: dict, fit) -> tuple[list, dict]:
    """``fit(job_params)``; when it runs out of GPU memory and the method has a ``batch_size``,
    one line saying so and one more try at half the batch size. Returns what ``fit`` returned and
    the parameters it was given."""
    what = jobs[0].describe() if len(jobs) == 1 else f"{len(jobs)} folds of {jobs[0].describe()}"
    try:
        return fit(job_params), job_params
    except Exception as exc:
        if not _is_cuda_oom(exc):
            raise
        size = job_params.get("batch_size")
        if not isinstance(size, int) or isinstance(size, bool) or size < 2:
            at = f" at batch_size {size}" if size is not None else ""
            raise BenchError(f"{what}: CUDA out of memory{at} (no batch_size to halve)") from exc
    _free_cuda_memory()
    half = dict(job_params, batch_size=size // 2)
    log.warning("%s: CUDA out of memory at batch_size %d; retrying once at batch_size %d", what, size, size // 2)
    try:
        return fit(half), half
    except Exception as exc:
        if _is_cuda_oom(exc):
            raise BenchError(f"{what}: CUDA out of memory at batch_size {size // 2} (retried after {size})") from exc
        raise


def _free_cuda_memory() -> None:
    import gc

    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


def _empty_label_notes(job: Job, data: MultiLabelData, train: MultiLabelData) -> list[str]:
    empty = np.flatnonzero(train.Y.sum(axis=0) == 0)
    if not empty.size:
        return []
    names = [data.label_names[i] for i in empty]
    return [f"label(s) {names} have no positive example in the training part of {job.describe()}; "
            "the method sees an all-negative column (scored as it predicts; undefined test metrics are "
            "left out of macro averages and counted)"]
