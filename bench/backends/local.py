"""The local backend: every task in this process (``n_jobs=1``) or in ``n_jobs`` loky workers
(joblib), each placed on a GPU by a :class:`~bench.backends.devices.DevicePool` on CUDA."""

from __future__ import annotations

import os
from collections.abc import Callable

from bench.backends.devices import device_pool, run_holding, single_device


def dispatch(tasks: list, run: Callable, *, device: str, n_jobs: int, on_result: Callable,
             memory_mb: Callable = lambda task: None) -> None:
    """``run(task, device)`` for every task, each holding its device (:func:`run_holding`); ``on_result`` is called here as each result
    arrives (in completion order with workers). ``memory_mb(task)``: the GPU memory the task
    declares (None: a whole GPU)."""
    if n_jobs == 1:
        for task in tasks:
            on_result(run_holding(run, task, single_device(device)))
        return
    from joblib import Parallel, delayed

    _quiet_resource_tracker()
    with device_pool(device, {_task_key(t): memory_mb(t) for t in tasks}) as pool:
        parallel = Parallel(n_jobs=n_jobs, return_as="generator_unordered")
        for result in parallel(delayed(run_holding)(run, task, pool) for task in tasks):
            on_result(result)


#: loky's resource tracker, a process of its own started with the first workers, warns when a
#: semaphore it tracks is already gone as the workers are interrupted (Ctrl-C reaches the whole
#: process group); that arrives after the one-line "interrupted" message, sometimes, by a race.
TRACKER_WARNINGS_OFF = "ignore::UserWarning:joblib.externals.loky.backend.resource_tracker"


def _quiet_resource_tracker() -> None:
    """Silence that module's warnings in the processes started from here (the tracker inherits this
    process's environment); nothing else is filtered."""
    current = os.environ.get("PYTHONWARNINGS", "")
    if TRACKER_WARNINGS_OFF not in current.split(","):
        os.environ["PYTHONWARNINGS"] = ",".join(filter(None, [current, TRACKER_WARNINGS_OFF]))


def _task_key(task) -> str:
    """The key a task holds its device under: the same as :func:`bench.backends.devices.holding`'s."""
    return ",".join(job.job_id for job in task)
