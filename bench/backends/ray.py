"""The Ray backend (``bench run --backend ray``): the same tasks as Ray tasks, on this machine or
on an existing cluster (``--address``).

Each task asks Ray for the resources it needs: ``num_cpus`` = its thread limit and, on CUDA, a
GPU share: the method's declared memory (``gpu_memory_mb``) over the GPU's memory (the largest
GPU this process sees, or :data:`ASSUMED_GPU_MB` where it sees none), so several small jobs share
a GPU; a job that declares nothing asks for a whole one. Ray sets ``CUDA_VISIBLE_DEVICES`` for
each task, which then runs on ``cuda:0``; the record's environment names the Ray node and GPU ids.

Results flow back exactly as with local workers: a task returns its records and arrays, and the
orchestrating process alone writes the results store and MLflow. A worker that dies (killed,
out of host memory) is retried by Ray (:data:`MAX_RETRIES` times); a task that still fails comes
back as an error record for each of its jobs, the other tasks go on, and a rerun runs only the
jobs not stored. If the orchestrator itself dies, its unfinished tasks are lost with it (nothing
was stored for them) and a rerun runs them.

Ray is an optional dependency: ``pip install -e '.[ray]'``.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import tempfile
from collections.abc import Callable

from bench.backends import devices
from bench.errors import BenchError, one_line

#: Times Ray re-runs a task whose worker process died.
MAX_RETRIES = 2
#: Seconds ``--address`` may take to accept a connection before it counts as unreachable (Ray itself
#: retries for minutes, printing warnings).
CONNECT_TIMEOUT_S = 10.0
#: The addresses Ray resolves itself (no host and port to probe).
RAY_WORDS = ("auto", "local")
#: The GPU memory assumed for fractional GPU requests when this process sees no GPU (an H100's).
ASSUMED_GPU_MB = 80 * 1024


def _ray():
    try:
        import ray
    except ImportError:
        raise BenchError("--backend ray needs Ray: pip install -e '.[ray]'") from None
    return ray


def check_address(address: str | None, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """A one-line error, before any job, when ``address`` (``HOST:PORT`` or ``ray://HOST:PORT``)
    is malformed or accepts no connection within ``timeout`` seconds: Ray's own connection attempt
    retries for minutes. ``None``, ``auto`` and ``local`` are Ray's to resolve."""
    if address is None or address in RAY_WORDS:
        return
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise BenchError(f"--address expects HOST:PORT or ray://HOST:PORT (or auto), got {address!r}")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            pass
    except OSError as exc:
        reason = "no answer" if isinstance(exc, TimeoutError) else (exc.strerror or type(exc).__name__)
        raise BenchError(f"--backend ray: cannot reach a Ray cluster at {address} ({reason} within "
                         f"{timeout:g} s); start one with `ray start --head` or leave --address out "
                         "for a local one") from None


def gpu_share(memory_mb: int | None, gpu_mb: int) -> float:
    """The fraction of a GPU a task asks Ray for: its declared memory over the GPU's, at most 1."""
    if memory_mb is None:
        return 1.0
    return min(1.0, max(0.01, round(memory_mb / gpu_mb, 2)))


def _run_on_ray(run: Callable, task, device: str, gpu_fraction: float):
    """The body of a Ray task: ``run`` on the GPU Ray gave it (or the CPU), with where it ran."""
    import ray

    results = devices.run_holding(run, task, "cuda:0" if gpu_fraction else "cpu")
    where = {"ray_node": ray.get_runtime_context().get_node_id(), "ray_pid": os.getpid()}
    if gpu_fraction:
        where.update(ray_gpu_ids=[str(g) for g in ray.get_gpu_ids()], gpu_fraction=gpu_fraction)
    for record, _ in results:
        if "environment" in record:
            record["environment"].update(where)
    return results


def dispatch(tasks: list, run: Callable, *, device: str, on_result: Callable, address: str | None = None,
             memory_mb: Callable = lambda task: None) -> None:
    """Submit every task to Ray and call ``on_result`` here as each finishes. Connects to the
    cluster at ``address`` (None: the one this process joined already, else a new local one)."""
    ray = _ray()
    started = not ray.is_initialized()
    if started:
        check_address(address)
        try:
            with _stderr_held(address not in (None, "local")):
                ray.init(address=address, include_dashboard=False, log_to_driver=False,
                         runtime_env={"env_vars": _forwarded_env()})
        except Exception as exc:  # a bad address, a cluster that is down, a port that is not Ray's
            raise BenchError(f"--backend ray: cannot reach a Ray cluster at {address or 'a new local one'}: "
                             f"{one_line(exc)}") from exc
    try:
        gpu_mb = max(devices.gpu_inventory().values(), default=ASSUMED_GPU_MB)
        remote = ray.remote(max_retries=MAX_RETRIES, retry_exceptions=False)(_run_on_ray)
        pending = {}
        for task in tasks:
            wants_gpu = device.startswith("cuda") and task[0].uses_torch
            share = gpu_share(memory_mb(task), gpu_mb) if wants_gpu else 0.0
            ref = remote.options(num_cpus=max(1, task[0].threads), num_gpus=share).remote(run, task, device, share)
            pending[ref] = task
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                task = pending.pop(ref)
                try:
                    result = ray.get(ref)
                except ray.exceptions.RayError as exc:  # the worker died MAX_RETRIES + 1 times
                    error = f"Ray task failed: {one_line(exc)}"
                    result = [(j.failure(error), None) for j in task]
                on_result(result)
    finally:
        if started:
            ray.shutdown()


@contextlib.contextmanager
def _stderr_held(hold: bool):
    """Connecting to an existing cluster, Ray's C++ client writes a warning to file descriptor 2
    every second it retries (a port that answers but is not Ray's: 20 s of them); they are held
    back, and shown only when the connection succeeds after all. Never held while Ray starts a
    local cluster: its processes would inherit the held descriptor."""
    if not hold:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        ok = False
        try:
            yield
            ok = True
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            if ok:
                held.seek(0)
                sys.stderr.write(held.read().decode(errors="replace"))


def _forwarded_env() -> dict[str, str]:
    """The environment a worker needs to find the same plug-ins, threads and tracking settings."""
    names = ("PYTHONPATH", "BENCH_PLUGIN_PATH", "BENCH_THREADS", "BENCH_MLFLOW", "OPENBLAS_CORETYPE",
             "OPENBLAS_L2_SIZE")
    return {n: os.environ[n] for n in names if n in os.environ}
