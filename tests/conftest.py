"""Shared fixtures: isolated results/reports folders and a user plug-in folder with a tiny dataset;
shared checks: golden files, LaTeX shape, a plug-in's module."""

from __future__ import annotations

import os
import re
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from bench import plugins, runner

# A dataset plug-in written the way a user would drop one in: 120 examples, two feature views,
# four labels driven by the features (so a learner can beat chance), kfold protocol.
TINY_DATASET = '''
import numpy as np
from bench.api import Dataset
from bench.data import MultiLabelData


class Tiny(Dataset):
    name = "tiny"
    protocol = "kfold"
    embedded = True
    description = "120 synthetic examples for tests"

    def load(self, data_root):
        rng = np.random.default_rng(0)
        a = rng.normal(size=(120, 5)).astype("float32")
        b = rng.normal(size=(120, 3)).astype("float32")
        logits = np.c_[a[:, :2], b[:, :2]] * 2.0
        Y = (logits + rng.normal(scale=0.5, size=logits.shape) > 0).astype("uint8")
        return MultiLabelData("tiny", {"a": a, "b": b}, Y, ("l0", "l1", "l2", "l3"))


class TinyOfficial(Dataset):
    name = "tiny-official"
    protocol = "official"
    embedded = True

    def load(self, data_root):
        data = Tiny().load(data_root)
        idx = np.arange(120)
        return MultiLabelData("tiny-official", data.views, data.Y, data.label_names,
                              protocol="official", splits={"train": idx[:90], "test": idx[90:]})
'''


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """Each test gets its own results/reports/data folders and fresh plug-in caches."""
    monkeypatch.setenv("BENCH_RESULTS", str(tmp_path / "results"))
    monkeypatch.setenv("BENCH_REPORTS", str(tmp_path / "reports"))
    monkeypatch.setenv("BENCH_DATA_ROOT", str(tmp_path / "data"))
    # A new MLflow SQLite store costs seconds (migrations); tests of tracking switch it back on.
    monkeypatch.setenv("BENCH_MLFLOW", "0")
    plugin_root = tmp_path / "plugins"
    (plugin_root / "datasets").mkdir(parents=True)
    (plugin_root / "methods").mkdir()
    (plugin_root / "datasets" / "tiny.py").write_text(textwrap.dedent(TINY_DATASET))
    monkeypatch.setenv("BENCH_PLUGIN_PATH", str(plugin_root))
    plugins.load.cache_clear()
    runner.load_dataset.cache_clear()
    yield plugin_root
    plugins.load.cache_clear()
    runner.load_dataset.cache_clear()


@pytest.fixture
def one_torch_thread():
    """Small CPU tensors: one thread avoids OpenMP spin-waiting on a shared, busy machine (and
    keeps pytest-xdist workers from oversubscribing the cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def plugin_module(kind: str, name: str):
    """The module of a plug-in (imported by the plug-in loader under a private name)."""
    return sys.modules[plugins.get(kind, name).__module__]


GOLDEN = Path(__file__).parent / "golden"


def check_golden(name: str, text: str, folder: Path = GOLDEN) -> None:
    """``text`` must equal the golden file ``name``. With ``BENCH_UPDATE_GOLDEN=1`` the file is
    rewritten and the check fails all the same (a regenerated file compared with itself proves
    nothing): review the diff, then run the suite without the variable."""
    path = folder / name
    if os.environ.get("BENCH_UPDATE_GOLDEN"):
        changed = not path.exists() or path.read_text() != text
        path.write_text(text)
        pytest.fail(f"{name} regenerated ({'changed' if changed else 'unchanged'}), review the diff "
                    "and run again without BENCH_UPDATE_GOLDEN")
    assert text == path.read_text(), f"{name} differs from the golden file"


def check_latex_shape(tex: str) -> None:
    """Compile-shaped: balanced braces and math, booktabs rules in order, escaped specials."""
    body = tex.replace(r"\{", "").replace(r"\}", "")
    depth = 0
    for ch in body:
        depth += {"{": 1, "}": -1}.get(ch, 0)
        assert depth >= 0, "a } closes nothing"
    assert depth == 0, "unbalanced braces"
    assert tex.replace(r"\$", "").count("$") % 2 == 0
    assert tex.index(r"\toprule") < tex.index(r"\midrule") < tex.index(r"\bottomrule")
    assert tex.count(r"\begin{") == tex.count(r"\end{")
    assert not re.search(r"(?<!\\)[_%#]", re.sub(r"\\label\{[^}]*\}", "", tex)), "unescaped special character"
    n_columns = len(re.search(r"\\begin\{tabular\}\{([lcr]+)\}", tex)[1])
    rows = [line for line in tex.splitlines() if line.endswith(r"\\")]
    assert rows and all(len(re.findall(r"(?<!\\)&", line)) == n_columns - 1 for line in rows)
    assert tex.isascii(), "a character LaTeX's default input encoding may not know (escape it)"
