"""The golden-file check itself: regenerating never passes silently."""

from __future__ import annotations

import pytest
from conftest import check_golden


def test_a_matching_text_passes_and_a_different_one_fails(tmp_path):
    (tmp_path / "t.md").write_text("| a |\n")
    check_golden("t.md", "| a |\n", folder=tmp_path)
    with pytest.raises(AssertionError, match="t.md differs from the golden file"):
        check_golden("t.md", "| b |\n", folder=tmp_path)


@pytest.mark.parametrize("before, state", [("| a |\n", "unchanged"), ("| old |\n", "changed"), (None, "changed")])
def test_regenerating_writes_the_file_and_fails_the_run(tmp_path, monkeypatch, before, state):
    if before is not None:
        (tmp_path / "t.md").write_text(before)
    monkeypatch.setenv("BENCH_UPDATE_GOLDEN", "1")
    with pytest.raises(pytest.fail.Exception, match=f"t.md regenerated \\({state}\\), review the diff"):
        check_golden("t.md", "| a |\n", folder=tmp_path)
    assert (tmp_path / "t.md").read_text() == "| a |\n"
