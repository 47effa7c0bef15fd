"""Multi-view features of image datasets, so that feature-only methods (``br``, ``rmlc``) run on them.

A frozen ImageNet backbone looks at every image once (test transform: the whole image resized to
``image_size``); the feature map of each *stage* (consecutive layers at one resolution, see
:class:`bench.backbones.Backbone`) is global-average-pooled into one vector, and each stage becomes
one feature view ``"<backbone>/stage<k>"`` (low-level to high-level: the "modalities" of a
multi-view method). The default :class:`Extractor` is EfficientNet-Lite0 at 224 px, the one
ImageNet CNN available offline (5 stages: 16, 24, 40, 112 and 1280 values); ``bench run
--feature-extractor resnet101@448`` chooses another (when its weights are cached). The extractor
is part of the job's identity (its data fingerprint ends in ``+<backbone>@<size>``).

The views are cached on disk (``.npz``, written atomically) under ``<results>/_cache/
image_features/``; the key hashes the backbone name, its weights id, the transform and the dataset
(its fingerprint plus a digest of the pixels or of the files' paths, sizes and modification times),
so any change re-extracts. The run side uses three functions: :func:`plan` when the jobs are built
(:mod:`bench.jobs`: which extractor, if any, a method needs on a dataset), :func:`cache_views` in
the runner once per dataset before it dispatches them, and :func:`with_views` in the worker, which
swaps the image view for the cached feature views.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from bench.data import FEATURES, IMAGE, ImageView, MultiLabelData
from bench.errors import BenchError
from bench.store import atomic_write_bytes

# torch and the image modules are imported inside the functions that extract: the plan imports
# this module for its cheap checks, and CPU-only commands should not pay torch's import time.

log = logging.getLogger(__name__)

DEFAULT_BACKBONE = "efficientnet-lite0"
DEFAULT_IMAGE_SIZE = 224
CACHE_SUBDIR = Path("_cache") / "image_features"


@dataclass(frozen=True)
class Extractor:
    """The frozen backbone and image side of the derived features: ``efficientnet-lite0@224``."""

    backbone: str = DEFAULT_BACKBONE
    image_size: int = DEFAULT_IMAGE_SIZE

    @classmethod
    def parse(cls, text: str) -> Extractor:
        """``"resnet101@448"``, or a backbone name alone (at the default side)."""
        backbone, sep, size = text.strip().partition("@")
        if not backbone or (sep and not size.strip().isdigit()) or (sep and int(size) < 1):
            raise BenchError(f"--feature-extractor expects BACKBONE or BACKBONE@SIZE (e.g. resnet101@448), got {text!r}")
        return cls(backbone, int(size) if sep else DEFAULT_IMAGE_SIZE)

    def __str__(self) -> str:
        return f"{self.backbone}@{self.image_size}"


# ----------------------------------------------------------------------------- run-side hooks
def needs_derived_features(method_cls, data: MultiLabelData) -> bool:
    """True when ``method_cls`` reads feature views only and ``data`` has only an image view."""
    return (FEATURES in method_cls.accepts and IMAGE not in method_cls.accepts
            and not data.feature_views and data.image_view is not None)


def plan(method_cls, data: MultiLabelData, extractor: Extractor | None = None) -> Extractor | None:
    """The extractor whose features ``method_cls`` will read on ``data`` (``extractor`` or the
    default), None when it reads the dataset's own views; a one-line error when it can read neither."""
    if needs_derived_features(method_cls, data):
        return extractor or Extractor()
    method_cls.check_compatible(data)
    return None


def job_fingerprint(fingerprint: str, extractor: Extractor | None) -> str:
    """The dataset part of a job's identity: with derived features it names the extractor too."""
    return fingerprint if extractor is None else f"{fingerprint}+{extractor}"


def cache_views(data: MultiLabelData, store_root: Path | str, device: str = "cpu",
                extractor: Extractor | None = None) -> Path:
    """Extract the derived views of ``data`` into the results store's cache unless they are there
    already; the cache file. The orchestrator calls it once per dataset before dispatching jobs,
    so no two workers extract the same features and no job rebuilds the backbone to find them."""
    extractor = extractor or Extractor()
    return cached_stage_features(data, extractor.backbone, extractor.image_size,
                                 cache_dir=Path(store_root) / CACHE_SUBDIR, device=device)


def with_views(data: MultiLabelData, views_file: Path | str) -> MultiLabelData:
    """``data`` with its image view replaced by the derived views cached in ``views_file``."""
    views = _read_cache(Path(views_file)) if views_file else None
    if views is None:
        raise BenchError(f"derived features of dataset {data.name!r}: cache file {views_file or '(none)'} is "
                         "missing or unreadable; run the command again to extract them anew")
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
    from bench.backbones import build_backbone

    run = {"device": device, "batch_size": batch_size, "num_workers": num_workers}
    if cache_dir is None:
        return _extract(data, build_backbone(backbone, pretrained), image_size, **run)
    path = cached_stage_features(data, backbone, image_size, cache_dir=cache_dir, pretrained=pretrained, **run)
    views = _read_cache(path)
    if views is None:
        raise BenchError(f"image features cache {path} is unreadable right after it was written")
    return views


def cached_stage_features(data: MultiLabelData, backbone: str, image_size: int, *, cache_dir: Path,
                          pretrained: bool | str = True, **run) -> Path:
    """The cache file of :func:`stage_features` (written atomically), extracting only when it is
    absent or damaged. ``run``: device, batch_size, num_workers of the extraction."""
    from bench.backbones import build_backbone
    from bench.image import test_transform

    _image_view(data)
    model = build_backbone(backbone, pretrained)
    path = Path(cache_dir) / f"{data.name}-{cache_key(data, model.name, model.weights_id, test_transform(image_size))}.npz"
    if _cache_complete(path):
        return path
    views = _extract(data, model, image_size, **run)
    buf = io.BytesIO()
    np.savez(buf, **{_safe(k): v for k, v in views.items()}, names=np.array(list(views)))
    atomic_write_bytes(path, buf.getvalue())
    return path


def _extract(data: MultiLabelData, model, image_size: int, *, device: str = "cpu", batch_size: int = 64,
             num_workers: int | None = None) -> dict[str, np.ndarray]:
    """Run the frozen backbone ``model`` over every image of ``data`` (the views of :func:`stage_features`)."""
    import torch

    from bench.image import make_loader, test_transform, to_model_input

    view = _image_view(data)
    dev = torch.device(device)
    model = model.to(dev).eval()
    loader = make_loader(view, None, test_transform(image_size), batch_size=batch_size, shuffle=False,
                         num_workers=num_workers, pin_memory=dev.type == "cuda")
    chunks: list[list[np.ndarray]] = [[] for _ in model.stages]
    log.info("extracting %s features of %d images of %r", model.name, len(view), data.name)
    with torch.no_grad():
        for images, _ in loader:
            x = to_model_input(images, model.mean, model.std, dev)
            for k, fmap in enumerate(model.forward_stages(x)):
                chunks[k].append(fmap.float().mean(dim=(2, 3)).cpu().numpy())
    return {f"{model.name}/stage{k + 1}": np.concatenate(c).astype(np.float32) for k, c in enumerate(chunks)}


def _image_view(data: MultiLabelData) -> ImageView:
    if data.image_view is None:
        raise BenchError(f"dataset {data.name!r} has no image view to extract features from")
    return data.image_view


def _safe(name: str) -> str:
    return name.replace("/", "__")


def _cache_complete(path: Path) -> bool:
    """The file is there and names all its arrays (read lazily: no array is loaded)."""
    if not path.is_file():
        return False
    try:
        with np.load(path) as z:
            return all(_safe(str(n)) in z.files for n in z["names"])
    except Exception as exc:  # a damaged cache file is re-extracted, never trusted
        log.warning("image features cache %s unreadable (%s); extracting again", path, exc)
        return False


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
