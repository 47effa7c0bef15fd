"""Where jobs run: in this process or in joblib's worker processes, under explicit thread limits,
each holding one device.

Thread limits. numpy's and scipy's OpenBLAS, scikit-learn's OpenMP and torch each keep a pool of
threads sized to the machine; left alone, pools of concurrent jobs (and of one job's libraries)
spin against each other. On a shared 2-core VM one fold of ``br`` on ``mnist-mosaic`` fitted in
0.7 s with one BLAS thread and in 30 s with two. So every job runs inside
:func:`thread_limits`: ``threadpoolctl`` caps the BLAS and OpenMP pools, and
``torch.set_num_threads`` caps torch's when torch is imported already (by the method's file; it
is never imported just to be limited). The limit is the idle cores divided among the jobs that
run at the same time (``bench run --threads N`` or ``$BENCH_THREADS`` sets it); it is stored with
each record. Idle cores: the cores this process may use, less those other processes keep busy (the
one-minute load average when the run starts). Counting the others matters because a pool waits for
all of its threads at every call: on the shared 2-core VM at load 5, ten folds of ``br`` on
``mnist-mosaic`` took 17 s with one BLAS thread and 340 s with two, and one logistic-regression fit
0.13 s against 2.8 s.

Devices. ``device="cuda"`` with several workers hands each running job one GPU token from a
shared queue, so no two jobs share a GPU unless there are more workers than GPUs.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator

from bench.errors import BenchError


def available_cores() -> int:
    """The CPU cores this process may use (affinity and cgroup quotas counted, as joblib does)."""
    from joblib import cpu_count

    return max(1, cpu_count())


def busy_cores() -> float:
    """The cores other processes keep busy: the one-minute load average (0 where there is none)."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):  # Windows; an unreadable /proc/loadavg
        return 0.0


def idle_cores() -> int:
    """The cores this process may use less those busy with other work, at least 1."""
    cores = available_cores()
    return max(1, min(cores, round(cores - busy_cores())))


def threads_per_job(n_running: int, requested: int | None = None) -> int:
    """``requested``, or the idle cores divided among the ``n_running`` concurrent jobs (at least 1)."""
    if requested is not None:
        if requested < 1:
            raise BenchError(f"--threads must be a positive integer, got {requested}")
        return requested
    return max(1, idle_cores() // max(1, n_running))


@contextlib.contextmanager
def thread_limits(threads: int) -> Iterator[dict]:
    """Run the body with at most ``threads`` threads per pool; yields the limits found in force
    (``{"limit": n, "openblas": n, "openmp": n, "torch": n}``, the libraries loaded) for the record."""
    from threadpoolctl import threadpool_info, threadpool_limits

    torch = sys.modules.get("torch")
    torch_before = torch.get_num_threads() if torch is not None else None
    with threadpool_limits(limits=threads):
        if torch is not None:
            torch.set_num_threads(threads)
        applied = {"limit": threads}
        for pool in threadpool_info():
            api = pool["internal_api"]
            applied[api] = max(applied.get(api, 0), pool["num_threads"])
        if torch is not None:
            applied["torch"] = torch.get_num_threads()
        try:
            yield applied
        finally:
            if torch_before is not None:
                torch.set_num_threads(torch_before)


def dispatch(tasks: list, run: Callable, *, device: str, n_jobs: int, on_result: Callable) -> None:
    """``run(task, device_or_tokens)`` for every task, in this process (``n_jobs=1``) or in
    ``n_jobs`` loky workers; ``on_result`` is called here, in the orchestrating process, as each
    result arrives."""
    if n_jobs == 1:
        for task in tasks:
            on_result(run(task, single_device(device)))
        return
    from joblib import Parallel, delayed

    with device_tokens(device, n_jobs) as tokens:
        parallel = Parallel(n_jobs=n_jobs, return_as="generator_unordered")
        for result in parallel(delayed(run)(task, tokens) for task in tasks):
            on_result(result)


def single_device(device: str) -> str:
    """The device one in-process job uses: plain "cuda" means the first GPU."""
    return "cuda:0" if device == "cuda" else device


@contextlib.contextmanager
def device_tokens(device: str, n_jobs: int):
    """A queue of device names shared with workers: one token per concurrently running job."""
    if device != "cuda":
        yield device
        return
    import multiprocessing

    import torch

    n_gpus = torch.cuda.device_count()
    with multiprocessing.Manager() as manager:
        queue = manager.Queue()
        for i in range(n_jobs):
            queue.put(f"cuda:{i % n_gpus}")
        yield queue


@contextlib.contextmanager
def holding(device) -> Iterator[str]:
    """The device a job runs on: a plain name, or a token taken from (and returned to) a queue."""
    token = device.get() if hasattr(device, "get") else device
    try:
        yield token
    finally:
        if hasattr(device, "put"):
            device.put(token)


def resolve_device(device: str, needs_torch: bool) -> str:
    """"auto" -> "cuda" when torch sees a GPU (and a selected method uses torch), else "cpu"."""
    if device not in ("auto", "cpu", "cuda") and not device.startswith("cuda:"):
        raise BenchError(f"--device must be auto, cpu, cuda or cuda:N, got {device!r}")
    if device == "cpu" or (device == "auto" and not needs_torch):
        return "cpu"
    import torch

    if not torch.cuda.is_available():
        if device == "auto":
            return "cpu"
        raise BenchError(f"--device {device}: torch sees no CUDA device on this machine")
    return device
