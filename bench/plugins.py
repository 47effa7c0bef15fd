"""Discovery of method and dataset plug-ins.

Plug-ins are plain ``.py`` files in the project's ``methods/`` and ``datasets/`` folders (and in
any extra folder listed in ``BENCH_PLUGIN_PATH``), read the way benchopt reads a benchmark's
``solvers/`` and ``datasets/``: each file is imported under the private name
``bench_plugins.<kind>.<file>``, so nothing is ever installed as a top-level ``methods`` or
``datasets`` package (which would shadow Hugging Face's ``datasets``). Dropping a file into
``methods/`` is all it takes for ``bench list`` to show a new method.

Discovery reads the files' source, it does not run them: a method file imports torch at module
level, and ``bench list`` or a ``br`` run should not pay for that (1-2 s and ~600 MiB). A plug-in
class is a top-level ``class`` statement that sets ``name`` to a string in its body and derives,
through classes of the same file or of ``bench`` modules (also read from source), from
:class:`bench.api.Method` or :class:`bench.api.Dataset`. Its plain class attributes (``name``,
``accepts``, ``citation``, ``ablation_of``, ``description``, ``embedded``, ``protocol``,
``metric_set``, ``scale_defaults`` ...) are evaluated from the source when they are literals,
``frozenset({FEATURES})``-style calls, names of constants or ``OtherClass.attr`` references, and
string sums. The file itself is imported when a class is used (:func:`get`) or when an attribute
is asked for that the source does not give as such (a method, an inherited library attribute).

A file whose classes cannot be told apart from the source (a base class from another package
with a ``name`` set, a computed ``name``) is imported at discovery, as before. A file that does
not parse, or that fails when imported for discovery, is skipped with a warning; one that fails
when a class of it is used is a one-line error naming it. Either way the other plug-ins stay.
"""

from __future__ import annotations

import ast
import functools
import importlib.util
import inspect
import logging
import os
import sys
from pathlib import Path

from bench.data import MultiLabelData
from bench.errors import BenchError, one_line

log = logging.getLogger(__name__)

#: The base class of each kind, as (module, class name): read from source, never imported here.
KINDS = {"methods": ("bench.api", "Method"), "datasets": ("bench.api", "Dataset")}


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


# ------------------------------------------------------------------------------ reading source
class NotStatic(Exception):
    """The source does not give this value as such: the file must be imported to know it."""


class ModuleSource:
    """A parsed module: its top-level classes, constant assignments and ``from`` imports."""

    def __init__(self, name: str, path: Path, tree: ast.Module):
        self.name, self.path = name, path
        self.classes: dict[str, ClassSource] = {}
        self.values: dict[str, ast.expr] = {}
        self.imports: dict[str, tuple[str, str]] = {}
        for node in tree.body:
            if isinstance(node, ast.ClassDef):
                self.classes[node.name] = ClassSource(self, node)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                for alias in node.names:
                    self.imports[alias.asname or alias.name] = (node.module, alias.name)
            else:
                for target, value in _assignments(node):
                    self.values[target] = value

    def lookup(self, name: str):
        """A module-level name: a :class:`ClassSource`, or a value; :class:`NotStatic` otherwise."""
        if name in self.classes:
            return self.classes[name]
        if name in self.values:
            return evaluate(self.values[name], self.lookup)
        if name in self.imports:
            module, attr = self.imports[name]
            source = bench_module(module)
            if source is not None:
                return source.lookup(attr)
        if name in _BUILTINS:
            return _BUILTINS[name]
        raise NotStatic(name)


class ClassSource:
    """One ``class`` statement; attribute lookup through its bases, all read from source."""

    def __init__(self, module: ModuleSource, node: ast.ClassDef):
        self.module, self.node, self.qualname = module, node, node.name
        self.body: dict[str, ast.expr | None] = {}  # None: bound, but not by a plain assignment
        # A body with statements other than definitions (an ``if``, a loop) may bind anything.
        self.opaque = bool(node.decorator_list) or not all(isinstance(s, _PLAIN_STATEMENTS) for s in node.body)
        for stmt in node.body:
            pairs = _assignments(stmt)
            for target, value in pairs:
                self.body[target] = value
            if not pairs:
                for target in _bound_names(stmt):
                    self.body[target] = None

    @property
    def key(self) -> tuple[str, str]:
        return self.module.name, self.qualname

    @functools.cached_property
    def bases(self) -> list[ClassSource] | None:
        """The base classes, or None when one of them is not known from source."""
        out = []
        for base in self.node.bases:
            try:
                found = evaluate(base, self.module.lookup)
            except NotStatic:
                return None
            if not isinstance(found, ClassSource):
                return None
            out.append(found)
        return out

    def derives_from(self, root: tuple[str, str]) -> bool | None:
        """True / False, or None when the chain leaves the code that can be read."""
        if self.key == root:
            return True
        if self.bases is None:
            return None
        answers = [base.derives_from(root) for base in self.bases]
        return True if True in answers else None if None in answers else False

    def attr(self, name: str):
        """The value of class attribute ``name`` (own or inherited); :class:`NotStatic` when the
        source does not give it as a plain value."""
        if self.opaque:
            raise NotStatic(name)
        if name in self.body:
            value = self.body[name]
            if value is None:
                raise NotStatic(name)
            return evaluate(value, self._scope)
        if not self.bases or len(self.bases) > 1:  # unknown, a library base, or an MRO to compute
            raise NotStatic(name)
        return self.bases[0].attr(name)

    def _scope(self, name: str):
        # Class-body names (``citation = X.citation + ...``) then the module's.
        if name in self.body and self.body[name] is not None:
            return evaluate(self.body[name], self.module.lookup)
        return self.module.lookup(name)


_PLAIN_STATEMENTS = (ast.Expr, ast.Assign, ast.AnnAssign, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef,
                     ast.Pass)
_BUILTINS = {"frozenset": frozenset, "set": set, "tuple": tuple, "list": list, "dict": dict}


def evaluate(node: ast.expr, lookup):
    """A constant expression of class-attribute shape; :class:`NotStatic` for anything else."""
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.Name):
        return lookup(node.id)
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
        owner = lookup(node.value.id)
        if isinstance(owner, ClassSource):
            return owner.attr(node.attr)
        raise NotStatic(node.attr)
    if isinstance(node, ast.Tuple | ast.List | ast.Set):
        items = [evaluate(e, lookup) for e in node.elts]
        return {ast.Tuple: tuple, ast.List: list, ast.Set: set}[type(node)](items)
    if isinstance(node, ast.Dict) and None not in node.keys:
        return {evaluate(k, lookup): evaluate(v, lookup) for k, v in zip(node.keys, node.values, strict=True)}
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        left, right = evaluate(node.left, lookup), evaluate(node.right, lookup)
        if type(left) is type(right) and isinstance(left, str | tuple | int | float):
            return left + right
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        value = evaluate(node.operand, lookup)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return -value
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and len(node.args) <= 1:
        func = lookup(node.func.id)
        kwargs = {k.arg: evaluate(k.value, lookup) for k in node.keywords if k.arg}
        if func in _BUILTINS.values() and len(kwargs) == len(node.keywords) and (func is dict or not kwargs):
            return func(*(evaluate(a, lookup) for a in node.args), **kwargs)
    raise NotStatic(ast.dump(node)[:60])


def _assignments(stmt: ast.stmt) -> list[tuple[str, ast.expr]]:
    if isinstance(stmt, ast.Assign):
        return [(t.id, stmt.value) for t in stmt.targets if isinstance(t, ast.Name)]
    if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name) and stmt.value is not None:
        return [(stmt.target.id, stmt.value)]
    return []


def _bound_names(stmt: ast.stmt) -> list[str]:
    if isinstance(stmt, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
        return [stmt.name]
    if isinstance(stmt, ast.Assign | ast.AugAssign | ast.AnnAssign):
        targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
        return [n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)]
    return []


def parse(path: Path, module_name: str) -> ModuleSource:
    return ModuleSource(module_name, path, ast.parse(path.read_bytes(), filename=str(path)))


@functools.cache
def bench_module(name: str) -> ModuleSource | None:
    """The source of a ``bench.*`` module (read, not imported); None for any other module."""
    if name != "bench" and not name.startswith("bench."):
        return None
    spec = importlib.util.find_spec(name)  # the parent package `bench` is imported already
    if spec is None or not spec.origin or not spec.origin.endswith(".py"):
        return None
    return parse(Path(spec.origin), name)


# ------------------------------------------------------------------------------ the registry
class PluginFile:
    """One plug-in file, imported at most once, when one of its classes is first used."""

    def __init__(self, kind: str, path: Path):
        self.kind, self.path = kind, path
        self.module_name = f"bench_plugins.{kind}.{path.stem}"
        self._module = None

    def module(self):
        if self._module is None:
            spec = importlib.util.spec_from_file_location(self.module_name, self.path)
            module = importlib.util.module_from_spec(spec)
            sys.modules[self.module_name] = module
            try:
                spec.loader.exec_module(module)
            except BaseException as exc:
                del sys.modules[self.module_name]
                if not isinstance(exc, Exception):
                    raise
                raise BenchError(f"plug-in file {self.path} failed to import: "
                                 f"{one_line(exc, with_type=True)}") from None
            self._module = module
        return self._module


class Plugin:
    """A registered plug-in class, known by its source until it is used.

    ``plugin.citation``, ``plugin.accepts`` ... come from the source where it gives them as plain
    values; any other attribute, and :meth:`load`, import the file and read the class itself.
    """

    def __init__(self, name: str, file: PluginFile, source: ClassSource | None = None, cls: type | None = None):
        self.name, self.file, self._source, self._cls = name, file, source, cls

    @property
    def kind(self) -> str:
        return self.file.kind

    @property
    def path(self) -> Path:
        return self.file.path

    @property
    def is_loaded(self) -> bool:
        return self._cls is not None

    def load(self) -> type:
        """The class itself (the file is imported on first use)."""
        if self._cls is None:
            cls = getattr(self.file.module(), self._source.qualname, None)
            if not isinstance(cls, type) or cls.__dict__.get("name") != self.name:
                raise BenchError(f"plug-in file {self.path}: class {self._source.qualname} with name "
                                 f"{self.name!r} not found after import")
            self._cls = cls
        return self._cls

    def __getattr__(self, attr: str):
        if attr.startswith("__"):
            raise AttributeError(attr)
        if self._cls is None:
            try:
                return self._source.attr(attr)
            except NotStatic:
                pass
        return getattr(self.load(), attr)

    def __repr__(self) -> str:
        return f"<{self.kind[:-1]} plug-in {self.name!r} from {self.path}>"


def _scan_file(kind: str, path: Path) -> list[Plugin]:
    """The plug-ins a file defines, from its source; imports it only when the source cannot say."""
    file = PluginFile(kind, path)
    try:
        module = parse(path, file.module_name)
    except (SyntaxError, ValueError, OSError) as exc:
        log.warning("skipping plug-in %s: %s", path, one_line(exc, with_type=True))
        return []
    found, uncertain = [], False
    for cls in module.classes.values():
        if "name" not in cls.body:
            continue  # a plug-in names itself in its body; helpers and bases do not
        derives = cls.derives_from(KINDS[kind])
        if cls.opaque and derives is not False:
            uncertain = True
            continue
        try:
            name = cls.attr("name")
        except NotStatic:
            uncertain = uncertain or derives is not False
            continue
        if derives is None:
            uncertain = True
        elif derives and isinstance(name, str) and name:
            found.append(Plugin(name, file, source=cls))
    return _import_for_discovery(file) if uncertain else found


def _import_for_discovery(file: PluginFile) -> list[Plugin]:
    """The fallback: import the file and inspect its classes."""
    try:
        module = file.module()
    except BenchError as exc:
        log.warning("skipping %s", exc)
        return []
    base_module, base_name = KINDS[file.kind]
    base = getattr(importlib.import_module(base_module), base_name)
    return [Plugin(cls.__dict__["name"], file, cls=cls) for _, cls in inspect.getmembers(module, inspect.isclass)
            if issubclass(cls, base) and cls.__module__ == module.__name__ and cls.__dict__.get("name")]


@functools.cache
def load(kind: str) -> dict[str, Plugin]:
    """All plug-ins of ``kind`` ("methods" or "datasets"), by their ``name``, read from source.

    ``load(kind)[name].attr`` gives a plug-in's class attributes; :func:`get` gives the class.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown plug-in kind {kind!r}")
    found: dict[str, Plugin] = {}
    for folder in plugin_dirs(kind):
        for path in sorted(folder.glob("*.py")):
            if path.name.startswith("_"):
                continue
            for plugin in _scan_file(kind, path):
                if plugin.name in found:
                    log.warning("plug-in name %r in %s already defined in %s; keeping the first",
                                plugin.name, path, found[plugin.name].path)
                    continue
                found[plugin.name] = plugin
    return dict(sorted(found.items()))


def use_plugin_path(path: str) -> bool:
    """Make ``path`` this process's ``BENCH_PLUGIN_PATH`` (a reused worker process keeps the one it
    started with); True, and the registry forgotten, when it changed."""
    if os.environ.get("BENCH_PLUGIN_PATH", "") == path:
        return False
    os.environ["BENCH_PLUGIN_PATH"] = path
    load.cache_clear()
    return True


def info(kind: str, name: str) -> Plugin:
    """The registered plug-in ``name`` (not imported), or a one-line error listing the known ones."""
    registry = load(kind)
    if name not in registry:
        singular = kind.rstrip("s")
        raise BenchError(f"unknown {singular} {name!r}; known: {', '.join(registry) or 'none'}")
    return registry[name]


def get(kind: str, name: str) -> type:
    """The plug-in class ``name``; its file is imported now if it was not before."""
    return info(kind, name).load()


@functools.lru_cache(maxsize=2)
def load_dataset(name: str, data_root: str) -> MultiLabelData:
    """The dataset plug-in ``name``'s data under ``data_root``, loaded once per process (a worker
    runs many folds of the same dataset; the plan, the worker and the results layer all read it)."""
    data = get("datasets", name)().load(Path(data_root))
    if not isinstance(data, MultiLabelData):
        raise BenchError(f"dataset plug-in {name!r} returned {type(data).__name__}, expected MultiLabelData")
    return data


def resolve_names(kind: str, spec: str) -> list[str]:
    """Expand a CLI list such as ``"br,rmlc"`` or ``"all"`` into known plug-in names (in order,
    each once); an empty list is an error."""
    if spec.strip() == "all":
        return list(load(kind))
    names = list(dict.fromkeys(s.strip() for s in spec.split(",") if s.strip()))
    if not names:
        raise BenchError(f"no {kind[:-1]} given (got {spec!r}); see `bench list`")
    for name in names:
        info(kind, name)
    return names
