"""GPU jobs without a GPU: an out-of-memory error injected by a fake method (one line naming the
batch size, one retry at half of it, the other jobs go on), and small jobs sharing a GPU of a fake
device inventory (placement by declared memory, device and co-tenants in every record)."""

from __future__ import annotations

import logging
import textwrap
import threading
import time

import pytest

from bench import plugins
from bench.backends import devices as backends
from bench.runner import build_jobs, run_jobs

# A method that runs out of GPU memory above MAX_BATCH (torch.cuda.OutOfMemoryError, raised on the
# CPU), one that does without a batch size, and one that declares its GPU memory and takes a while.
FAKES = '''
import os
import time
from pathlib import Path

import numpy as np
import torch

from bench.api import Method
from bench.data import FEATURES


class _Prior(Method):
    accepts = frozenset({FEATURES})
    citation = "a test method"

    def predict_scores(self, data):
        return np.tile(self.prior_, (data.n_samples, 1))


class Greedy(_Prior):
    name = "greedy"
    MAX_BATCH = 16

    def __init__(self, batch_size: int = 64, device: str = "auto"):
        self.batch_size = batch_size
        self.device = device

    def fit(self, train, val=None):
        if self.batch_size > self.MAX_BATCH:
            raise torch.cuda.OutOfMemoryError(f"CUDA out of memory. Tried to allocate {self.batch_size} MiB")
        self.prior_ = train.Y.mean(axis=0)
        return self


class Batchless(Greedy):
    name = "batchless"

    def __init__(self, device: str = "auto"):
        self.device = device

    def fit(self, train, val=None):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory.")


class Tenant(_Prior):
    name = "tenant"
    gpu_memory_mb = 300

    def __init__(self, device: str = "auto", random_state: int = 0):
        self.device = device
        self.random_state = random_state

    def fit(self, train, val=None):
        # wait (at most 20 s) until the other job has started too: the two run at the same time
        here = Path(__file__).parent
        (here / f"started-{os.getpid()}").touch()
        deadline = time.monotonic() + 20
        while len(list(here.glob("started-*"))) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        self.prior_ = train.Y.mean(axis=0)
        return self
'''


@pytest.fixture
def fakes(isolated):
    (isolated / "methods" / "fakes.py").write_text(textwrap.dedent(FAKES))
    plugins.load.cache_clear()


def jobs(tmp_path, method, overrides=None, folds=2):
    return build_jobs([method], ["tiny"], protocol="kfold", n_folds=folds, seeds=None, overrides=overrides or {},
                      data_root=tmp_path / "data", store_root=tmp_path / "results")


def test_out_of_memory_retries_once_at_half_the_batch_size(fakes, tmp_path, caplog):
    fits_at_half = jobs(tmp_path, "greedy", {"batch_size": 32})
    never_fits = jobs(tmp_path, "greedy", {"batch_size": 64})
    no_batch = jobs(tmp_path, "batchless")
    others = jobs(tmp_path, "br")
    with caplog.at_level(logging.WARNING, logger="bench.runner"):
        summary = run_jobs(fits_at_half + never_fits + no_batch + others, device="cpu", progress=False)
    assert summary.ran == 8 and len(summary.failures) == 4
    done = {r["job_id"]: r for r in summary.records}
    for job in fits_at_half:  # retried at 16, stored under the job's identity with what it was fitted with
        assert done[job.job_id]["fitted_with"] == {"batch_size": 16}
        assert any("after running out of GPU memory" in n for n in done[job.job_id]["notes"])
    assert all(j.job_id in done for j in others)  # the other jobs went on
    errors = {f["job_id"]: f["error"] for f in summary.failures}
    for job in never_fits:
        assert errors[job.job_id] == f"{job.describe()}: CUDA out of memory at batch_size 32 (retried after 64)"
    for job in no_batch:
        assert errors[job.job_id] == f"{job.describe()}: CUDA out of memory (no batch_size to halve)"
    lines = [r.getMessage() for r in caplog.records if "out of memory" in r.getMessage()]
    assert f"{fits_at_half[0].describe()}: CUDA out of memory at batch_size 32; retrying once at batch_size 16" in lines
    assert len(lines) == 4  # one line per retried job, none for the job without a batch size


def pool(inventory, needs):
    return backends.DevicePool(inventory, needs, {}, threading.Lock())


def test_the_device_pool_places_jobs_by_declared_memory():
    p = pool({"cuda:0": 1000, "cuda:1": 1000}, {"a": 400, "b": 400, "c": 400, "big": None})
    assert [p.acquire(k) for k in ("a", "b", "c")] == ["cuda:0", "cuda:0", "cuda:1"]  # 2 x 400 fit in 90%
    assert p.co_tenants("a") == {"b"} and p.co_tenants("b") == {"a"} and p.co_tenants("c") == set()
    got = []
    waiter = threading.Thread(target=lambda: got.append(p.acquire("big")))  # needs an empty GPU
    waiter.start()
    time.sleep(0.2)
    assert not got
    p.release("c")
    waiter.join(timeout=5)
    assert got == ["cuda:1"]
    p.release("b")
    assert p.co_tenants("a") == {"b"}, "a co-tenant that left is still recorded"
    assert p.co_tenants("big") == set()
    p2 = pool({"cuda:0": 1000}, {"lone": None, "small": 10})
    assert p2.acquire("lone") == "cuda:0"
    t = threading.Thread(target=p2.acquire, args=("small",), daemon=True)
    t.start()
    t.join(timeout=0.3)
    assert t.is_alive(), "nothing shares a GPU with a job that declared no memory"
    p2.release("lone")
    t.join(timeout=5)
    assert not t.is_alive()


def test_small_jobs_share_a_gpu_and_records_name_device_and_co_tenants(fakes, tmp_path, monkeypatch):
    """Two workers, two jobs of 300 MB on a fake 1,000 MB GPU, each waiting for the other to start:
    they run together on cuda:0, each record naming the device and the job it shared it with."""
    monkeypatch.setattr(backends, "gpu_inventory", lambda: {"cuda:0": 1000})
    summary = run_jobs(jobs(tmp_path, "tenant", folds=2), device="cuda", n_jobs=2, progress=False)
    assert not summary.failures and summary.ran == 2
    first, second = summary.records
    for rec, other in ((first, second), (second, first)):
        env = rec["environment"]
        assert env["device"] == "cuda:0" and env["gpu_memory_declared_mb"] == 300
        assert env["co_tenants"] == [other["job_id"]]


def test_cpu_fallback_without_a_gpu(monkeypatch):
    monkeypatch.setattr(backends, "gpu_inventory", lambda: {})
    assert backends.resolve_device("auto", needs_torch=True) == "cpu"
    with pytest.raises(Exception, match="no CUDA device"):
        backends.resolve_device("cuda", needs_torch=True)
