"""Cached feature maps of a frozen backbone, computed once per image and reused every epoch and fold.

A method that keeps its backbone frozen (Order-Free RNN's ResNet-152) would otherwise run the CNN
over every image in every epoch of every fold. With ``freeze_backbone=True, cache_features=True``
:class:`~bench.deep.DeepMethod` asks :func:`cached_maps` for the backbone's last feature map of
each image instead (the test transform: no augmentation, since the maps are fixed), and trains the
head on those maps.

Keys. Like the pooled features of :mod:`bench.image_features`, the cache folder is keyed by the
backbone's name, a digest of its weights (buffers included: a randomly initialised backbone
differs by seed), the transform and the storage dtype. Unlike them, the entries inside are keyed
*per image* (the bytes and shape of an in-memory image, or a file's path, size and modification
time), because a method only ever sees the parts of a dataset (a fold's training part, its test
part): the second fold finds every image the first fold extracted, whatever the split.

Storage: ``<cache root>/spatial_features/<backbone>-<key>/shard-<id>.npy`` (float16 maps
``[k, C, h, w]``, read memory-mapped, so a dataset larger than memory works) and
``shard-<id>.keys.json`` (the images' keys, written after the shard: a shard without keys is an
interrupted write and is ignored). Each extraction writes new shards, atomically; concurrent
workers may repeat work but never corrupt the cache. float16 halves the disk and page-cache
footprint; the maps differ from float32 ones by at most 2^-11 relatively. The cache root is
``$BENCH_CACHE`` or the results store's ``_cache`` folder.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import uuid
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from bench.data import ImageView
from bench.errors import BenchError
from bench.folders import default_results
from bench.store import atomic_write_bytes

log = logging.getLogger(__name__)

SUBDIR = "spatial_features"
DTYPE = np.float16
#: Images per shard written during an extraction (bounds the memory an extraction holds).
SHARD_IMAGES = 4096


def default_cache_root() -> Path:
    """``$BENCH_CACHE``, else ``<results store>/_cache`` (the pooled features' cache lives there too)."""
    if os.environ.get("BENCH_CACHE"):
        return Path(os.environ["BENCH_CACHE"])
    return default_results() / "_cache"


def image_keys(view: ImageView) -> list[str]:
    """One key per image: a digest of an in-memory image's shape and bytes, or of a file's path,
    size and modification time."""
    if view.array is not None:
        keys = []
        for img in view.array:
            h = hashlib.blake2b(repr(img.shape).encode(), digest_size=16)
            h.update(np.ascontiguousarray(img).tobytes())
            keys.append(h.hexdigest())
        return keys
    keys = []
    for path in view.paths:
        st = os.stat(path)
        keys.append(hashlib.blake2b(f"{Path(path).resolve()}\0{st.st_size}\0{st.st_mtime_ns}".encode(),
                                    digest_size=16).hexdigest())
    return keys


def weights_digest(module: torch.nn.Module) -> str:
    """A digest of every parameter and buffer (names, shapes, bytes)."""
    h = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().cpu().contiguous().reshape(-1)
        h.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:20]


class CachedMaps:
    """The cached maps of the images of one view, in the view's order: :meth:`gather` rows."""

    def __init__(self, shards: list[np.ndarray], shard_of: np.ndarray, row_of: np.ndarray):
        self.shards, self.shard_of, self.row_of = shards, shard_of, row_of

    def __len__(self) -> int:
        return len(self.shard_of)

    def gather(self, idx: np.ndarray) -> np.ndarray:
        """float16 maps [len(idx), C, h, w] of the images at positions ``idx``."""
        idx = np.asarray(idx)
        out = np.empty((len(idx), *self.shards[0].shape[1:]), dtype=DTYPE)
        shard_ids = self.shard_of[idx]
        for s in np.unique(shard_ids):
            mask = shard_ids == s
            out[mask] = self.shards[s][self.row_of[idx[mask]]]
        return out


class SpatialFeatureCache:
    """One cache folder: the maps of one backbone (weights) under one transform."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)

    @classmethod
    def for_backbone(cls, backbone, transform, root: Path | None = None) -> SpatialFeatureCache:
        parts = {"backbone": backbone.name, "weights": weights_digest(backbone), "transform": transform.describe(),
                 "dtype": np.dtype(DTYPE).name}
        key = hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:20]
        return cls(Path(root or default_cache_root()) / SUBDIR / f"{backbone.name}-{key}")

    def index(self) -> dict[str, tuple[Path, int]]:
        """key -> (shard file, row) over every complete shard (the first shard holding a key wins)."""
        found: dict[str, tuple[Path, int]] = {}
        for keys_file in sorted(self.folder.glob("shard-*.keys.json")):
            shard = keys_file.with_name(keys_file.name.replace(".keys.json", ".npy"))
            try:
                keys = json.loads(keys_file.read_text())
            except (OSError, ValueError) as exc:
                log.warning("feature cache %s unreadable (%s); ignoring it", keys_file, exc)
                continue
            if not shard.is_file():
                continue
            for row, key in enumerate(keys):
                found.setdefault(key, (shard, row))
        return found

    def maps(self, view: ImageView, extract: Callable[[ImageView], np.ndarray]) -> CachedMaps:
        """The maps of every image of ``view``; images not cached yet go through ``extract(view
        of those images) -> float array [k, C, h, w]`` (at most :data:`SHARD_IMAGES` at a time)."""
        keys = image_keys(view)
        index = self.index()
        first_of_missing: dict[str, int] = {}  # an image present twice is extracted once
        for i, key in enumerate(keys):
            if key not in index:
                first_of_missing.setdefault(key, i)
        missing = list(first_of_missing.values())
        if missing:
            log.info("extracting backbone maps of %d images into %s", len(missing), self.folder)
            self.folder.mkdir(parents=True, exist_ok=True)
            for start in range(0, len(missing), SHARD_IMAGES):
                chunk = np.asarray(missing[start:start + SHARD_IMAGES])
                self._write_shard([keys[i] for i in chunk], extract(view.subset(chunk)))
            index = self.index()
        files = sorted({index[k][0] for k in keys})
        number = {f: s for s, f in enumerate(files)}
        try:
            shards = [np.load(f, mmap_mode="r") for f in files]
        except (OSError, ValueError) as exc:
            raise BenchError(f"feature cache {self.folder}: a shard cannot be read ({exc}); delete the folder "
                             "to extract the maps anew") from None
        shard_of = np.array([number[index[k][0]] for k in keys], dtype=np.int64)
        row_of = np.array([index[k][1] for k in keys], dtype=np.int64)
        return CachedMaps(shards, shard_of, row_of)

    def _write_shard(self, keys: list[str], maps: np.ndarray) -> None:
        if len(maps) != len(keys):
            raise BenchError(f"feature cache: the extractor returned {len(maps)} maps for {len(keys)} images")
        name = f"shard-{uuid.uuid4().hex[:12]}"
        buf = io.BytesIO()
        np.save(buf, np.asarray(maps, dtype=DTYPE))
        atomic_write_bytes(self.folder / f"{name}.npy", buf.getvalue())
        atomic_write_bytes(self.folder / f"{name}.keys.json", json.dumps(keys).encode())
