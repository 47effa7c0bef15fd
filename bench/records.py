"""The record: what one finished job stores, as a typed, versioned object.

``bench.worker.execute`` builds a plain dict and :meth:`bench.store.ResultStore.write` stores it as JSON
with ``format_version`` = :data:`SCHEMA_VERSION`; the read side (results layer, tables, figures,
MLflow) works on :class:`Record` objects made by :meth:`Record.from_dict`, never on raw
``record["config"][...]`` lookups. Keys this module does not know survive a round trip
(``extra``), so the run side may add fields without the read side losing them.

Schema versions:

1. the first stores; ``ranking_loss`` skipped the examples with no relevant or no irrelevant label.
2. ``ranking_loss`` scores such an example 0 and counts it (scikit-learn's ``label_ranking_loss``;
   :mod:`bench.metrics`). A version-1 record is upgraded on reading, exactly: its value was
   ``S / n_defined`` and is now ``S / n_test`` with ``n_defined = n_test - undefined``; the
   ``undefined`` count of ranking loss is dropped. The same factor holds for ``step_metrics``
   (the skipped examples depend on the labels only). Training curves (``history``) are kept as
   recorded.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import MISSING, dataclass, field, fields
from datetime import datetime

SCHEMA_VERSION = 2
READABLE_VERSIONS = (1, 2)


@dataclass(frozen=True)
class JobConfig:
    """A job's identity: method and hyper-parameters, data and its fingerprint, split."""

    method: str
    dataset: str
    protocol: str
    n_folds: int
    fold: int
    seed: int
    params: dict | None = None  # None: a hand-made record that does not say
    split_hash: str = ""
    data_fingerprint: str = ""
    #: the dataset-scale settings the run applied (``Dataset.scale_defaults``; empty: none).
    scale_defaults: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)

    @property
    def smoke(self) -> bool:
        """A ``bench run --smoke`` job (a tiny schedule: a check, not a result); stored only when true."""
        return bool(self.extra.get("smoke", False))

    @property
    def search(self) -> dict:
        """The in-fold search the job ran (``grid``, ``metric``; :mod:`bench.tuning`); empty: none."""
        return dict(self.extra.get("search") or {})

    @property
    def base_fingerprint(self) -> str:
        """The fingerprint of the dataset's data alone (derived features add ``+extractor``)."""
        return self.data_fingerprint.split("+", 1)[0]


@dataclass(frozen=True)
class Readout:
    """One extra named set of scores of the same trained model, evaluated like the main output."""

    metrics: dict
    per_label_ap: list | None = None
    undefined: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_dict(cls, raw: dict) -> Readout:
        known = ("metrics", "per_label_ap", "undefined")
        return cls(**{k: raw[k] for k in known if raw.get(k) is not None},
                   extra={k: v for k, v in raw.items() if k not in known})

    def to_dict(self) -> dict:
        return {"metrics": self.metrics, "per_label_ap": self.per_label_ap, "undefined": self.undefined,
                **self.extra}


@dataclass(frozen=True)
class Record:
    """One finished job (see the module docstring)."""

    job_id: str
    config: JobConfig
    metrics: dict
    overrides: dict = field(default_factory=dict)
    per_label_ap: list | None = None
    undefined: dict = field(default_factory=dict)
    label_names: list = field(default_factory=list)
    n_train: int | None = None
    n_test: int | None = None
    timings: dict = field(default_factory=dict)
    history: list = field(default_factory=list)
    step_metrics: list | None = None
    readouts: dict = field(default_factory=dict)  # name -> Readout
    notes: list = field(default_factory=list)
    environment: dict = field(default_factory=dict)
    finished_at: str = ""
    arrays_sha256: str = ""
    schema_version: int = SCHEMA_VERSION
    extra: dict = field(default_factory=dict)

    # ------------------------------------------------------------------ conversion
    @classmethod
    def from_dict(cls, raw: dict) -> Record:
        """A record from its stored JSON (any of :data:`READABLE_VERSIONS`, upgraded); a ValueError
        when its configuration lacks a field a job always stores."""
        raw = upgrade(raw)
        known = {f.name for f in fields(cls)} - {"config", "readouts", "schema_version", "extra"}
        cfg = dict(raw["config"])
        config_known = {f.name for f in fields(JobConfig)} - {"extra"}
        if missing := [f.name for f in fields(JobConfig) if f.name in config_known and f.name not in cfg
                       and f.default is MISSING and f.default_factory is MISSING]:
            raise ValueError(f"config lacks {', '.join(missing)}")
        config = JobConfig(**{k: cfg.pop(k) for k in list(cfg) if k in config_known}, extra=cfg)
        readouts = {name: Readout.from_dict(value) for name, value in (raw.get("readouts") or {}).items()}
        values = {k: raw[k] for k in known if k in raw and raw[k] is not None}
        extra = {k: v for k, v in raw.items() if k not in known | {"config", "readouts", "format_version"}}
        return cls(config=config, readouts=readouts, schema_version=raw.get("format_version", SCHEMA_VERSION),
                   extra=extra, **values)

    def to_dict(self) -> dict:
        """The JSON form the store writes (unknown keys read in are written back)."""
        out = {f.name: getattr(self, f.name) for f in fields(self)  # None: absent, as from_dict reads it
               if f.name not in ("config", "readouts", "schema_version", "extra") and getattr(self, f.name) is not None}
        cfg = {f.name: getattr(self.config, f.name) for f in fields(self.config)
               if f.name != "extra" and getattr(self.config, f.name) is not None}
        out["config"] = {**cfg, **self.config.extra}
        if self.readouts:
            out["readouts"] = {name: r.to_dict() for name, r in self.readouts.items()}
        return {**out, **self.extra, "format_version": self.schema_version}

    # ------------------------------------------------------------------ derived facts
    @property
    def search(self) -> dict:
        """What the job's in-fold search found: every candidate's validation score and ``chosen``
        (:mod:`bench.tuning`); empty without a search."""
        return dict(self.extra.get("search") or {})

    def result_digest(self) -> str:
        """A digest of what the job measured (metrics, per-label AP, steps, readouts, curves), not
        of when or how fast: a ``--force`` re-run that reproduces a result has the same digest."""
        result = {"metrics": self.metrics, "per_label_ap": self.per_label_ap, "undefined": self.undefined,
                  "step_metrics": self.step_metrics, "history": _without_timing(self.history),
                  "readouts": {k: v.to_dict() for k, v in sorted(self.readouts.items())}}
        text = json.dumps(result, sort_keys=True, default=_plain_json)  # as stored: numpy -> lists and floats
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def span_ms(self) -> tuple[int | None, int | None]:
        """(start, end) of the job in epoch milliseconds, from ``finished_at`` (ISO 8601, to the
        millisecond; records written before 2026-12-07 hold whole seconds) and its timings."""
        try:
            end = datetime.fromisoformat(self.finished_at).timestamp()
        except ValueError:
            return None, None
        spent = sum(float(v) for v in self.timings.values() if _is_number(v))
        return int((end - spent) * 1000), int(end * 1000)

    def history_points(self) -> list[tuple[str, float, int]]:
        """(key, value, epoch) for every numeric entry of the per-epoch ``history``."""
        return [(key, float(value), int(entry.get("epoch", i)))
                for i, entry in enumerate(self.history) for key, value in entry.items()
                if key != "epoch" and _is_number(value)]


def is_schedule_key(key: str) -> bool:
    """History keys that say how a run was scheduled, not how it converged (timing, learning rate)."""
    return key == "lr" or key.startswith("lr_") or key == "time_s" or key.endswith("_time_s")


def _plain_json(obj):
    """What the store's JSON holds for a numpy value (a fresh record and a stored one digest alike)."""
    if hasattr(obj, "tolist"):
        return obj.tolist()
    return repr(obj)


def _without_timing(history: list) -> list:
    return [{k: v for k, v in entry.items() if not k.endswith("time_s")} for entry in history]


def _is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


# --------------------------------------------------------------------------- the schema's types
#: The JSON type of each field a record may hold (None is allowed where a field may be absent).
FIELD_TYPES = {
    "job_id": str, "config": dict, "metrics": dict, "overrides": dict, "per_label_ap": list, "undefined": dict,
    "label_names": list, "n_train": int, "n_test": int, "timings": dict, "history": list, "step_metrics": list,
    "readouts": dict, "notes": list, "environment": dict, "finished_at": str, "arrays_sha256": str,
    "format_version": int,
}
CONFIG_TYPES = {"method": str, "dataset": str, "protocol": str, "n_folds": int, "fold": int, "seed": int,
                "params": dict, "split_hash": str, "data_fingerprint": str, "scale_defaults": dict}


def check_types(raw: dict) -> None:
    """A ValueError naming the first field whose JSON type is not the schema's (``"metrics": "oops"``),
    so a record that parses but would break the read side later is treated like a corrupt one."""
    if not isinstance(raw, dict):
        raise ValueError(f"a record is a JSON object, got {_json_type(raw)}")
    _check_fields(raw, FIELD_TYPES, "")
    if isinstance(raw.get("config"), dict):
        _check_fields(raw["config"], CONFIG_TYPES, "config.")
    _check_numbers(raw.get("metrics"), "metrics")
    for i, value in enumerate(raw.get("per_label_ap") or []):
        if value is not None and not _is_number(value):
            raise ValueError(f"per_label_ap[{i}] must be a number or null, got {_json_type(value)}")
    for name in ("history", "step_metrics"):
        for i, entry in enumerate(raw.get(name) or []):
            if not isinstance(entry, dict):
                raise ValueError(f"{name}[{i}] must be an object, got {_json_type(entry)}")
    for i, step in enumerate(raw.get("step_metrics") or []):
        _check_numbers(step, f"step_metrics[{i}]")
    for name, readout in (raw.get("readouts") or {}).items():
        if not isinstance(readout, dict) or not isinstance(readout.get("metrics"), dict):
            raise ValueError(f"readouts.{name} must be an object with metrics, got {_json_type(readout)}")
        _check_numbers(readout["metrics"], f"readouts.{name}.metrics")


def _check_fields(raw: dict, types: dict, prefix: str) -> None:
    for name, kind in types.items():
        value = raw.get(name)
        if value is None:
            continue
        ok = _is_number(value) and float(value).is_integer() if kind is int else isinstance(value, kind)
        if not ok or (kind is int and isinstance(value, bool)):
            raise ValueError(f"{prefix}{name} must be {_TYPE_WORDS[kind]}, got {_json_type(value)}")


def _check_numbers(values, where: str) -> None:
    for key, value in (values or {}).items():
        if value is not None and not _is_number(value):
            raise ValueError(f"{where}.{key} must be a number or null, got {_json_type(value)}")


_TYPE_WORDS = {str: "a string", dict: "an object", list: "an array", int: "an integer"}


def _json_type(value) -> str:
    words = {str: "a string", dict: "an object", list: "an array", bool: "a boolean", int: "a number",
             float: "a number", type(None): "null"}
    return f"{words.get(type(value), type(value).__name__)} {json.dumps(value, default=repr)[:40]}"


# --------------------------------------------------------------------------- upgrades
def upgrade(raw: dict) -> dict:
    """A stored record dict brought to :data:`SCHEMA_VERSION` (a new dict; ``raw`` is unchanged)."""
    version = raw.get("format_version", SCHEMA_VERSION)
    if version not in READABLE_VERSIONS:
        raise ValueError(f"format_version {version} is not one of {READABLE_VERSIONS} (written by a newer bench?)")
    if version == 1:
        raw = _ranking_loss_counts_every_example(raw)
    return raw


def _ranking_loss_counts_every_example(raw: dict) -> dict:
    """Version 1 -> 2: ranking loss over every test example (see the module docstring)."""
    undefined = dict(raw.get("undefined") or {})
    skipped = int(undefined.pop("ranking_loss", 0) or 0)
    n_test = raw.get("n_test")

    def rescale(metrics: dict) -> dict:
        if "ranking_loss" not in metrics or not skipped:
            return metrics
        if not n_test:  # a hand-made record without its test size: the value cannot be converted
            return {**metrics, "ranking_loss": math.nan}
        old = metrics["ranking_loss"]
        new = 0.0 if old is None or math.isnan(old) else old * (n_test - skipped) / n_test
        return {**metrics, "ranking_loss": new}

    out = {**raw, "metrics": rescale(raw.get("metrics") or {}), "undefined": undefined, "format_version": 2}
    if raw.get("step_metrics"):
        out["step_metrics"] = [rescale(step) for step in raw["step_metrics"]]
    return out
