"""The cross-validation orchestrator: (method, dataset, protocol, split, hyper-parameters) -> job.

Every job is independent and has a stable id, the hash of its full configuration (method and all
its identity hyper-parameters, dataset and its fingerprint, protocol, fold, seed and the digest of
the split's indices). Jobs already in the results store are skipped, so an interrupted command
resumes where it stopped; ``force`` re-runs them.

Jobs run through joblib: in-process for ``n_jobs=1``, otherwise in loky worker processes. A job
carries only plain data (names, parameters, indices); the worker re-reads the plug-in by name, so
no dynamically imported class ever needs pickling. Each worker writes its own result files
(atomically, one job per file pair) and returns the record to the orchestrator. On a machine with
GPUs, ``device="cuda"`` hands each running job one GPU token from a shared queue, so no two jobs
share a GPU unless there are more workers than GPUs.
"""

from __future__ import annotations

import ast
import contextlib
import functools
import hashlib
import json
import logging
import os
import platform
import random
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from bench import image_features, plugins
from bench.api import EXECUTION_PARAMS, Method
from bench.data import MultiLabelData
from bench.errors import BenchError
from bench.metrics import evaluate
from bench.protocols import Split, make_splits
from bench.store import ResultStore

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- hyper-parameters
def parse_overrides(pairs: list[str]) -> dict[str, object]:
    """``["lr=0.01", "rmlc.hidden=128", "pretrained=false"]`` -> typed values.

    Values are Python literals where they parse as one (``0.01``, ``(1, 2)``, ``'a'``), the words
    true/false/none in any case, and plain strings otherwise. A ``method.`` prefix scopes a key to
    one method when several run together.
    """
    out: dict[str, object] = {}
    words = {"true": True, "false": False, "none": None}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise BenchError(f"--set expects key=value, got {pair!r}")
        raw = raw.strip()
        if raw.lower() in words:
            value = words[raw.lower()]
        else:
            try:
                value = ast.literal_eval(raw)
            except (ValueError, SyntaxError):
                value = raw
        out[key.strip()] = value
    return out


def resolve_params(cls: type[Method], overrides: dict[str, object]) -> tuple[dict, dict]:
    """The method's full hyper-parameters and the overrides that apply to it (checked beforehand
    by :func:`check_overrides`)."""
    defaults = cls().get_params(deep=False)
    applied = {}
    # Unscoped values first, so ``method.key`` wins for its method whatever the order on the line.
    for key, value in sorted(overrides.items(), key=lambda kv: "." in kv[0]):
        scope, _, name = key.rpartition(".")
        if scope in ("", cls.name) and name in defaults:
            applied[name] = value
    return {**defaults, **applied}, applied


def check_overrides(overrides: dict, classes: list[type[Method]]) -> None:
    """Every ``--set`` key must name a hyper-parameter of a selected method (of that method, when
    scoped as ``method.key``), so a typo never silently runs the defaults."""
    params = {cls.name: set(cls().get_params(deep=False)) for cls in classes}
    for key in overrides:
        scope, _, name = key.rpartition(".")
        if scope and scope not in params:
            raise BenchError(f"--set {key}: method {scope!r} is not among the selected ({', '.join(params)})")
        if scope and name not in params[scope]:
            raise BenchError(f"--set {key}: method {scope!r} has no hyper-parameter {name!r}; "
                             f"it has: {', '.join(sorted(params[scope]))}")
        if not scope and not any(name in p for p in params.values()):
            known = sorted(set().union(*params.values()))
            raise BenchError(f"--set {key}: no selected method has a hyper-parameter {name!r}; known: {', '.join(known)}")


# --------------------------------------------------------------------------- jobs
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
    threads: int = 0  # torch threads in a CPU worker (0: leave torch's default)
    views_file: str = ""  # derived feature views extracted by the orchestrator (image_features)
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
        digest = hashlib.sha256(json.dumps(config, sort_keys=True, default=repr).encode()).hexdigest()
        object.__setattr__(self, "config", config)
        object.__setattr__(self, "job_id", digest[:16])

    def describe(self) -> str:
        return f"{self.method} on {self.dataset} ({self.split.protocol} seed {self.split.seed} fold {self.split.fold})"


@functools.lru_cache(maxsize=2)
def load_dataset(name: str, data_root: str) -> MultiLabelData:
    """Load a dataset once per process (workers run many folds of the same dataset)."""
    data = plugins.get("datasets", name)().load(Path(data_root))
    if not isinstance(data, MultiLabelData):
        raise BenchError(f"dataset plug-in {name!r} returned {type(data).__name__}, expected MultiLabelData")
    return data


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    if "torch" in sys.modules:
        sys.modules["torch"].manual_seed(seed)


@functools.cache
def code_version() -> str:
    try:
        out = subprocess.run(
            ["git", "describe", "--always", "--dirty"], cwd=plugins.project_root(),
            capture_output=True, text=True, timeout=5,
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _environment(device: str) -> dict:
    env = {"python": platform.python_version(), "numpy": np.__version__, "host": platform.node(),
           "machine": platform.machine(), "cpus": os.cpu_count(), "device": device, "code": code_version()}
    torch = sys.modules.get("torch")
    if torch is not None:
        env["torch"] = torch.__version__
        if device.startswith("cuda"):
            env["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return env


def _check_outputs(method: str, scores, y_pred, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    scores = np.asarray(scores, dtype=np.float64)
    y_pred = np.asarray(y_pred)
    if scores.shape != shape:
        raise BenchError(f"method {method!r}: predict_scores returned shape {scores.shape}, expected {shape}")
    if not np.isfinite(scores).all():
        raise BenchError(f"method {method!r}: predict_scores returned NaN/inf")
    if y_pred.shape != shape or not np.isin(y_pred, (0, 1)).all():
        raise BenchError(f"method {method!r}: predict must return a 0/1 array of shape {shape}")
    return scores, y_pred.astype(np.uint8)


def execute(job: Job, device: str) -> dict:
    """Train and evaluate one job, store it, and return its record (runs in a worker)."""
    cls = plugins.get("methods", job.method)
    # An image-only dataset gets cached per-stage CNN features for a feature-only method.
    data = image_features.prepare(cls, load_dataset(job.dataset, job.data_root), job.store_root, device,
                                  views_file=job.views_file or None)
    train, test = data.subset(job.split.train), data.subset(job.split.test)
    params = dict(job.params)
    if "device" in params:
        params["device"] = device
    method = cls(**params)
    if job.threads and "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(job.threads)
    seed_everything(job.split.seed)

    notes = []
    empty = np.flatnonzero(train.Y.sum(axis=0) == 0)
    if empty.size:
        names = [data.label_names[i] for i in empty]
        notes.append(
            f"label(s) {names} have no positive example in the training part of {job.describe()}; "
            "the method sees an all-negative column (scored as it predicts; undefined test metrics are "
            "left out of macro averages and counted)"
        )

    t0 = time.perf_counter()
    method.fit(train)
    t1 = time.perf_counter()
    scores = method.predict_scores(test)
    y_pred = method.predict(test)
    t2 = time.perf_counter()
    scores, y_pred = _check_outputs(job.method, scores, y_pred, test.Y.shape)
    result = evaluate(test.Y, scores, y_pred, ignore=test.ignore)
    steps = _step_scores(job.method, method, test)

    record = {
        "job_id": job.job_id,
        "config": job.config,
        "overrides": job.overrides,
        "metrics": dict(result),
        "per_label_ap": result.per_label_ap,
        "undefined": result.undefined,
        "label_names": list(data.label_names),
        "n_train": int(train.n_samples),
        "n_test": int(test.n_samples),
        "timings": {"fit_s": t1 - t0, "predict_s": t2 - t1},
        "history": list(getattr(method, "history_", []) or []),
        "notes": notes,
        "environment": _environment(device),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    arrays = {"test_index": job.split.test, "scores": scores.astype(np.float32), "y_pred": y_pred}
    if steps is not None:
        # The metrics after each modality / step (RMLC Fig. 3), thresholded like predict's default.
        record["step_metrics"] = [dict(evaluate(test.Y, s, (s >= method.threshold).astype(np.uint8),
                                                ignore=test.ignore)) for s in steps]
        arrays["step_scores"] = steps.astype(np.float32)
    ResultStore(job.store_root).write(record, arrays)
    return record


def _step_scores(name: str, method: Method, test: MultiLabelData) -> np.ndarray | None:
    """The optional ``predict_steps`` output, checked: float [M, n, L], finite, M >= 1."""
    predict_steps = getattr(method, "predict_steps", None)
    if not callable(predict_steps):
        return None
    steps = np.asarray(predict_steps(test), dtype=np.float64)
    if steps.ndim != 3 or steps.shape[0] < 1 or steps.shape[1:] != test.Y.shape:
        raise BenchError(f"method {name!r}: predict_steps returned shape {steps.shape}, "
                         f"expected [M, {test.Y.shape[0]}, {test.Y.shape[1]}]")
    if not np.isfinite(steps).all():
        raise BenchError(f"method {name!r}: predict_steps returned NaN/inf")
    return steps


def _execute_safely(job: Job, device) -> dict:
    """Run a job in a worker; a failure comes back as a record with an ``error``."""
    token = device.get() if hasattr(device, "get") else device
    try:
        return execute(job, token)
    except BenchError as exc:
        return {"job_id": job.job_id, "job": job.describe(), "error": str(exc)}
    except Exception as exc:  # a bug in one method must not lose the other jobs' results
        return {"job_id": job.job_id, "job": job.describe(), "error": f"{type(exc).__name__}: {exc}",
                "traceback": traceback.format_exc()}
    finally:
        if hasattr(device, "put"):
            device.put(token)


# --------------------------------------------------------------------------- orchestration
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


@dataclass
class RunSummary:
    records: list[dict]
    ran: int
    skipped: int
    failures: list[dict]


def build_jobs(
    methods: list[str], datasets: list[str], *, protocol: str | None, n_folds: int,
    seeds: tuple[int, ...] | None, overrides: dict, data_root: Path, store_root: Path,
    strict: bool = True,
) -> list[Job]:
    """Every job of the grid; an incompatible (method, dataset) pair is an error when ``strict``,
    else skipped with a warning (``--method all`` over mixed datasets)."""
    classes = [plugins.get("methods", m) for m in methods]
    check_overrides(overrides, classes)
    jobs = []
    for ds_name in datasets:
        data = load_dataset(ds_name, str(data_root))
        splits = make_splits(data, protocol, n_folds, seeds)
        fingerprint = data.fingerprint()
        for cls in classes:
            try:
                image_features.check_compatible(cls, data)
            except BenchError as exc:
                if strict:
                    raise
                log.warning("skipping: %s", exc)
                continue
            params, applied = resolve_params(cls, overrides)
            for split in splits:
                seeded = {**params, "random_state": split.seed} if "random_state" in params else params
                jobs.append(Job(cls.name, ds_name, seeded, applied, split,
                                image_features.job_fingerprint(cls, data, fingerprint),
                                str(data_root), str(store_root)))
    return jobs


def run_jobs(jobs: list[Job], *, device: str = "auto", n_jobs: int = 1, force: bool = False,
             progress: bool = True, on_record=None) -> RunSummary:
    """Run the jobs not yet stored. ``on_record(record)`` is called in this (the orchestrating)
    process for each job as it finishes, e.g. to log it to MLflow; workers only return records."""
    store = ResultStore(jobs[0].store_root) if jobs else None
    done, pending = [], []
    for job in jobs:
        record = None if force else store.load(job.dataset, job.method, job.job_id)
        if record is None:
            pending.append(job)
        else:
            done.append(record)
    needs_torch = any("device" in j.params for j in pending)
    device = resolve_device(device, needs_torch)
    n_jobs = max(1, min(n_jobs if n_jobs > 0 else os.cpu_count(), len(pending) or 1))
    pending = _with_derived_views(pending, device)
    if device == "cpu" and n_jobs > 1:
        threads = max(1, (os.cpu_count() or 1) // n_jobs)
        pending = [replace(j, threads=threads) for j in pending]

    results = _dispatch(pending, device, n_jobs, progress, on_record)
    failures = [r for r in results if "error" in r]
    for rec in results:
        for note in rec.get("notes", []):
            log.warning(note)
    return RunSummary(done + [r for r in results if "error" not in r], len(pending), len(done), failures)


def _one_device(device: str) -> str:
    """The device one in-process job uses: plain "cuda" means the first GPU."""
    return "cuda:0" if device == "cuda" else device


def _with_derived_views(pending: list[Job], device: str) -> list[Job]:
    """Extract the derived feature views of each image-only dataset once, here, before any worker
    starts (feature-only methods on image datasets), and hand the jobs the cache file."""
    files: dict[tuple[str, str, str], str] = {}
    out = []
    for job in pending:
        data = load_dataset(job.dataset, job.data_root)
        if not image_features.needs_derived_features(plugins.get("methods", job.method), data):
            out.append(job)
            continue
        key = (job.data_root, job.dataset, job.store_root)
        if key not in files:
            files[key] = str(image_features.cache_views(data, job.store_root, _one_device(device)))
        out.append(replace(job, views_file=files[key]))
    return out


def _dispatch(pending: list[Job], device: str, n_jobs: int, progress: bool, on_record=None) -> list[dict]:
    if not pending:
        return []
    from joblib import Parallel, delayed
    from tqdm.auto import tqdm

    bar = tqdm(total=len(pending), desc="jobs", unit="job", disable=not progress, file=sys.stderr)
    out: list[dict] = []

    def finished(record: dict) -> None:
        out.append(record)
        bar.update()
        if on_record is not None and "error" not in record:
            on_record(record)

    if n_jobs == 1:
        tokens: object = _one_device(device)
        for job in pending:
            finished(_execute_safely(job, tokens))
        bar.close()
        return out
    with _device_tokens(device, n_jobs) as tokens:
        parallel = Parallel(n_jobs=n_jobs, return_as="generator_unordered")
        for record in parallel(delayed(_execute_safely)(job, tokens) for job in pending):
            finished(record)
    bar.close()
    return out


@contextlib.contextmanager
def _device_tokens(device: str, n_jobs: int):
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
