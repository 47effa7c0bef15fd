"""The default folders of data, results and reports: one place, below the CLI, for every module
that needs one (the CLI's options, the feature caches under the results folder)."""

from __future__ import annotations

import os
from pathlib import Path

from bench.plugins import project_root


def default_data_root() -> Path:
    return Path(os.environ.get("BENCH_DATA_ROOT") or project_root() / "data")


def default_results() -> Path:
    return Path(os.environ.get("BENCH_RESULTS") or project_root() / "results")


def default_reports() -> Path:
    return Path(os.environ.get("BENCH_REPORTS") or project_root() / "reports")
