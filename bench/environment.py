"""Facts about the code and libraries a job ran with, recorded with each job (:mod:`bench.worker`)
and shown by ``bench --version``."""

from __future__ import annotations

import functools
import importlib.metadata
import subprocess
import sys

from bench.plugins import project_root

#: The distributions whose versions are recorded with each job when their module is imported.
LIBRARIES = {"numpy": "numpy", "scipy": "scipy", "scikit-learn": "sklearn", "iterative-stratification": "iterstrat",
             "torch": "torch", "torchvision": "torchvision", "mlflow": "mlflow", "pandas": "pandas",
             "threadpoolctl": "threadpoolctl"}


@functools.cache
def code_version() -> str:
    """``git describe --always --dirty`` of the checkout, or "unknown" outside one."""
    try:
        out = subprocess.run(
            ["git", "describe", "--always", "--dirty"], cwd=project_root(),
            capture_output=True, text=True, timeout=5,
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def library_versions() -> dict[str, str]:
    """``{distribution: version}`` of the :data:`LIBRARIES` whose module this process imported."""
    out = {}
    for dist, module in LIBRARIES.items():
        if module in sys.modules:
            try:
                out[dist] = importlib.metadata.version(dist)
            except importlib.metadata.PackageNotFoundError:
                out[dist] = str(getattr(sys.modules[module], "__version__", "unknown"))
    return out
