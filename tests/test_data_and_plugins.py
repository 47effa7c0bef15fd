"""The data contract's validation and the plug-in loader."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from bench import plugins
from bench.api import Method
from bench.cli import main
from bench.data import ImageView, MultiLabelData
from bench.errors import BenchError


def make(views=None, Y=None, **kw):
    Y = np.array([[0, 1], [1, 0], [1, 1]]) if Y is None else Y
    views = {"f": np.ones((len(Y), 3))} if views is None else views
    return MultiLabelData("toy", views, Y, ("a", "b")[: Y.shape[1]] if Y.ndim == 2 else ("a",), **kw)


def test_valid_data_is_normalised_and_described():
    data = make(views={"img": ImageView(array=np.zeros((3, 4, 4), np.uint8)), "f": np.ones((3, 2), int)})
    assert data.Y.dtype == np.uint8 and data.views["f"].dtype == np.float32
    assert data.view_kinds == {"image", "features"}
    assert data.view_dims == {"img": (4, 4), "f": (2,)}
    assert data.concatenated_features().shape == (3, 2)
    sub = data.subset([2, 0])
    assert sub.n_samples == 2 and sub.Y.tolist() == [[1, 1], [0, 1]]
    assert sub.image_view.array.shape == (2, 4, 4)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"Y": np.array([[0, 2], [1, 0], [1, 1]])}, "only 0/1, found values [2]"),
        ({"Y": np.array([0, 1, 1])}, "must be 2-D"),
        ({"views": {"f": np.ones((2, 3))}}, "view 'f' has 2 rows, Y has 3"),
        ({"views": {"f": np.array([[1.0], [np.nan], [np.inf]])}}, "NaN/inf in 2 rows (first: 1)"),
        ({"views": {"f": np.ones((3, 2, 2))}}, "must be 2-D [N, d]"),
        ({"views": {"f": np.array([["a"], ["b"], ["c"]])}}, "must be numeric"),
        ({"protocol": "bogus"}, "protocol 'bogus' is not one of"),
        ({"splits": {"train": np.array([0, 5])}}, "split 'train' must be 1-D integer indices into [0, 3)"),
    ],
)
def test_bad_data_gives_one_line_error(kwargs, message):
    with pytest.raises(BenchError) as err:
        make(**kwargs)
    assert message in str(err.value) and "\n" not in str(err.value) and "'toy'" in str(err.value)


def test_label_names_must_match_columns():
    with pytest.raises(BenchError, match="1 label names for 2 label columns"):
        MultiLabelData("toy", {"f": np.ones((3, 1))}, np.zeros((3, 2)), ("a",))


def test_fingerprint_changes_with_labels_not_with_identity():
    a, b = make(), make()
    assert a.fingerprint() == b.fingerprint()
    assert make(Y=np.array([[1, 1], [1, 0], [1, 1]])).fingerprint() != a.fingerprint()


def test_dropped_in_method_file_is_listed_and_not_a_top_level_package(isolated):
    (isolated / "methods" / "mine.py").write_text(
        "from bench.api import Method\n"
        "class Mine(Method):\n    name = 'mine'\n    def __init__(self, k=3):\n        self.k = k\n"
    )
    (isolated / "methods" / "broken.py").write_text("raise RuntimeError('oops')\n")
    registry = plugins.load("methods")
    assert {"mine", "br"} <= set(registry)
    assert issubclass(plugins.get("methods", "mine"), Method)
    assert plugins.get("methods", "mine").__module__ == "bench_plugins.methods.mine"
    assert "methods" not in sys.modules and "datasets" not in sys.modules


# A plug-in file that leaves a mark when it is imported, with attributes of every shape the
# registry reads from source: literals, constants of bench.data, inherited ones, sums of strings.
MARKED_PLUGIN = """
import pathlib
from bench.api import Method
from bench.data import FEATURES, IMAGE
pathlib.Path(__file__).with_suffix(".imported").write_text("yes")
PREFIX = "Doe et al. "


class Base(Method):
    accepts = frozenset({IMAGE, FEATURES})
    citation = PREFIX + "2020"


class Full(Base):
    name = "full"
    description = "the full model"


class Ablated(Full):
    name = "ablated"
    ablation_of = "full"
    citation = Full.citation + "; ablation"
"""


def test_registry_reads_plugin_attributes_from_source_and_imports_on_use(isolated):
    path = isolated / "methods" / "marked.py"
    path.write_text(MARKED_PLUGIN)
    registry = plugins.load("methods")
    full, ablated = registry["full"], registry["ablated"]
    assert full.accepts == frozenset({"image", "features"}) and full.citation == "Doe et al. 2020"
    assert ablated.ablation_of == "full" and ablated.citation == "Doe et al. 2020; ablation"
    assert full.ablation_of == "" and ablated.description == "the full model" and full.threshold == 0.5
    assert "Base" not in registry and not path.with_suffix(".imported").exists()  # nothing ran

    cls = plugins.get("methods", "ablated")  # now the file runs, once for both classes
    assert path.with_suffix(".imported").exists()
    assert issubclass(cls, Method) and cls.citation == ablated.citation
    assert plugins.get("methods", "full") is sys.modules[cls.__module__].Full


def test_every_shipped_plugin_attribute_read_from_source_is_the_class_attribute():
    """The source reader against Python itself, on every method and dataset file in the checkout."""
    attributes = ("name", "accepts", "citation", "ablation_of", "threshold", "description", "embedded",
                  "protocol", "metric_set", "scale_defaults")
    compared = 0
    for kind in ("methods", "datasets"):
        for name, plugin in plugins.load(kind).items():
            cls = plugins.get(kind, name)
            for attr in attributes:
                if hasattr(cls, attr):
                    assert plugin._source.attr(attr) == getattr(cls, attr), (name, attr)
                    compared += 1
    assert compared > 100


def test_a_broken_plugin_file_hides_no_other(isolated, caplog, capsys):
    (isolated / "methods" / "typo.py").write_text("class Typo(:\n")
    (isolated / "methods" / "fails.py").write_text(
        "from bench.api import Method\nimport no_such_module_anywhere\n"
        "class Fails(Method):\n    name = 'fails'\n")
    registry = plugins.load("methods")
    assert "br" in registry and "fails" in registry  # listed from its source
    assert "skipping plug-in" in caplog.text and "typo.py" in caplog.text
    with pytest.raises(BenchError, match=r"plug-in file .*fails.py failed to import: ModuleNotFoundError"):
        plugins.get("methods", "fails")
    assert main(["run", "--method", "fails", "--dataset", "tiny", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "fails.py failed to import" in err and "Traceback" not in err
    assert main(["run", "--method", "br", "--dataset", "tiny", "--folds", "2", "--no-progress"]) == 0
    capsys.readouterr()

    # `bench list` reads methods from source ('fails' is listed); a dataset it must import to tell
    # whether its files are present is shown as broken, and every other one after it.
    (isolated / "datasets" / "abroken.py").write_text(
        "from bench.api import Dataset\nimport no_such_module_anywhere\n"
        "class Abroken(Dataset):\n    name = 'abroken'\n")
    plugins.load.cache_clear()
    assert main(["list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    broken = [line for line in lines if " broken " in line]
    assert [line.split()[:2] for line in broken] == [["abroken", "broken"]]
    assert "abroken.py failed to import: ModuleNotFoundError" in broken[0]
    assert any(line.split()[:2] == ["tiny", "embedded"] for line in lines)  # listed after 'abroken'
    assert {"br", "fails"} <= {line.split()[0] for line in lines if line.startswith("  ") and line.split()}


def test_all_runs_what_can_run_here_and_names_the_rest_in_one_warning(isolated, tmp_path, caplog, capsys):
    """`--method all` skips a method whose file fails to import; `--dataset all` the datasets whose
    files are not under the data root; a method or dataset asked for by name is an error instead."""
    from bench.runner import build_jobs

    (isolated / "methods" / "fails.py").write_text(
        "from bench.api import Method\nimport no_such_module_anywhere\n"
        "class Fails(Method):\n    name = 'fails'\n")
    plugins.load.cache_clear()
    options = dict(protocol=None, n_folds=2, seeds=None, overrides={}, data_root=tmp_path / "data",
                   store_root=tmp_path / "results")
    jobs = build_jobs(["fails", "br"], ["tiny"], strict=False, **options)
    assert {j.method for j in jobs} == {"br"} and "skipping: plug-in file" in caplog.text
    with pytest.raises(BenchError, match="fails.py failed to import"):
        build_jobs(["fails", "br"], ["tiny"], **options)

    caplog.clear()
    assert main(["run", "--method", "br", "--dataset", "all", "--folds", "2", "--no-progress"]) == 0
    assert "fails.py" not in caplog.text  # br alone was asked for: the broken file is never imported
    skipped = [r.getMessage() for r in caplog.records if "--dataset all: skipping" in r.getMessage()]
    assert len(skipped) == 1 and "voc2007" in skipped[0] and "coco2014" in skipped[0], skipped
    stored = {p.parent.parent.name for p in (tmp_path / "results").rglob("*.json")}
    assert {"tiny", "tiny-official", "yeast", "mnist-mosaic"} <= stored and "voc2007" not in stored


def test_a_plugin_the_source_cannot_tell_is_imported_at_discovery(isolated):
    (isolated / "methods" / "dynamic.py").write_text(
        "from bench.api import Method\nBase = type('Base', (Method,), {})\n"
        "class Dynamic(Base):\n    name = 'dynamic'\n    citation = 'made at import'\n")
    registry = plugins.load("methods")
    assert registry["dynamic"].is_loaded and registry["dynamic"].citation == "made at import"


def test_install_does_not_create_top_level_methods_or_datasets_packages(tmp_path):
    # Run outside the checkout, where only what `pip install` put on sys.path is importable
    # (PYTHONPATH, which points the tests' subprocesses at a worktree, would add the checkout).
    code = "import importlib.util as u, bench; print(u.find_spec('methods'), bench.__name__)"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True,
                         env=env)
    assert out.stdout.split() == ["None", "bench"]


def test_unknown_names_list_the_known_ones():
    with pytest.raises(BenchError, match=r"unknown method 'nope'; known: .*br"):
        plugins.get("methods", "nope")
    assert plugins.resolve_names("datasets", "tiny,tiny-official") == ["tiny", "tiny-official"]
    with pytest.raises(BenchError, match="unknown dataset 'x'"):
        plugins.resolve_names("datasets", "tiny,x")


def test_method_view_compatibility_check():
    class ImageOnly(Method):
        name = "img"
        accepts = frozenset({"image"})

    with pytest.raises(BenchError, match="method 'img' needs a view of kind image; dataset 'toy' has kind.s. features"):
        ImageOnly.check_compatible(make())


def test_ignore_mask_follows_subsets_and_is_validated():
    ignore = np.array([[0, 0], [1, 0], [0, 1]])
    data = make(ignore=ignore)
    assert data.ignore.dtype == bool
    assert data.subset([2, 1]).ignore.tolist() == [[False, True], [True, False]]
    assert data.fingerprint() != make().fingerprint()
    with pytest.raises(BenchError, match="ignore mask must be 0/1"):
        make(ignore=np.ones((2, 2)))
