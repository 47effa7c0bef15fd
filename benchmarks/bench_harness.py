"""What the harness costs: ``bench run --method br`` against a plain script doing the same work.

Run from the checkout: ``python benchmarks/bench_harness.py [--repeats 3] [--datasets yeast,mnist-mosaic]``.

For each dataset, each repeat runs, one after the other, in fresh processes timed from start to
exit (Python start-up and imports included):

* ``bench run --method br --dataset D --no-progress --no-mlflow`` into a fresh results folder: 10-fold
  iteratively stratified CV, thread limits chosen by the harness, results stored, tables written;
* the plain script (``--plain D``, below): the same data, the same ``MultilabelStratifiedKFold``
  folds, the same estimator (standardise, then one logistic regression per label), scikit-learn's
  metrics (the ten of them it has; their time is shown apart, as "plain: metrics": scikit-learn's
  label-ranking average precision loops over examples in Python), under the thread limit the
  harness recorded (so the ratio measures the harness, not a thread setting); the test scores it
  computes are checked against the harness's stored ones;
* ``bench run`` with MLflow into a results folder whose MLflow database exists (an earlier, untimed
  run of other jobs made it), and with MLflow into a fresh folder (a new SQLite database: MLflow's
  migrations included).

It prints the median wall times, the ratios to the plain script, the thread limit, and the
machine's load average before and after each dataset (timings on a shared machine depend on it).
``--default-threads`` also times the plain script with the libraries' own thread pools.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
FOLDS, SEED = 10, 0
#: (column label, MLflow on, the results folder holds an MLflow database already)
HARNESS_RUNS = [("bench", False, False), ("bench+MLflow", True, True), ("bench+MLflow, new db", True, False)]


# ----------------------------------------------------------------------------- the plain script
def plain_features(dataset: str) -> tuple[np.ndarray, np.ndarray]:
    """The dataset's feature views side by side and its labels, read without the harness."""
    if dataset == "yeast":
        import pandas as pd
        from river.datasets import Yeast

        table = pd.read_csv(Yeast().path)
        X = table[[c for c in table.columns if c.startswith("Att")]].to_numpy(np.float32)
        return X, table[[c for c in table.columns if c.startswith("Class")]].to_numpy(np.uint8)
    if dataset == "mnist-mosaic":  # its recipe lives in the dataset file: run it, nothing else
        import importlib.util

        spec = importlib.util.spec_from_file_location("mnist_mosaic", ROOT / "datasets" / "mnist_mosaic.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # its dataclasses look their module up
        spec.loader.exec_module(module)
        mosaic = module.build_mosaic()
        return np.concatenate(list(mosaic.views.values()), axis=1), mosaic.Y
    raise SystemExit(f"no plain reader for {dataset!r}")


def plain_run(dataset: str, threads: int | None) -> dict:
    """Ten folds of binary relevance, scored with scikit-learn: per fold the test indices, scores and
    metrics, and the seconds spent in the metrics."""
    import contextlib

    from iterstrat.ml_stratifiers import MultilabelStratifiedKFold
    from sklearn import metrics
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.multiclass import OneVsRestClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from threadpoolctl import threadpool_limits

    X, Y = plain_features(dataset)
    folds, metrics_s = [], 0.0
    with threadpool_limits(threads) if threads else contextlib.nullcontext():
        cv = MultilabelStratifiedKFold(n_splits=FOLDS, shuffle=True, random_state=SEED)
        for train, test in cv.split(np.zeros((len(Y), 1)), Y):
            model = make_pipeline(StandardScaler(), OneVsRestClassifier(
                LogisticRegression(C=1.0, max_iter=1000, random_state=SEED)))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                model.fit(X[train], Y[train])
            scores = model.predict_proba(X[test])
            y, pred = Y[test], (scores >= 0.5).astype(np.uint8)
            start = time.perf_counter()
            folds.append({"test": test.tolist(), "scores": scores.tolist(), "metrics": {
                "hamming_loss": metrics.hamming_loss(y, pred),
                "ranking_loss": metrics.label_ranking_loss(y, scores),
                "one_error": float(np.mean(y[np.arange(len(y)), scores.argmax(axis=1)] == 0)),
                "coverage": metrics.coverage_error(y, scores) - 1,
                "average_precision": metrics.label_ranking_average_precision_score(y, scores),
                "subset_accuracy": metrics.accuracy_score(y, pred),
                "micro_f1": metrics.f1_score(y, pred, average="micro", zero_division=0),
                "macro_f1": metrics.f1_score(y, pred, average="macro", zero_division=0),
                "example_f1": metrics.f1_score(y, pred, average="samples", zero_division=0),
                "mAP": metrics.average_precision_score(y, scores, average="macro"),
            }})
            metrics_s += time.perf_counter() - start
    return {"folds": folds, "metrics_s": metrics_s}


# ----------------------------------------------------------------------------- timing
def timed(argv: list[str], env: dict) -> float:
    start = time.perf_counter()
    out = subprocess.run(argv, env=env, cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if out.returncode:
        raise SystemExit(f"{' '.join(argv)} failed ({out.returncode}):\n{out.stderr[-2000:]}")
    return seconds


def bench_env(results: Path, mlflow: bool) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("BENCH_THREADS", "MLFLOW_TRACKING_URI")}
    env.update(PYTHONPATH=str(ROOT), BENCH_RESULTS=str(results / "results"), BENCH_REPORTS=str(results / "reports"),
               BENCH_MLFLOW="1" if mlflow else "0")
    return env


def harness_run(dataset: str, folder: Path, mlflow: bool, database_exists: bool) -> float:
    env = bench_env(folder, mlflow)
    command = [sys.executable, "-m", "bench.cli", "run", "--method", "br", "--dataset", dataset, "--no-progress"]
    if database_exists:  # other jobs (seed 1, 2 folds) logged first, untimed
        timed(command + ["--folds", "2", "--seeds", "1"], env)
    return timed(command + ([] if mlflow else ["--no-mlflow"]), env)


def stored(folder: Path, dataset: str) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((folder / "results" / dataset / "br").glob("*.json"))]


def check_same_work(folder: Path, dataset: str, plain_file: Path) -> float:
    """The largest difference between the harness's stored test scores and the plain script's."""
    by_test = {tuple(f["test"]): np.asarray(f["scores"]) for f in json.loads(plain_file.read_text())["folds"]}
    worst = 0.0
    for record in stored(folder, dataset):
        with np.load(folder / "results" / dataset / "br" / f"{record['job_id']}.npz") as arrays:
            key = tuple(np.sort(arrays["test_index"]).tolist())
            if key not in by_test:
                raise SystemExit(f"{dataset}: a harness fold has no plain-script fold with the same test part")
            order = np.argsort(arrays["test_index"])
            worst = max(worst, float(np.abs(arrays["scores"][order] - by_test[key]).max()))
    return worst


def measure(dataset: str, repeats: int, default_threads: bool) -> dict:
    times: dict[str, list[float]] = {}
    threads, worst = None, 0.0
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as tmp:
            for label, mlflow, database_exists in HARNESS_RUNS:
                folder = Path(tmp) / label.replace(" ", "_").replace(",", "")
                times.setdefault(label, []).append(harness_run(dataset, folder, mlflow, database_exists))
                if label == "bench":
                    base = folder
                    threads = {r["environment"]["threads"]["limit"] for r in stored(folder, dataset)}.pop()
                    plain_file = Path(tmp) / "plain.json"
                    plain = [sys.executable, __file__, "--plain", dataset, "--threads", str(threads),
                             "--out", str(plain_file)]
                    times.setdefault("plain", []).append(timed(plain, bench_env(folder, False)))
                    worst = max(worst, check_same_work(base, dataset, plain_file))
                    times.setdefault("plain: metrics", []).append(json.loads(plain_file.read_text())["metrics_s"])
                    if default_threads:
                        plain_default = [sys.executable, __file__, "--plain", dataset, "--out", str(plain_file)]
                        times.setdefault("plain, default threads", []).append(
                            timed(plain_default, bench_env(folder, False)))
    return {"times": {k: statistics.median(v) for k, v in times.items()}, "threads": threads, "worst": worst}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--datasets", default="yeast,mnist-mosaic")
    parser.add_argument("--default-threads", action="store_true",
                        help="also time the plain script with the libraries' default thread pools")
    parser.add_argument("--plain", metavar="DATASET", help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.plain:
        args.out.write_text(json.dumps(plain_run(args.plain, args.threads)))
        return

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else ""
    print(f"machine: {cpu or platform.machine()}, {os.cpu_count()} CPUs; Python {platform.python_version()}; "
          f"{args.repeats} repeats, medians; {FOLDS}-fold CV, br")
    columns = ["plain", "plain: metrics", *(label for label, _, _ in HARNESS_RUNS)]
    if args.default_threads:
        columns.insert(2, "plain, default threads")
    print("| dataset | threads | " + " | ".join(f"{c} s" for c in columns)
          + " | bench / plain | bench+MLflow / plain | load before, after | max |Δ score| |")
    print("|---" * (len(columns) + 6) + "|")
    for dataset in args.datasets.split(","):
        before = os.getloadavg()[0]
        result = measure(dataset, args.repeats, args.default_threads)
        after = os.getloadavg()[0]
        t = result["times"]
        cells = [f"{t[c]:.1f}" for c in columns]
        print(f"| {dataset} | {result['threads']} | " + " | ".join(cells)
              + f" | {t['bench'] / t['plain']:.2f} | {t['bench+MLflow'] / t['plain']:.2f} | {before:.1f}, {after:.1f}"
              + f" | {result['worst']:.1e} |", flush=True)


if __name__ == "__main__":
    main()
