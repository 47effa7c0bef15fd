"""Time :func:`bench.metrics.evaluate` at COCO-like sizes and with many labels.

Run from the checkout: ``python benchmarks/bench_metrics.py``. Labels are drawn with COCO's
density (about 2.9 relevant labels per image), scores uniformly at random; each size is timed
a few times after one warm-up call and the best and median wall times are printed.
"""

import os
import platform
import statistics
import time

import numpy as np

from bench.metrics import evaluate

#: (n examples, L labels): COCO-sized runs with its 80 labels, then a many-label case.
SIZES = [(1000, 80), (10000, 80), (40000, 80), (5000, 1000)]
LABELS_PER_EXAMPLE = 2.9
REPEATS = 5


def time_evaluate(n: int, n_labels: int, seed: int = 0) -> list[float]:
    rng = np.random.default_rng(seed)
    y_true = rng.random((n, n_labels)) < LABELS_PER_EXAMPLE / n_labels
    scores = rng.random((n, n_labels))
    evaluate(y_true, scores)  # warm-up: first-call imports and allocations
    seconds = []
    for _ in range(REPEATS):
        start = time.perf_counter()
        evaluate(y_true, scores)
        seconds.append(time.perf_counter() - start)
    return seconds


def main() -> None:
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}, numpy {np.__version__}"
    )
    print(f"{'n':>7} {'L':>6} {'best s':>8} {'median s':>9}")
    for n, n_labels in SIZES:
        seconds = time_evaluate(n, n_labels)
        print(f"{n:>7} {n_labels:>6} {min(seconds):>8.3f} {statistics.median(seconds):>9.3f}")


if __name__ == "__main__":
    main()
