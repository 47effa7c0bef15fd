"""``coco2014``: Microsoft COCO 2014 as multi-label image classification (the image papers' protocol).

Data
----
Lin et al. (2014). An image's labels are the categories of its instance annotations
(``annotations/instances_{train,val}2014.json``, read with pycocotools; crowd annotations count,
as in ML-GCN). Loading reads the JSON only, never pixels.

* Label order: the 80 categories **sorted by name** (``"airplane"``, ``"apple"``, ...), the index
  order of ML-GCN's ``category.json`` (``categoty_to_idx(sorted(category_id.values()))``) that
  DER, CMSG and the Order-Free RNN report against (NOTES.md, "Shared conventions").
* Split (protocol ``"official"``): ``train2014`` for training, ``val2014`` as the test set.
* Images without any annotation are **dropped**, as ML-GCN does (it lists only images that occur
  in an annotation): 82,081 train / 40,137 test images remain (of 82,783 / 40,504).
* Row order: images by id within each split, train rows first.

On-disk layout (that of the official zips, extracted into one folder)::

    <data root>/coco/annotations/instances_train2014.json, instances_val2014.json
    <data root>/coco/train2014/COCO_train2014_000000000009.jpg ...
    <data root>/coco/val2014/COCO_val2014_000000000042.jpg ...

Image files are checked for existence (one listing per folder); a truncated JPEG is reported
when decoded, or up front with ``verify_images=True`` (:func:`bench.fetch.check_jpeg_files`).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
from pathlib import Path

import numpy as np

from bench.api import Dataset
from bench.data import ImageView, MultiLabelData
from bench.errors import BenchError
from bench.fetch import Archive, check_jpeg_files

N_CATEGORIES = 80
COCO_URL = "http://images.cocodataset.org"
#: Official archives with their MD5 (the S3 ETags of cocodataset.org's single-part uploads).
COCO_2014_ARCHIVES = (
    Archive(f"{COCO_URL}/annotations/annotations_trainval2014.zip", "0a379cfc70b0e71301e0f377548639bd",
            "annotations_trainval2014.zip", "coco"),
    Archive(f"{COCO_URL}/zips/train2014.zip", "0da8c0bd3d6becc4dcb32757491aca88", "train2014.zip", "coco"),
    Archive(f"{COCO_URL}/zips/val2014.zip", "a3d79f5ed8d289b7a7554ce06a5782b3", "val2014.zip", "coco"),
)


def load_instances(path: Path):
    """A pycocotools ``COCO`` index of one instances file (its progress prints silenced)."""
    from pycocotools.coco import COCO

    if not path.is_file():
        raise BenchError(f"{path}: annotation file not found (COCO 2014 layout expected; see docs/datasets.md "
                         "or run `bench fetch coco2014`)")
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            return COCO(str(path))
    except json.JSONDecodeError as exc:
        raise BenchError(f"{path}: malformed JSON ({exc})") from None
    except (AssertionError, KeyError, TypeError, AttributeError) as exc:
        raise BenchError(f"{path}: not a COCO instances file ({type(exc).__name__}: {exc})") from None


def category_names(coco, path: Path) -> tuple[str, ...]:
    """The 80 category names sorted by name (ML-GCN's label order)."""
    names = sorted(cat["name"] for cat in coco.loadCats(coco.getCatIds()))
    if len(names) != N_CATEGORIES or len(set(names)) != N_CATEGORIES:
        raise BenchError(f"{path}: expected {N_CATEGORIES} distinct categories, found {len(set(names))}")
    return tuple(names)


def label_matrix(coco, path: Path, label_names: tuple[str, ...]) -> tuple[list[int], np.ndarray]:
    """Ids of the annotated images (sorted) and their labels [n, 80]; unannotated images dropped."""
    column = {cat["id"]: label_names.index(cat["name"]) for cat in coco.loadCats(coco.getCatIds())}
    image_ids = sorted(i for i in coco.getImgIds() if coco.imgToAnns.get(i))
    row = {image_id: r for r, image_id in enumerate(image_ids)}
    Y = np.zeros((len(image_ids), len(label_names)), dtype=np.uint8)
    for ann in coco.dataset.get("annotations", []):
        if ann["image_id"] not in coco.imgs:
            raise BenchError(f"{path}: annotation {ann.get('id')} refers to unknown image id {ann['image_id']}")
        if ann["category_id"] not in column:
            raise BenchError(f"{path}: annotation {ann.get('id')} has category_id {ann['category_id']}, "
                             "which is not in the file's categories")
        Y[row[ann["image_id"]], column[ann["category_id"]]] = 1
    return image_ids, Y


def image_paths(coco, image_ids: list[int], folder: Path) -> tuple[Path, ...]:
    try:
        present = set(os.listdir(folder))
    except FileNotFoundError:
        raise BenchError(f"{folder}: image folder not found") from None
    names = [coco.imgs[i]["file_name"] for i in image_ids]
    for name in names:
        if name not in present:
            raise BenchError(f"{folder / name}: image listed in the annotations is missing")
    return tuple(folder / name for name in names)


class COCO2014(Dataset):
    """MS-COCO 2014: train2014 / val2014, 80 categories sorted by name (see the module docstring)."""

    name = "coco2014"
    protocol = "official"
    metric_set = "coco"
    citation = (
        "Lin, T.-Y., Maire, M., Belongie, S., Hays, J., Perona, P., Ramanan, D., Dollár, P. and "
        "Zitnick, C. L. (2014). Microsoft COCO: Common Objects in Context. ECCV 2014, 740-755."
    )
    description = (
        "MS-COCO 2014: 80 categories (sorted by name, ML-GCN's order) from the instance annotations; "
        "train2014 for training, val2014 as the test set; images without annotations dropped."
    )

    def __init__(self, verify_images: bool = False):
        self.verify_images = verify_images

    @classmethod
    def archives(cls) -> tuple[Archive, ...]:
        return COCO_2014_ARCHIVES

    @staticmethod
    def folder(data_root: Path) -> Path:
        return Path(data_root) / "coco"

    def annotation_file(self, data_root: Path, split: str) -> Path:
        return self.folder(data_root) / "annotations" / f"instances_{split}2014.json"

    def is_available(self, data_root: Path) -> bool:
        root = self.folder(data_root)
        return all(self.annotation_file(data_root, s).is_file() and (root / f"{s}2014").is_dir()
                   for s in ("train", "val"))

    def load(self, data_root: Path) -> MultiLabelData:
        parts, label_names = [], None
        for split in ("train", "val"):
            path = self.annotation_file(data_root, split)
            coco = load_instances(path)
            names = category_names(coco, path)
            if label_names is not None and names != label_names:
                raise BenchError(f"{path}: categories differ from those of instances_train2014.json")
            label_names = names
            image_ids, Y = label_matrix(coco, path, names)
            paths = image_paths(coco, image_ids, self.folder(data_root) / f"{split}2014")
            parts.append((paths, Y))
        (train_paths, Y_train), (test_paths, Y_test) = parts
        paths = train_paths + test_paths
        if self.verify_images:
            check_jpeg_files(paths)
        n_train = len(train_paths)
        return MultiLabelData(
            name=self.name, views={"image": ImageView(paths=paths)}, Y=np.vstack([Y_train, Y_test]),
            label_names=label_names, protocol=self.protocol, citation=self.citation,
            description=self.description,
            splits={"train": np.arange(n_train), "test": np.arange(n_train, len(paths))},
        )
