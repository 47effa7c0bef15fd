"""Multi-view features of image datasets, so that feature-only methods (``br``, ``rmlc``) run on them.

A frozen ImageNet backbone looks at every image once (test transform: the whole image resized to
``image_size``); the feature map of each *stage* (consecutive layers at one resolution, see
:class:`bench.backbones.Backbone`) is global-average-pooled into one vector, and each stage becomes
one feature view ``"<backbone>/stage<k>"`` (low-level to high-level: the "modalities" of a
multi-view method). The default extractor is EfficientNet-Lite0 at 224 px, the one ImageNet CNN
available offline (5 stages: 16, 24, 40, 112 and 1280 values); ``BENCH_FEATURE_BACKBONE`` and
``BENCH_FEATURE_SIZE`` choose another (e.g. ``resnet101`` and 448 when its weights are cached).

The views are cached on disk (``.npz``, written atomically) under ``<results>/_cache/
image_features/``; the key hashes the backbone name, its weights id, the transform and the dataset
(its fingerprint plus a digest of the pixels or of the files' paths, sizes and modification times),
so any change re-extracts. The runner calls :func:`prepare` before a job: it replaces the image view
by the derived views when the method reads features only and the dataset has none.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
from dataclasses import replace
from pathlib import Path

import numpy as np

from bench.data import FEATURES, IMAGE, ImageView, MultiLabelData
from bench.errors import BenchError
from bench.store import atomic_write_bytes

# torch and the image modules are imported inside the functions that extract: the runner imports
# this module for its cheap checks, and CPU-only commands should not pay torch's import time.

log = logging.getLogger(__name__)

DEFAULT_BACKBONE = "efficientnet-lite0"
DEFAULT_IMAGE_SIZE = 224
CACHE_SUBDIR = Path("_cache") / "image_features"


def extractor_config() -> tuple[str, int]:
    """(backbone name, image side) of the feature extractor, from the environment or the defaults."""
    name = os.environ.get("BENCH_FEATURE_BACKBONE", DEFAULT_BACKBONE)
    raw = os.environ.get("BENCH_FEATURE_SIZE", str(DEFAULT_IMAGE_SIZE))
    try:
        size = int(raw)
    except ValueError:
        raise BenchError(f"BENCH_FEATURE_SIZE must be an integer image side, got {raw!r}") from None
    return name, size


# ----------------------------------------------------------------------------- runner hooks
def needs_derived_features(method_cls, data: MultiLabelData) -> bool:
    """True when ``method_cls`` reads feature views only and ``data`` has only an image view."""
    return (FEATURES in method_cls.accepts and IMAGE not in method_cls.accepts
            and not data.feature_views and data.image_view is not None)


def check_compatible(method_cls, data: MultiLabelData) -> None:
    """``method_cls.check_compatible``, except that an image-only dataset is fine for a
    feature-only method (it gets derived features)."""
    if not needs_derived_features(method_cls, data):
        method_cls.check_compatible(data)


def job_fingerprint(method_cls, data: MultiLabelData, fingerprint: str) -> str:
    """The dataset part of a job's identity: with derived features it names the extractor too."""
    if not needs_derived_features(method_cls, data):
        return fingerprint
    name, size = extractor_config()
    return f"{fingerprint}+{name}@{size}"


def prepare(method_cls, data: MultiLabelData, store_root: Path | str, device: str = "cpu") -> MultiLabelData:
    """``data`` as the method will see it: with derived feature views when it needs them."""
    if not needs_derived_features(method_cls, data):
        return data
    name, size = extractor_config()
    views = stage_features(data, name, size, cache_dir=Path(store_root) / CACHE_SUBDIR, device=device)
    return replace(data, views=views)


# ----------------------------------------------------------------------------- extraction
def image_digest(view: ImageView) -> str:
    """A digest of the images themselves (pixels, or file paths + sizes + modification times)."""
    h = hashlib.sha256()
    if view.array is not None:
        h.update(repr(view.array.shape).encode())
        h.update(np.ascontiguousarray(view.array).tobytes())
    else:
        for path in view.paths:
            st = os.stat(path)
            h.update(f"{path}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def cache_key(data: MultiLabelData, backbone_name: str, weights_id: str, transform) -> str:
    parts = {"backbone": backbone_name, "weights": weights_id, "transform": transform.describe(),
             "dataset": data.name, "fingerprint": data.fingerprint(), "images": image_digest(data.image_view),
             "pool": "gap"}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:20]


def stage_features(data: MultiLabelData, backbone: str = DEFAULT_BACKBONE, image_size: int = DEFAULT_IMAGE_SIZE,
                   *, cache_dir: Path | None = None, pretrained: bool | str = True, device: str = "cpu",
                   batch_size: int = 64, num_workers: int | None = None) -> dict[str, np.ndarray]:
    """One globally average-pooled vector per backbone stage for every image of ``data``:
    ``{"<backbone>/stage1": float32 [N, C1], ...}``, read from / written to ``cache_dir``."""
    import torch

    from bench.backbones import build_backbone
    from bench.image import make_loader, test_transform, to_model_input

    view = data.image_view
    if view is None:
        raise BenchError(f"dataset {data.name!r} has no image view to extract features from")
    model = build_backbone(backbone, pretrained)
    transform = test_transform(image_size)
    path = None
    if cache_dir is not None:
        path = Path(cache_dir) / f"{data.name}-{cache_key(data, model.name, model.weights_id, transform)}.npz"
        cached = _read_cache(path)
        if cached is not None:
            return cached
    dev = torch.device(device)
    model = model.to(dev).eval()
    loader = make_loader(view, None, transform, batch_size=batch_size, shuffle=False,
                         num_workers=num_workers, pin_memory=dev.type == "cuda")
    chunks: list[list[np.ndarray]] = [[] for _ in model.stages]
    log.info("extracting %s features of %d images of %r", model.name, len(view), data.name)
    with torch.no_grad():
        for images, _ in loader:
            x = to_model_input(images, model.mean, model.std, dev)
            for k, fmap in enumerate(model.forward_stages(x)):
                chunks[k].append(fmap.float().mean(dim=(2, 3)).cpu().numpy())
    views = {f"{model.name}/stage{k + 1}": np.concatenate(c).astype(np.float32) for k, c in enumerate(chunks)}
    if path is not None:
        buf = io.BytesIO()
        np.savez(buf, **{_safe(k): v for k, v in views.items()}, names=np.array(list(views)))
        atomic_write_bytes(path, buf.getvalue())
    return views


def _safe(name: str) -> str:
    return name.replace("/", "__")


def _read_cache(path: Path) -> dict[str, np.ndarray] | None:
    if not path.is_file():
        return None
    try:
        with np.load(path) as z:
            names = [str(n) for n in z["names"]]
            return {n: z[_safe(n)] for n in names}
    except Exception as exc:  # a damaged cache file is re-extracted, never trusted
        log.warning("image features cache %s unreadable (%s); extracting again", path, exc)
        return None
