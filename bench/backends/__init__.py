"""Where tasks run: the backends, and what they run on.

* :mod:`bench.backends.local`: this process, or ``n_jobs`` loky workers;
* :mod:`bench.backends.ray`: Ray tasks, on this machine or an existing cluster;
* :mod:`bench.backends.devices`: cores, GPUs, thread limits and the device each task holds.

Either way the workers only compute: each task's results come back to the orchestrating process,
which alone writes the results store and MLflow (:func:`bench.runner.run_jobs`). A backend knows
a task as a tuple of jobs and the function that runs it (:func:`bench.worker.run_task`, handed in
by the runner), so nothing here imports the runner, the worker or the plan.
"""

from __future__ import annotations

from collections.abc import Callable

from bench.backends import local
from bench.errors import BenchError

BACKENDS = ("local", "ray")


def check_backend(backend: str) -> None:
    if backend not in BACKENDS:
        raise BenchError(f"--backend must be one of {', '.join(BACKENDS)}, got {backend!r}")


def dispatch(tasks: list, run: Callable, *, device: str, n_jobs: int, on_result: Callable, backend: str = "local",
             address: str | None = None, memory_mb: Callable = lambda task: None) -> None:
    """``run(task, device)`` for every task, in this process (``n_jobs=1``), in ``n_jobs``
    loky workers, or as Ray tasks; ``on_result`` is called here, in the orchestrating process, as
    each result arrives. ``memory_mb(task)``: the GPU memory the task declares (None: a whole GPU)."""
    check_backend(backend)
    if backend == "ray":
        from bench.backends import ray  # loaded when a run asks for it (Ray itself: when it connects)

        ray.dispatch(tasks, run, device=device, on_result=on_result, address=address, memory_mb=memory_mb)
    else:
        local.dispatch(tasks, run, device=device, n_jobs=n_jobs, on_result=on_result, memory_mb=memory_mb)
