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


def test_plug_ins_import_only_the_shared_layers():
    """methods/ and datasets/ are plug-in folders, not packages, so import-linter cannot see them:
    their files import from the layer of the shared training and data modules (bench.deep's) down,
    never the run side, the results layer or the CLI."""
    import ast

    layers = _layers()
    shared = next(i for i, layer in enumerate(layers) if "bench.deep" in layer)
    allowed = {m for layer in layers[shared:] for m in re.split(r"\s*[|:]\s*", layer.strip())}
    imported = {}
    for path in sorted([*(ROOT / "methods").glob("*.py"), *(ROOT / "datasets").glob("*.py")]):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([node.module] if isinstance(node, ast.ImportFrom) and node.module and not node.level
                     else [a.name for a in node.names] if isinstance(node, ast.Import) else [])
            for name in names:
                if name.split(".")[0] == "bench":
                    imported.setdefault(".".join(name.split(".")[:2]), []).append(path.name)
    assert imported, "no plug-in imports the core?"
    assert {m: files for m, files in imported.items() if m not in allowed} == {}
