"""What a task runs on: the machine's cores and GPUs, the thread limits of each job, and the device
each running task holds (an inventory, a pool shared with the workers, leases).

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

Devices. ``device="cuda"`` with several workers: a :class:`DevicePool` shared with the workers
places each running task on a GPU. A method that declares the GPU memory one of its jobs needs
(the class attribute ``gpu_memory_mb``; :func:`declared_memory`) shares a GPU with other jobs
while their declared memory fits in :data:`GPU_MEMORY_SHARE` of it, so ``--jobs 10`` runs ten
small jobs on one GPU; a job that declares nothing holds a GPU alone. Without a GPU every job runs
on the CPU. Each record's environment names its device and its co-tenants (the jobs that held the
same GPU while it ran) and its peak GPU memory.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
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


#: The part of a GPU's memory that jobs' declared needs may fill (the rest: CUDA contexts, fragmentation).
GPU_MEMORY_SHARE = 0.9


def gpu_inventory() -> dict[str, int]:
    """``{"cuda:i": total memory in MB}`` of the GPUs torch sees (empty without CUDA)."""
    torch = sys.modules.get("torch")
    if torch is None:
        try:
            import torch
        except ImportError:
            return {}
    if not torch.cuda.is_available():
        return {}
    return {f"cuda:{i}": torch.cuda.get_device_properties(i).total_memory // 2**20
            for i in range(torch.cuda.device_count())}


def declared_memory(cls) -> int | None:
    """The GPU memory (MB) a method declares one job needs (``gpu_memory_mb``), or None."""
    value = getattr(cls, "gpu_memory_mb", None)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise BenchError(f"method {getattr(cls, 'name', cls)!r}: gpu_memory_mb must be a positive integer (MB), "
                         f"got {value!r}")
    return value


def single_device(device: str) -> str:
    """The device one in-process job uses: plain "cuda" means the first GPU."""
    return "cuda:0" if device == "cuda" else device


@contextlib.contextmanager
def device_pool(device: str, needs: dict[str, int | None], inventory: dict[str, int] | None = None):
    """A :class:`DevicePool` shared with the workers for ``device`` "cuda" / "cuda:N" (``needs``:
    task key -> declared MB); the plain device name otherwise."""
    if not device.startswith("cuda"):
        yield device
        return
    import multiprocessing

    inventory = gpu_inventory() if inventory is None else inventory
    if device != "cuda":
        inventory = {device: inventory.get(device, 0)}
    with multiprocessing.Manager() as manager:
        yield DevicePool(inventory, needs, manager.dict(), manager.Lock())


class DevicePool:
    """Which GPU each running task holds, shared by the workers (``held``: a Manager dict
    task key -> [device, MB, co-tenant keys], ``lock``: a Manager lock). A task with a declared
    need goes to the first GPU where it fits beside the tasks there; one without holds a GPU
    alone; a task waits while none has room (one needing more than a whole GPU waits for an empty
    one). Every task on a GPU is recorded as a co-tenant of every other task there."""

    POLL_S = 0.05

    def __init__(self, inventory: dict[str, int], needs: dict[str, int | None], held, lock):
        if not inventory:
            raise BenchError("device cuda: no GPU to place jobs on")
        self.inventory, self.needs, self.held, self.lock = dict(inventory), dict(needs), held, lock

    def _room(self, device: str, need: int | None) -> bool:
        tenants = [mb for dev, mb, _ in self.held.values() if dev == device]
        capacity = self.inventory[device] * GPU_MEMORY_SHARE
        if need is None or need > capacity or any(mb is None for mb in tenants):
            return not tenants
        return sum(tenants) + need <= capacity

    def acquire(self, key: str) -> str:
        need = self.needs.get(key)
        while True:
            with self.lock:
                for device in self.inventory:
                    if self._room(device, need):
                        others = [k for k, (dev, _, _) in self.held.items() if dev == device]
                        for other in others:  # (a Manager dict's values are copies: reassign)
                            dev, mb, seen = self.held[other]
                            self.held[other] = [dev, mb, [*seen, key]]
                        self.held[key] = [device, need, others]
                        return device
            time.sleep(self.POLL_S)

    def release(self, key: str) -> None:
        with self.lock:
            self.held.pop(key, None)

    def co_tenants(self, key: str) -> set[str]:
        """The job ids of every other task that held ``key``'s GPU while it did (so far)."""
        with self.lock:
            _, _, seen = self.held.get(key, [None, None, []])
        return {job_id for other in seen for job_id in other.split(",")}


class Lease:
    """The device a task holds, and (on a shared GPU) the tasks it shared it with."""

    def __init__(self, device: str, pool: DevicePool | None = None, key: str = ""):
        self.device, self.pool, self.key = device, pool, key

    def describe(self) -> dict:
        """What the record's environment says about the device: the co-tenants, the declared and
        the peak GPU memory."""
        out = {}
        if self.pool is not None:
            out["co_tenants"] = sorted(self.pool.co_tenants(self.key))
            if self.pool.needs.get(self.key) is not None:
                out["gpu_memory_declared_mb"] = self.pool.needs[self.key]
        torch = sys.modules.get("torch")
        if torch is not None and self.device.startswith("cuda") and torch.cuda.is_available():
            out["gpu_peak_mb"] = round(torch.cuda.max_memory_allocated(torch.device(self.device)) / 2**20, 1)
        return out


@contextlib.contextmanager
def holding(device, job_ids: list[str]) -> Iterator[Lease]:
    """The device a task runs on: a plain name, or one placed by a :class:`DevicePool`."""
    if not isinstance(device, DevicePool):
        yield Lease(device)
        return
    key = ",".join(job_ids)
    name = device.acquire(key)
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats(torch.device(name))
    try:
        yield Lease(name, device, key)
    finally:
        device.release(key)


def run_holding(run: Callable, task, device) -> list:
    """``run(task, device name)`` while the task holds its device: ``device`` itself, or the GPU a
    :class:`DevicePool` places it on (a task whose method does not use torch runs on the CPU and
    holds no GPU). Each record that ``run`` returns gets what :meth:`Lease.describe` says. Every
    backend runs a task through this, in the process that runs it."""
    if not task[0].uses_torch:
        device = "cpu"
    with holding(device, [job.job_id for job in task]) as lease:
        results = run(task, lease.device)
        for record, _ in results:
            if "environment" in record:  # not in a failed job's record
                record["environment"].update(lease.describe())
        return results


def resolve_device(device: str, needs_torch: bool) -> str:
    """"auto" -> "cuda" when torch sees a GPU (and a selected method uses torch), else "cpu"."""
    if device not in ("auto", "cpu", "cuda") and not device.startswith("cuda:"):
        raise BenchError(f"--device must be auto, cpu, cuda or cuda:N, got {device!r}")
    if device == "cpu" or (device == "auto" and not needs_torch):
        return "cpu"
    if not gpu_inventory():
        if device == "auto":
            return "cpu"
        raise BenchError(f"--device {device}: torch sees no CUDA device on this machine")
    return device
