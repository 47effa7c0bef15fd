"""Discovery of method and dataset plug-ins.

Plug-ins are plain ``.py`` files in the project's ``methods/`` and ``datasets/`` folders (and in
any extra folder listed in ``BENCH_PLUGIN_PATH``), read the way benchopt reads a benchmark's
``solvers/`` and ``datasets/``: each file is imported under the private name
``bench_plugins.<kind>.<file>``, so nothing is ever installed as a top-level ``methods`` or
``datasets`` package (which would shadow Hugging Face's ``datasets``). Dropping a file into
``methods/`` is all it takes for ``bench list`` to show a new method.
"""

from __future__ import annotations

import functools
import importlib.util
import inspect
import logging
import os
import sys
from pathlib import Path

from bench.api import Dataset, Method
from bench.errors import BenchError

log = logging.getLogger(__name__)

KINDS = {"methods": Method, "datasets": Dataset}


def project_root() -> Path:
    """The folder holding ``methods/``, ``datasets/``, ``results/`` and ``reports/``.

    ``BENCH_ROOT`` wins; otherwise the checkout this package lives in (editable install), and
    failing that the current directory.
    """
    if os.environ.get("BENCH_ROOT"):
        return Path(os.environ["BENCH_ROOT"]).resolve()
    checkout = Path(__file__).resolve().parents[1]
    if (checkout / "methods").is_dir():
        return checkout
    return Path.cwd().resolve()


def plugin_dirs(kind: str) -> list[Path]:
    extra = [Path(p) / kind for p in os.environ.get("BENCH_PLUGIN_PATH", "").split(os.pathsep) if p]
    dirs = [*extra, project_root() / kind]
    return list(dict.fromkeys(d.resolve() for d in dirs if d.is_dir()))


def _import_file(kind: str, path: Path):
    module_name = f"bench_plugins.{kind}.{path.stem}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # a broken user file must not hide every other plug-in
        del sys.modules[module_name]
        log.warning("skipping plug-in %s: %s: %s", path, type(exc).__name__, exc)
        return None
    return module


@functools.cache
def load(kind: str) -> dict[str, type]:
    """All plug-in classes of ``kind`` ("methods" or "datasets"), by their ``name``."""
    base = KINDS[kind]
    found: dict[str, type] = {}
    for folder in plugin_dirs(kind):
        for path in sorted(folder.glob("*.py")):
            if path.name.startswith("_"):
                continue
            module = _import_file(kind, path)
            if module is None:
                continue
            for _, cls in inspect.getmembers(module, inspect.isclass):
                # A plug-in names itself; an intermediate base class that inherits a name does not.
                if not (issubclass(cls, base) and cls.__module__ == module.__name__ and cls.__dict__.get("name")):
                    continue
                if cls.name in found:
                    log.warning("plug-in name %r in %s already defined; keeping the first", cls.name, path)
                    continue
                found[cls.name] = cls
    return dict(sorted(found.items()))


def get(kind: str, name: str) -> type:
    registry = load(kind)
    if name not in registry:
        singular = kind.rstrip("s")
        raise BenchError(f"unknown {singular} {name!r}; known: {', '.join(registry) or 'none'}")
    return registry[name]


def resolve_names(kind: str, spec: str) -> list[str]:
    """Expand a CLI list such as ``"br,rmlc"`` or ``"all"`` into known plug-in names."""
    if spec == "all":
        return list(load(kind))
    names = [s.strip() for s in spec.split(",") if s.strip()]
    for name in names:
        get(kind, name)
    return names
