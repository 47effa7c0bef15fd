"""The import-linter contracts (pyproject.toml, run by `.ci/run`) cover every module of the core: a
module left out of the layers would be free to import anything above it."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _layers() -> list[str]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    (contract,) = [c for c in config["contracts"] if c["type"] == "layers"]
    return contract["layers"]


def test_every_module_of_the_core_sits_in_one_layer():
    named = [m for layer in _layers() for m in re.split(r"\s*[|:]\s*", layer.strip())]
    top_level = {p.stem if p.is_file() else p.name for p in (ROOT / "bench").iterdir()
                 if (p.suffix == ".py" and p.stem != "__init__") or (p / "__init__.py").is_file()}
    assert sorted(named) == sorted(f"bench.{m}" for m in top_level)  # each once, none missing


def test_ci_runs_the_contracts():
    assert ".venv/bin/lint-imports" in (ROOT / ".ci" / "run").read_text().splitlines()
