"""``scene``: the 2,000 natural-scene images (desert, mountains, sea, sunset, trees), RETDM's protocol.

Data
----
The scene set RETDM cites (Maron & Ratan, ICML 1998) as distributed by the LAMDA group of Nanjing
University (Zhou & Zhang's MIML image data, ``miml-image-data.rar``; RMLC's "ML2000" describes
2,000 images of the same five categories), extracted under the data root::

    <data root>/miml-image-data/original/1.jpg ... 2000.jpg
    <data root>/miml-image-data/processed/miml data.mat   (or miml-image-data/miml data.mat)

``miml data.mat`` holds ``targets`` (5 x 2000, coded {-1,1}: column i is image i + 1's labels),
``class_name`` (the five names) and ``bags`` (the MIML instance features, not used here). The
label matrix is read through :func:`bench.readers.mat_views_and_labels`'s helpers, so either
orientation and either coding ({-1,1} or {0,1}) is accepted; the class names must be the five
above, in that order. On average an image has 1.24 labels (RETDM, Section IV-A).

Protocol ``holdout`` (RETDM: "80% images are randomly chosen as the training data, and the rest
are used for testing"), metric columns RETDM's (``retdm``). The multi-modal feature version of
these images (BoW 500, FV 1040, HOG 576, RMLC Table II, 10-fold CV, metric columns
``multimodal``) is the dataset ``ml2000`` of ``datasets/multimodal.py``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bench.api import Dataset
from bench.data import ImageView, MultiLabelData
from bench.errors import BenchError
from bench.fetch import check_jpeg_files
from bench.readers import label_coding, numbered_image_paths, read_mat

LABELS = ("desert", "mountains", "sea", "sunset", "trees")
N_IMAGES = 2000
FOLDER = "miml-image-data"
MAT_LOCATIONS = ("processed/miml data.mat", "miml data.mat")
WHERE_TO_GET = "get miml-image-data.rar from http://lamda.nju.edu.cn/files/miml-image-data.rar"


class Scene(Dataset):
    """The 2,000 natural-scene images with their five labels, random 80/20 hold-out (RETDM).

    Args:
        n_images: how many images ``1.jpg`` ... the set holds (2,000 as distributed).
        verify_images: check each image file's JPEG start and end markers at load time.
    """

    name = "scene"
    protocol = "holdout"
    metric_set = "retdm"
    citation = ("Maron, O. and Ratan, A. L. (1998). Multiple-instance learning for natural scene "
                "classification. ICML 1998; MIML image data of Zhou & Zhang (LAMDA, Nanjing University); "
                "protocol of Li et al., RETDM, IEEE TNNLS 31(7), 2020.")
    description = "scene: 2,000 natural-scene images, 5 labels (desert, mountains, sea, sunset, trees), random 80/20"

    def __init__(self, n_images: int = N_IMAGES, verify_images: bool = False):
        self.n_images = n_images
        self.verify_images = verify_images

    @staticmethod
    def label_file(data_root: Path) -> Path:
        candidates = [Path(data_root) / FOLDER / m for m in MAT_LOCATIONS]
        return next((p for p in candidates if p.is_file()), candidates[0])

    def is_available(self, data_root: Path) -> bool:
        return self.label_file(data_root).is_file() and (Path(data_root) / FOLDER / "original").is_dir()

    def load(self, data_root: Path) -> MultiLabelData:
        path = self.label_file(data_root)
        if not path.is_file():
            raise BenchError(f"{path}: label file not found; {WHERE_TO_GET}")
        mat = read_mat(path)
        Y = self.read_targets(mat, path)
        self.check_class_names(mat, path)
        paths = self.image_paths(Path(data_root) / FOLDER / "original")
        if self.verify_images:
            check_jpeg_files(paths)
        return MultiLabelData(name=self.name, views={"image": ImageView(paths=paths)}, Y=Y, label_names=LABELS,
                              protocol=self.protocol, citation=self.citation, description=self.description)

    def read_targets(self, mat: dict, path: Path) -> np.ndarray:
        """``targets`` as Y [n_images, 5] in {0,1}, from [5, N] or [N, 5], {-1,1} or {0,1}."""
        if "targets" not in mat:
            raise BenchError(f"{path}: no variable 'targets' (variables: {', '.join(sorted(mat))})")
        targets = np.asarray(mat["targets"])
        expected = {(len(LABELS), self.n_images), (self.n_images, len(LABELS))}
        if targets.ndim != 2 or targets.shape not in expected or targets.dtype == object:
            raise BenchError(f"{path}: 'targets' has shape {targets.shape}; expected "
                             f"({len(LABELS)}, {self.n_images}) or ({self.n_images}, {len(LABELS)})")
        if targets.shape[0] != self.n_images:
            targets = targets.T
        return label_coding(targets, path, "'targets'")[0]

    @staticmethod
    def check_class_names(mat: dict, path: Path) -> None:
        if "class_name" not in mat:
            return  # the names are fixed by the dataset; the file's copy is only a cross-check
        names = tuple(str(np.asarray(c).ravel()[0]) if np.asarray(c).size else ""
                      for c in np.asarray(mat["class_name"], dtype=object).ravel(order="F"))
        if names != LABELS:
            raise BenchError(f"{path}: 'class_name' is {list(names)}; expected {list(LABELS)}")

    def image_paths(self, folder: Path) -> tuple[Path, ...]:
        return numbered_image_paths(folder, "{}.jpg", self.n_images, WHERE_TO_GET)
