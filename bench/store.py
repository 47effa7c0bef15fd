"""The results store: one finished job = two files, written atomically.

Layout: ``results/<dataset>/<method>/<job_id>.npz`` (test indices, scores, predictions, readouts'
scores, and for methods with class maps those of the first test images with their thumbnails) and
``<job_id>.json`` (configuration, metrics, per-label AP, timings, training history, environment).
The ``.npz`` is written first and the ``.json`` last, and the JSON records the SHA-256 of the
``.npz``; both go through a temporary file in the same folder, ``fsync`` and ``os.replace``, so a
crash or Ctrl-C leaves either a complete job or no job, never a half-written one that looks
finished. A file that fails to parse, lacks a field, holds one of the wrong type
(:func:`bench.records.check_types`) or whose arrays do not match their digest is
reported and treated as missing, so the job is simply run again. Records of an older schema
(:data:`bench.records.READABLE_VERSIONS`) are read and upgraded (:func:`bench.records.upgrade`);
new files get the permissions the umask gives any new file.

Tables and plots are always regenerated from these files, never from memory.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from bench.records import SCHEMA_VERSION, Record, check_types, upgrade

log = logging.getLogger(__name__)

FORMAT_VERSION = SCHEMA_VERSION
REQUIRED_FIELDS = ("job_id", "config", "metrics", "timings", "arrays_sha256", "format_version")


def current_umask() -> int:
    """The process's umask (Linux reports it in ``/proc``; elsewhere it is set and restored)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: Path, payload: bytes) -> None:
    """Write ``payload`` to ``path`` so that readers see the old file or the new one, never a part.

    The file gets the permissions of any new file (``0o666`` less the umask): ``mkstemp`` creates
    its temporary file private (0600), which would make a shared results folder unreadable.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~current_umask())
        with os.fdopen(fd, "wb") as fh:
            fh.write(payload)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class ResultStore:
    """Finished jobs under ``root``, addressed by job id."""

    def __init__(self, root: Path | str):
        self.root = Path(root)

    def _paths(self, dataset: str, method: str, job_id: str) -> tuple[Path, Path]:
        folder = self.root / dataset / method
        return folder / f"{job_id}.json", folder / f"{job_id}.npz"

    def write(self, record: dict | Record, arrays: dict[str, np.ndarray]) -> Path:
        """Store one finished job; ``record`` (a :class:`Record` or the plain dict ``bench.worker.execute``
        builds) must carry ``job_id`` and ``config``; keys unknown to the store are kept."""
        if isinstance(record, Record):
            record = record.to_dict()
        cfg = record["config"]
        json_path, npz_path = self._paths(cfg["dataset"], cfg["method"], record["job_id"])
        buf = io.BytesIO()
        np.savez_compressed(buf, **arrays)
        payload = buf.getvalue()
        atomic_write_bytes(npz_path, payload)
        record = {**record, "arrays_sha256": hashlib.sha256(payload).hexdigest(), "format_version": FORMAT_VERSION}
        atomic_write_bytes(json_path, json.dumps(record, indent=1, sort_keys=True, default=_json_default).encode())
        return json_path

    def load(self, dataset: str, method: str, job_id: str) -> dict | None:
        """The record of a finished job (current schema), or None if it is absent, partial or corrupt."""
        json_path, _ = self._paths(dataset, method, job_id)
        return self._read(json_path) if json_path.exists() else None

    def arrays(self, record: dict | Record, names: Iterable[str] | None = None) -> dict[str, np.ndarray]:
        """The arrays of a stored job: all of them, or those of ``names`` it holds (only these are
        decompressed)."""
        if isinstance(record, Record):
            dataset, method, job_id = record.config.dataset, record.config.method, record.job_id
        else:
            dataset, method, job_id = record["config"]["dataset"], record["config"]["method"], record["job_id"]
        _, npz_path = self._paths(dataset, method, job_id)
        with np.load(npz_path) as npz:
            wanted = npz.files if names is None else [k for k in names if k in npz.files]
            return {k: npz[k] for k in wanted}

    def records(self, dataset: str | None = None, method: str | None = None) -> Iterator[dict]:
        """Every valid record (as a dict in the current schema), optionally for one dataset and/or
        method. The read side wraps them once in :class:`bench.records.Record` (bench.results)."""
        pattern = f"{dataset or '*'}/{method or '*'}/*.json"
        for json_path in sorted(self.root.glob(pattern)):
            record = self._read(json_path)
            if record is not None:
                yield record

    def _read(self, json_path: Path) -> dict | None:
        npz_path = json_path.with_suffix(".npz")
        try:
            record = json.loads(json_path.read_text())
            check_types(record)  # a field of the wrong type breaks the read side later, unnamed
            missing = [f for f in REQUIRED_FIELDS if f not in record]
            if missing:
                raise ValueError(f"missing field(s) {missing}")
            record = upgrade(record)  # an older schema is read; a newer one is a ValueError
            digest = hashlib.sha256(npz_path.read_bytes()).hexdigest()
            if digest != record["arrays_sha256"]:
                raise ValueError(f"{npz_path.name} does not match its recorded SHA-256")
        except (OSError, ValueError) as exc:  # JSONDecodeError is a ValueError
            log.warning("ignoring corrupt result %s (%s); the job will be re-run", json_path, exc)
            return None
        return record


def _json_default(obj):
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot store {type(obj).__name__} in a result record")
