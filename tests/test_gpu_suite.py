"""benchmarks/gpu_suite.py without a GPU: its table (ratio against each target), the method
branches' ``measure`` modules joined as sections when present, and a failing section reported
without losing the others. (The full ``--quick`` dry run takes over 10 s on the 2-core VM, so it
is run by hand, not here.)"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest

SUITE = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_suite.py"


@pytest.fixture
def suite():
    spec = importlib.util.spec_from_file_location("gpu_suite", SUITE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_ratio_is_the_factor_by_which_a_target_is_met(suite):
    assert suite.ratio(1800.0, ">= 2000") == pytest.approx(0.9)
    assert suite.ratio(60.0, "< 120") == pytest.approx(2.0)
    assert suite.ratio(0.95, ">= 0.9") == pytest.approx(0.95 / 0.9)
    assert suite.ratio(3.0, "≥ 5") == pytest.approx(0.6)
    assert math.isnan(suite.ratio(3.0, None)) and math.isnan(suite.ratio(float("nan"), ">= 1"))


def test_sections_from_the_method_branches_join_the_table(suite, tmp_path, monkeypatch):
    (tmp_path / "bench_cmsg.py").write_text(
        "def measure(device, quick):\n"
        "    assert quick and device == 'cpu'\n"
        "    return [{'figure': 'cmsg steps/s', 'value': 12.5, 'unit': 'steps/s', 'target': '>= 10'}]\n")
    (tmp_path / "bench_retdm.py").write_text("def measure(device, quick):\n    raise RuntimeError('no luck')\n")
    monkeypatch.setattr(suite, "HERE", tmp_path)
    rows = suite.run_sections(["cmsg", "retdm", "order_free_rnn"], "cpu", quick=True)
    figures = [r["figure"] for r in rows]
    assert "cmsg steps/s" in figures
    assert "retdm: failed: RuntimeError: no luck" in figures  # reported; the next section still ran
    assert "order_free_rnn: benchmarks/bench_order_free_rnn.py not present" in figures
    table = suite.format_table(rows)
    line = next(t for t in table.splitlines() if "cmsg steps/s" in t)
    assert "12.5" in line and ">= 10" in line and "1.25" in line
