"""The orchestrator: runs the jobs of a command that are not stored yet, and stores their results.

:func:`run_jobs` skips the jobs already in the results store (an interrupted command resumes where
it stopped; ``force`` re-runs them), prepares the derived views once per dataset before any job
starts (features of a frozen CNN for a feature-only method on an image-only dataset,
:mod:`bench.image_features`), groups the pending jobs into tasks (:func:`bench.jobs.group_jobs`)
and hands them to a backend (:mod:`bench.backends`), which runs each in a worker
(:func:`bench.worker.run_task`). As each task's records and arrays come back, this process alone
writes them to the results store (atomically, one job per file pair) and hands each record on
(``on_record``: MLflow). The jobs themselves are planned in :mod:`bench.jobs`.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, replace

from bench import backends, image_features, plugins
from bench.backends import devices
from bench.backends.devices import resolve_device  # noqa: F401  (re-exported: see the note below)
from bench.environment import code_version, library_versions  # noqa: F401
from bench.errors import BenchError, one_line
from bench.jobs import MIN_TEST_EXAMPLES, Job, build_jobs, group_jobs  # noqa: F401
from bench.outputs import CLASS_MAP_IMAGES  # noqa: F401
from bench.params import parse_overrides, resolve_params  # noqa: F401
from bench.plugins import load_dataset
from bench.store import ResultStore
from bench.worker import execute, execute_folds, run_task, seed_everything  # noqa: F401

# Re-exported: the names the run side had here before it was split into the plan (bench.jobs), the
# worker (bench.worker, bench.outputs) and the backends, so that tests, benchmarks and scripts
# written against ``bench.runner`` keep working. New code imports them from where they live.

log = logging.getLogger(__name__)

#: ``--stack-folds``: when to train the folds of a method together (:mod:`bench.stacked`).
STACK_FOLDS = ("auto", "on", "off")


@dataclass
class RunSummary:
    records: list[dict]
    ran: int
    skipped: int
    failures: list[dict]


def run_jobs(jobs: list[Job], *, device: str = "auto", n_jobs: int = 1, threads: int | None = None,
             force: bool = False, progress: bool = True, on_record=None, stack_folds: str = "auto",
             backend: str = "local", address: str | None = None) -> RunSummary:
    """Run the jobs not yet stored, ``n_jobs`` at a time, each under ``threads`` threads (default:
    the cores divided among the running jobs). ``on_record(record)`` is called in this (the
    orchestrating) process for each job as it finishes, e.g. to log it to MLflow; this process
    alone writes the results store.

    ``stack_folds``: train the folds of a method that supports it (:mod:`bench.stacked`) as one
    model: "auto" on CUDA, "on" everywhere, "off" never. ``backend``: "local" (this process or
    loky workers) or "ray" (Ray tasks; ``address`` an existing cluster, :mod:`bench.backends.ray`)."""
    if stack_folds not in STACK_FOLDS:
        raise BenchError(f"--stack-folds must be one of {', '.join(STACK_FOLDS)}, got {stack_folds!r}")
    backends.check_backend(backend)
    store = ResultStore(jobs[0].store_root) if jobs else None
    done, pending = [], []
    for job in jobs:
        record = None if force else store.load(job.dataset, job.method, job.job_id)
        if record is None:
            pending.append(job)
        else:
            done.append(record)
    device = devices.resolve_device(device, needs_torch=any(j.uses_torch for j in pending))
    tasks = group_jobs(pending, stack_folds == "on" or (stack_folds == "auto" and device.startswith("cuda")))
    n_jobs = max(1, min(n_jobs if n_jobs > 0 else devices.available_cores(), len(tasks) or 1))
    per_job = devices.threads_per_job(n_jobs, threads)
    views = {j.job_id: j for j in _with_derived_views(pending, device, threads)}
    tasks = [tuple(replace(views[j.job_id], threads=per_job) for j in task) for task in tasks]

    results = _dispatch(tasks, store, device, n_jobs, progress, on_record, backend, address)
    failures = [r for r in results if "error" in r]
    for rec in results:
        for note in rec.get("notes", []):
            log.warning(note)
    return RunSummary(done + [r for r in results if "error" not in r], len(pending), len(done), failures)


def _with_derived_views(pending: list[Job], device: str, threads: int | None) -> list[Job]:
    """Extract the derived feature views of each image-only dataset once, here, before any worker
    starts, and hand the jobs the cache file."""
    files: dict[tuple[str, str, str, str], str] = {}
    out = []
    for job in pending:
        if not job.extractor:
            out.append(job)
            continue
        key = (job.data_root, job.dataset, job.store_root, job.extractor)
        if key not in files:
            data = load_dataset(job.dataset, job.data_root)
            extractor = image_features.Extractor.parse(job.extractor)
            with devices.thread_limits(devices.threads_per_job(1, threads)):
                files[key] = str(image_features.cache_views(data, job.store_root, devices.single_device(device),
                                                            extractor))
        out.append(replace(job, views_file=files[key]))
    return out


def _dispatch(tasks: list[tuple[Job, ...]], store: ResultStore | None, device: str, n_jobs: int, progress: bool,
              on_record=None, backend: str = "local", address: str | None = None) -> list[dict]:
    """Run the tasks; as each one's results arrive, store them here (the workers only compute)
    and hand each record to ``on_record``."""
    if not tasks:
        return []
    from tqdm.auto import tqdm

    bar = tqdm(total=sum(len(t) for t in tasks), desc="jobs", unit="job", disable=not progress, file=sys.stderr)
    out: list[dict] = []
    by_id = {job.job_id: job for task in tasks for job in task}

    def finished(results: list[tuple[dict, dict | None]]) -> None:
        for record, arrays in results:
            if arrays is not None:
                try:
                    store.write(record, arrays)
                except OSError as exc:
                    record = by_id[record["job_id"]].failure(f"could not store the result: {one_line(exc)}")
            out.append(record)
            bar.update()
            if on_record is not None and "error" not in record:
                on_record(record)

    memory = {task: devices.declared_memory(plugins.get("methods", task[0].method)) for task in tasks}
    try:
        backends.dispatch(tasks, run_task, device=device, n_jobs=n_jobs, on_result=finished, backend=backend,
                          address=address, memory_mb=memory.get)
    finally:
        bar.close()
    return out

