"""The command line as a user meets it: list, run (with resume), report, one-line errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bench.cli import main
from bench.metrics import METRICS

ROOT = Path(__file__).resolve().parents[1]


def test_list_shows_methods_and_datasets(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "br" in out and "tiny" in out and "N=120 L=4 views=[a:5, b:3] protocol=kfold" in out


def test_run_prints_every_metric_writes_reports_and_resumes(capsys, tmp_path):
    assert main(["run", "--method", "br", "--dataset", "tiny", "--folds", "3", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "3 job(s) run, 0 already in" in out
    for metric in METRICS.values():
        assert f"| {metric.label} " in out
    assert (tmp_path / "reports" / "tiny__kfold3.md").exists()
    assert (tmp_path / "reports" / "tiny__kfold3.tex").exists()

    assert main(["run", "--method", "br", "--dataset", "tiny", "--folds", "3", "--no-progress"]) == 0
    assert "0 job(s) run, 3 already in" in capsys.readouterr().out

    assert main(["report", "--format", "md"]) == 0
    assert "| br |" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["run", "--method", "nope", "--dataset", "tiny"], "bench: error: unknown method 'nope'; known:"),
        (["run", "--method", "br", "--dataset", "nope"], "bench: error: unknown dataset 'nope'; known:"),
        (["run", "--method", "br", "--dataset", "tiny", "--set", "lr=1"], "no selected method has a hyper-parameter 'lr'"),
        (["run", "--method", "br", "--dataset", "tiny", "--protocol", "official"], "has no official train/test split"),
        (["report"], "bench: error: no finished run in"),
    ],
)
def test_user_errors_are_one_line(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_console_script_help_works():
    out = subprocess.run([sys.executable, "-m", "bench.cli", "run", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "--protocol {kfold,official,holdout}" in out.stdout


def test_readme_test_command_is_what_ci_runs():
    ci = (ROOT / ".ci" / "run").read_text()
    readme = (ROOT / "README.md").read_text()
    command = next(line for line in ci.splitlines() if "pytest" in line).strip()
    assert command in readme


def test_readme_plugin_example_runs_as_documented(isolated, capsys):
    readme = (ROOT / "README.md").read_text()
    example = readme.split("drop\na file into `methods/`:\n\n```python\n")[1].split("```")[0]
    (isolated / "methods" / "prior.py").write_text(example)
    assert main(["list"]) == 0 and "prior" in capsys.readouterr().out
    assert main(["run", "--method", "prior,br", "--dataset", "tiny", "--folds", "2", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "| Metric | br | prior |" in out
