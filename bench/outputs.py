"""What a fitted method returns, checked: scores, 0/1 predictions, the optional readouts, step
scores and class maps (:class:`bench.api.Method`). The worker (:mod:`bench.worker`) calls these;
a method that breaks its contract gets a one-line error naming it and what was expected."""

from __future__ import annotations

import re

import numpy as np

from bench.api import Method, NoClassMaps
from bench.data import MultiLabelData
from bench.errors import BenchError

READOUT_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
#: The first test images of a job whose class maps (``Method.class_maps``) it stores, for the
#: report's map figures (DER Figs. 2 and 8); only these are computed, so storing them costs little.
CLASS_MAP_IMAGES = 4


def check_scores(method: str, what: str, scores, shape: tuple[int, int], in_unit_interval: bool = False) -> np.ndarray:
    scores = np.asarray(scores, dtype=np.float64)
    if scores.shape != shape:
        raise BenchError(f"method {method!r}: {what} returned shape {scores.shape}, expected {shape}")
    if not np.isfinite(scores).all():
        raise BenchError(f"method {method!r}: {what} returned NaN/inf")
    if in_unit_interval and scores.size and (scores.min() < 0 or scores.max() > 1):
        raise BenchError(f"method {method!r}: {what} returned scores outside [0, 1] "
                         f"(min {scores.min():g}, max {scores.max():g})")
    return scores


def check_predictions(method: str, y_pred, shape: tuple[int, int]) -> np.ndarray:
    y_pred = np.asarray(y_pred)
    if y_pred.shape != shape or not np.isin(y_pred, (0, 1)).all():
        raise BenchError(f"method {method!r}: predict must return a 0/1 array of shape {shape}")
    return y_pred.astype(np.uint8)


def evaluated(result) -> dict:
    """The stored form of one :func:`bench.metrics.evaluate` result."""
    return {"metrics": dict(result), "per_label_ap": result.per_label_ap, "undefined": result.undefined}


def readouts_of(name: str, method: Method, test: MultiLabelData) -> dict[str, np.ndarray]:
    """The optional ``predict_readouts`` output, checked: short lowercase names, [n, L] in [0, 1]."""
    predict_readouts = getattr(method, "predict_readouts", None)
    if not callable(predict_readouts):
        return {}
    readouts = predict_readouts(test)
    if not isinstance(readouts, dict):
        raise BenchError(f"method {name!r}: predict_readouts must return a dict of name -> scores, "
                         f"got {type(readouts).__name__}")
    out = {}
    for key, scores in readouts.items():
        if not (isinstance(key, str) and READOUT_NAME.match(key)):
            raise BenchError(f"method {name!r}: readout name {key!r} must be a short lowercase identifier")
        out[key] = check_scores(name, f"predict_readouts[{key!r}]", scores, test.Y.shape, in_unit_interval=True)
    return out


def step_scores(name: str, method: Method, test: MultiLabelData) -> np.ndarray | None:
    """The optional ``predict_steps`` output, checked: float [M, n, L], finite, M >= 1."""
    predict_steps = getattr(method, "predict_steps", None)
    if not callable(predict_steps):
        return None
    steps = np.asarray(predict_steps(test), dtype=np.float64)
    if steps.ndim != 3 or steps.shape[0] < 1 or steps.shape[1:] != test.Y.shape:
        raise BenchError(f"method {name!r}: predict_steps returned shape {steps.shape}, "
                         f"expected [M, {test.Y.shape[0]}, {test.Y.shape[1]}]")
    if not np.isfinite(steps).all():
        raise BenchError(f"method {name!r}: predict_steps returned NaN/inf")
    return steps


def class_maps(name: str, method: Method, test: MultiLabelData) -> dict[str, np.ndarray]:
    """The arrays a job stores for the class-map figures: the optional ``class_maps`` of the first
    :data:`CLASS_MAP_IMAGES` test images (checked: [k, L, h, w], finite, >= 0; float16), their RGB
    thumbnails and their true labels. Empty when the method has no class maps or the test part no
    image view."""
    maps_of = getattr(method, "class_maps", None)
    if not callable(maps_of) or test.image_view is None:
        return {}
    first = test.subset(np.arange(min(CLASS_MAP_IMAGES, test.n_samples)))
    try:
        maps = np.asarray(maps_of(first), dtype=np.float64)
    except NoClassMaps:  # a network without maps (a DeepMethod whose head gives none)
        return {}
    if maps.ndim != 4 or maps.shape[:2] != first.Y.shape:
        raise BenchError(f"method {name!r}: class_maps returned shape {maps.shape}, expected "
                         f"[{first.n_samples}, {first.n_labels}, h, w]")
    if not np.isfinite(maps).all():
        raise BenchError(f"method {name!r}: class_maps returned NaN/inf")
    if maps.size and maps.min() < 0:
        raise BenchError(f"method {name!r}: class_maps returned negative values (min {maps.min():g}); "
                         "maps must be >= 0")
    from bench.image import thumbnails  # torch and torchvision: only for methods with class maps

    images, sizes = thumbnails(first.image_view)
    return {"class_maps": maps.astype(np.float16), "class_map_images": images, "class_map_image_sizes": sizes,
            "class_map_labels": first.Y.astype(np.uint8)}
