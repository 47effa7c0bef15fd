"""``custom-images`` and ``custom-views``: benchmark your own data (docs/datasets.md, "Bring your own data").

``custom-images`` reads ``<data root>/custom-images/labels.csv`` (columns ``image``, optional
``split``, one 0/1 column per label) and the files under ``custom-images/images/``.
``custom-views`` reads ``<data root>/custom-views/views.npz`` (``Y`` plus one [N, d] array per
view, optional ``label_names``, ``train_idx``, ``test_idx``), or ``custom-views/labels.csv`` with
``custom-views/views/<name>.csv``. The formats, checks and errors are those of
:mod:`bench.custom_data`; to add another dataset, subclass its classes in a plug-in file.
"""

from __future__ import annotations

from bench.custom_data import ImageFolderCSV, MultiViewFiles


class CustomImages(ImageFolderCSV):
    """``<data root>/custom-images/``: images + labels.csv (see the module docstring)."""

    name = "custom-images"


class CustomViews(MultiViewFiles):
    """``<data root>/custom-views/``: views.npz, or labels.csv + views/*.csv (see the module docstring)."""

    name = "custom-views"
