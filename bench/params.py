"""A job's hyper-parameters: ``--set`` parsing, resolution, and validation before any job starts.

A method's hyper-parameters are its constructor arguments (defaults: the paper's values). Three
sources decide the value a job runs with, the first that gives one winning:

1. ``--set key=value`` (or ``--set method.key=value``, scoped to one method);
2. the dataset's ``scale_defaults`` (:attr:`bench.api.Dataset.scale_defaults`): the settings its
   scale calls for, e.g. a small CNN and a short schedule on the 56 x 56 ``mnist-mosaic``; keys
   scoped like ``--set``, where a scope may also name a method *family* (``order_free_rnn.backbone``
   applies to ``order_free_rnn`` and to every ablation whose ``ablation_of`` is it); they apply to a
   method only for the parameters it has, and ``bench run --paper-defaults`` switches them off;
3. the constructor's default.

``bench run --smoke`` then sets, on top of all three, the parameters of :data:`SMOKE_SCHEDULE` that a
method has (a one-epoch, two-step schedule), lowers those of :data:`SMOKE_CAPS` that are larger
(image size, batch size), and the worker keeps only the first
:data:`SMOKE_EXAMPLES` examples of each fold's training and test parts: a check that a set-up runs end to end in seconds, not a
result. A smoke job is a job of its own (``config["smoke"]``), and the results layer keeps its
records out of the real rows (:mod:`bench.results`).

Every resolved value is part of the job's identity. Before any job starts, each value given by
``--set`` or a dataset is checked against the parameter's annotation (``C: float`` refuses ``abc``
and ``true``; an integer given for a float becomes that float, so ``C=1`` is the default row
``C=1.0``), then a constructed instance is checked by the method's own validation: scikit-learn's
``_parameter_constraints`` where the class declares them, and its ``_check_params()`` hook where
it has one (under ``--smoke`` also on the values the smoke schedule replaces: ``epochs=-1 --smoke``
is refused, not hidden), then, with the dataset loaded, its ``check_data(data, n_train)`` hook where it
has one: the checks that need the dataset or a file (a beam wider than the label set, more
neighbours than the smallest training part holds, a label-embedding file read once). Any failure
is one line naming the key, the method and what was expected, before the first job.
"""

from __future__ import annotations

import ast
import collections.abc
import inspect
import sys
import types
import typing
from dataclasses import dataclass, field

from bench.errors import BenchError

WORDS = {"true": True, "false": False, "none": None}
#: ``bench run --smoke``: the tiny schedule, for the common names a method has (``bench.deep``'s
#: ``epochs``, ``steps_per_epoch``); the method conformance suite builds its tiny models on it too.
SMOKE_SCHEDULE = {"epochs": 1, "steps_per_epoch": 2}
#: ``bench run --smoke`` also caps these sizes where a method's value is larger, so that a smoke job
#: of a paper's set-up (ResNet-101 at 448 px, batches of 32: issue 29 saw no fold finish on a CPU in
#: 12 minutes) takes seconds anywhere: the same code runs on smaller images and batches. RETDM's
#: training crop (``five_crop``) is capped with them, as it must fit in the resized image.
SMOKE_CAPS = {"image_size": 64, "resize": 72, "five_crop": 64, "batch_size": 8}
#: ``bench run --smoke`` also keeps only the first this many examples of each fold's training and test
#: parts, so that prediction and validation (which the schedule does not shorten) take seconds too.
SMOKE_EXAMPLES = 96


# ----------------------------------------------------------------------------- parsing
def parse_value(raw: str):
    """A Python literal where ``raw`` is one (``0.01``, ``(1, 2)``, ``'a'``), the words
    true/false/none in any case, otherwise the string itself."""
    raw = raw.strip()
    if raw.lower() in WORDS:
        return WORDS[raw.lower()]
    try:
        return ast.literal_eval(raw)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return raw


def split_pairs(pairs: list[str], option: str = "--set", form: str = "key=value") -> dict[str, str]:
    """``["lr=0.01", "rmlc.hidden=128"]`` -> ``{"lr": "0.01", ...}`` (values unparsed) for an option
    given as ``key=...`` pairs (``--set``, ``--tune``); a malformed pair or a key given twice is an
    error (which one was meant?)."""
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise BenchError(f"{option} expects {form}, got {pair!r}")
        if key in out:
            raise BenchError(f"{option} {key} is given twice")
        out[key] = raw
    return out


def parse_overrides(pairs: list[str]) -> dict[str, object]:
    """``["lr=0.01", "rmlc.hidden=128", "pretrained=false"]`` -> ``{"lr": 0.01, ...}``."""
    return {key: parse_value(raw) for key, raw in split_pairs(pairs).items()}


# ----------------------------------------------------------------------------- resolution
def defaults(cls: type) -> dict[str, object]:
    """The constructor's arguments and their defaults (scikit-learn's ``get_params``)."""
    return cls().get_params(deep=False)


def applicable(cls: type, settings: dict[str, object], params: dict, family: bool = False) -> dict[str, object]:
    """The entries of ``settings`` (keys ``name`` or ``method.name``) that name a parameter of
    ``cls``; a scoped key wins over a plain one. With ``family`` (scale settings), a scope may also
    name the method ``cls`` is an ablation of, and the method's own scope wins over its family's."""
    scopes = {"": 0, cls.name: 2}
    if family and getattr(cls, "ablation_of", ""):
        scopes[cls.ablation_of] = 1
    out: dict[str, object] = {}
    entries = [(key.rpartition("."), value) for key, value in settings.items()]
    for (scope, _, name), value in sorted(entries, key=lambda e: scopes.get(e[0][0], -1)):  # narrowest last
        if scope in scopes and name in params:
            out[name] = value
    return out


@dataclass(frozen=True)
class Resolved:
    """The hyper-parameters of one method on one dataset, and where the non-defaults came from."""

    params: dict
    overrides: dict
    scale_defaults: dict
    smoke: dict = field(default_factory=dict)  # the values ``--smoke`` set (they win over the others)
    replaced: dict = field(default_factory=dict)  # the ``--set`` / scale values that ``--smoke`` replaced

    @property
    def unsmoked(self) -> dict:
        """The hyper-parameters as they would be without ``--smoke`` (checked too: a smoke run must
        not hide an invalid value it then replaces)."""
        return {**self.params, **self.replaced} if self.smoke else self.params


def resolve(cls: type, overrides: dict, scale_defaults: dict | None = None, smoke: bool = False) -> Resolved:
    """``cls``'s full hyper-parameters with the applicable ``--set`` overrides and, for the
    parameters not overridden, the applicable dataset-scale defaults; with ``smoke``, the
    applicable :data:`SMOKE_SCHEDULE` and :data:`SMOKE_CAPS` on top of both (what they replace is
    kept in ``replaced``, for :func:`validate`)."""
    params = defaults(cls)
    given = _coerced(cls, applicable(cls, overrides, params), "--set")
    scale = _coerced(cls, applicable(cls, scale_defaults or {}, params, family=True), "scale default")
    # A value the user gives always wins over a scale setting, also when it equals the class default
    # (``--set pretrained=true`` where the dataset's scale says False); it is an override when it
    # changes what would run without it.
    applied = _differing(given, {**params, **scale})
    scaled = _differing({k: v for k, v in scale.items() if k not in applied}, params)
    smoked = {**smoke_values(cls), **smoke_caps({**params, **scaled, **applied})} if smoke else {}
    replaced = {k: v for k, v in {**scaled, **applied}.items() if k in smoked}
    applied, scaled = ({k: v for k, v in d.items() if k not in smoked} for d in (applied, scaled))
    return Resolved({**params, **scaled, **applied, **smoked}, applied, scaled, smoked, replaced)


def smoke_caps(values: dict) -> dict:
    """The :data:`SMOKE_CAPS` that lower one of ``values`` (an integer above its cap; None, a
    method's "native size", is left as it is)."""
    return {k: cap for k, cap in SMOKE_CAPS.items()
            if isinstance(values.get(k), int) and not isinstance(values[k], bool) and values[k] > cap}


def smoke_values(cls: type) -> dict:
    """The entries of :data:`SMOKE_SCHEDULE` that name one of ``cls``'s parameters."""
    return _coerced(cls, applicable(cls, SMOKE_SCHEDULE, defaults(cls)), "--smoke")


def _differing(values: dict, params: dict) -> dict:
    """The entries of ``values`` that change a default: one equal to it is no change (the same job,
    the same row)."""
    return {k: v for k, v in values.items() if not (v == params[k] and type(v) is type(params[k]))}


def resolve_params(cls: type, overrides: dict, scale_defaults: dict | None = None) -> tuple[dict, dict]:
    """(full hyper-parameters, the overrides that apply): :func:`resolve` in the older shape."""
    resolved = resolve(cls, overrides, scale_defaults)
    return resolved.params, resolved.overrides


# ----------------------------------------------------------------------------- validation
def check_override_keys(overrides: dict, classes: list[type], option: str = "--set",
                        excluded: frozenset = frozenset()) -> None:
    """Every ``--set`` key (or ``--tune`` key, with ``option``) must name a hyper-parameter of a
    selected method (of that method, when scoped as ``method.key``), so a typo never silently runs
    the defaults; the ``excluded`` names (those a search may not vary) count as absent."""
    what = "tunable hyper-parameter" if excluded else "hyper-parameter"
    params = {cls.name: set(defaults(cls)) - excluded for cls in classes}
    for key in overrides:
        scope, _, name = key.rpartition(".")
        if scope and scope not in params:
            raise BenchError(f"{option} {key}: method {scope!r} is not among the selected ({', '.join(params)})")
        if scope and name not in params[scope]:
            raise BenchError(f"{option} {key}: method {scope!r} has no {what} {name!r}; "
                             f"it has: {', '.join(sorted(params[scope]))}")
        if not scope and not any(name in p for p in params.values()):
            known = sorted(set().union(*params.values()))
            raise BenchError(f"{option} {key}: no selected method has a {what} {name!r}; known: {', '.join(known)}")


def validate(cls: type, resolved: Resolved, dataset: str = "", data=None, n_train: int | None = None) -> None:
    """The method's own checks, before any job: on an instance built with ``resolved.params``
    (and, under ``--smoke``, with the values the smoke schedule replaced), scikit-learn's parameter
    constraints where declared, then its ``_check_params()`` hook where it has one; then, given the
    dataset ``data`` (a :class:`~bench.data.MultiLabelData`), its ``check_data(data, n_train)`` hook
    where it has one: the checks that need the dataset (a beam wider than the label set, a file
    named by a hyper-parameter read and checked once), ``n_train`` being the size of the smallest
    training part a job of the run will fit on."""
    candidates = [resolved.params] + ([resolved.unsmoked] if resolved.replaced else [])
    for values in candidates:
        method = cls(**values)
        checks = []
        if getattr(cls, "_parameter_constraints", None) and callable(getattr(method, "_validate_params", None)):
            checks.append(method._validate_params)
        if callable(getattr(method, "_check_params", None)):
            checks.append(method._check_params)
        if data is not None and values is resolved.params and callable(getattr(method, "check_data", None)):
            checks.append(lambda method=method: method.check_data(data, n_train))
        for check in checks:
            try:
                check()
            except (BenchError, ValueError, TypeError) as exc:
                raise BenchError(f"{_origin(resolved, dataset, values is not resolved.params)}"
                                 f"{_one_line(cls, exc)}") from None


def _one_line(cls: type, exc: BaseException) -> str:
    """The first line of a check's error, prefixed with the method unless it names it already."""
    message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return message if message.startswith(f"method {cls.name!r}") else f"method {cls.name!r}: {message}"


def _origin(resolved: Resolved, dataset: str, unsmoked: bool = False) -> str:
    """Where the values being checked came from, as the start of an error message."""
    parts = []
    if resolved.overrides:
        parts.append("--set " + " ".join(f"{k}={v!r}" for k, v in resolved.overrides.items()))
    if resolved.scale_defaults:
        parts.append(f"dataset {dataset!r} scale defaults " + " ".join(
            f"{k}={v!r}" for k, v in resolved.scale_defaults.items()))
    if resolved.smoke:
        parts.append("--smoke " + " ".join(f"{k}={v!r}" for k, v in resolved.smoke.items()))
    if unsmoked:
        parts.append("values --smoke replaces " + " ".join(f"{k}={v!r}" for k, v in resolved.replaced.items()))
    return "; ".join(parts) + ": " if parts else ""


def _coerced(cls: type, values: dict, source: str) -> dict:
    """``values`` checked against the parameters' annotations (an int for a float becomes a float)."""
    out = {}
    for name, value in values.items():
        annotation = _annotation(cls, name)
        if annotation is None or _matches(value, annotation, int_for_float=False):
            out[name] = value
        elif _matches(value, annotation):  # an int where only a float is expected
            out[name] = float(value)
        else:
            raise BenchError(f"{source} {name}={value!r}: method {cls.name!r} expects {name}: "
                             f"{_type_text(annotation)}, got {_value_text(value)}")
    return out


def _annotation(cls: type, name: str):
    """The evaluated annotation of constructor argument ``name``, or None when it has none or it
    cannot be evaluated (then the method's own validation decides)."""
    try:
        parameter = inspect.signature(cls.__init__).parameters.get(name)
    except (TypeError, ValueError):
        return None
    if parameter is None or parameter.annotation is inspect.Parameter.empty:
        return None
    annotation = parameter.annotation
    if not isinstance(annotation, str):
        return annotation
    for klass in cls.__mro__:  # the module that wrote the signature may be a base class's
        namespace = vars(sys.modules[klass.__module__]) if klass.__module__ in sys.modules else {}
        try:
            return eval(annotation, {"typing": typing, **namespace})  # noqa: S307 - the plug-in's own source
        except Exception:
            continue
    return None


def _matches(value, annotation, int_for_float: bool = True) -> bool:
    if annotation is typing.Any or annotation is object:
        return True
    if annotation is None or annotation is type(None):
        return value is None
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:  # Annotated[int, ...] is an int with notes
        return _matches(value, typing.get_args(annotation)[0], int_for_float)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, arg, int_for_float) for arg in typing.get_args(annotation))
    if origin is typing.Literal:
        return value in typing.get_args(annotation)
    if annotation is float:
        return isinstance(value, float) or (int_for_float and isinstance(value, int) and not isinstance(value, bool))
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if origin in (list, tuple, collections.abc.Sequence):
        return isinstance(value, list | tuple)
    if origin is not None:
        return isinstance(value, origin) if isinstance(origin, type) else True
    return isinstance(value, annotation) if isinstance(annotation, type) else True


def _type_text(annotation) -> str:
    return annotation.__name__ if isinstance(annotation, type) else str(annotation).replace("typing.", "")


def _value_text(value) -> str:
    kind = {bool: "the boolean", str: "the string", type(None): ""}.get(type(value), f"{type(value).__name__}")
    return f"{kind} {value!r}".strip()
