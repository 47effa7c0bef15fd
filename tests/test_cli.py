"""The command line as a user meets it: list, run (with resume), report, one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench import runner
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


FAILING_METHODS = '''
import numpy as np
from bench.api import Method


class Prior(Method):
    name = "prior"

    def fit(self, train, val=None):
        self.prior_ = train.Y.mean(axis=0)
        return self

    def predict_scores(self, data):
        return np.tile(self.prior_, (data.n_samples, 1))


class Broken(Prior):
    name = "broken"

    def fit(self, train, val=None):
        raise ZeroDivisionError("boom")


class Interrupted(Prior):
    """Fits on the first call and is interrupted (Ctrl-C) on the second."""
    name = "interrupted"
    calls = [0]

    def fit(self, train, val=None):
        Interrupted.calls[0] += 1
        if Interrupted.calls[0] == 2:
            raise KeyboardInterrupt
        return super().fit(train, val)
'''


def stored_jobs(tmp_path, method):
    return sorted((tmp_path / "results" / "tiny" / method).glob("*.json"))


def test_exit_status_1_when_a_job_fails_and_the_others_are_stored(isolated, tmp_path, capsys):
    (isolated / "methods" / "failing.py").write_text(FAILING_METHODS)
    assert main(["run", "--method", "prior,broken", "--dataset", "tiny", "--folds", "3", "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert err.count("bench: job failed: broken on tiny") == 3 and "ZeroDivisionError: boom" in err
    assert len(stored_jobs(tmp_path, "prior")) == 3 and stored_jobs(tmp_path, "broken") == []


def test_exit_status_130_on_ctrl_c_keeps_finished_jobs_and_says_how_to_resume(isolated, tmp_path, capsys):
    (isolated / "methods" / "failing.py").write_text(FAILING_METHODS)
    argv = ["run", "--method", "interrupted", "--dataset", "tiny", "--folds", "3", "--no-progress"]
    assert main(argv) == 130
    err = capsys.readouterr().err
    assert "interrupted" in err and "re-run the command to resume" in err and "Traceback" not in err
    assert len(stored_jobs(tmp_path, "interrupted")) == 1  # the job finished before Ctrl-C is kept
    assert main(argv) == 0  # resumes: runs the two missing jobs only
    assert "2 job(s) run, 1 already in" in capsys.readouterr().out
    assert len(stored_jobs(tmp_path, "interrupted")) == 3


@pytest.mark.parametrize("argv", [
    ["run", "--method", "br", "--dataset", "tiny", "--folds", "1"],
    ["run", "--method", "br", "--dataset", "tiny", "--set", "C"],
    ["run", "--method", "br", "--dataset", "tiny", "--device", "tpu"],
    ["run", "--method", "br", "--dataset", "tiny", "--seeds", "a,b"],
    ["run", "--method", "br", "--dataset", "tiny", "--protocol", "loo"],
])
def test_exit_status_2_on_bad_input_before_any_job(argv, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc_info:  # argparse's own refusals exit as well
        raise SystemExit(main(argv))
    assert exc_info.value.code == 2
    err = capsys.readouterr().err
    assert "error:" in err.splitlines()[-1] and "Traceback" not in err
    assert not (tmp_path / "results").exists() or not list((tmp_path / "results").rglob("*.json"))


SPLIT_FROM_ENV = '''
import os
import numpy as np
from bench.api import Dataset
from bench.data import MultiLabelData


class Shifting(Dataset):
    name = "shifting"
    protocol = "official"
    embedded = True

    def load(self, data_root):
        rng = np.random.default_rng(0)
        X = rng.normal(size=(60, 3))
        Y = (X[:, :2] > 0).astype("uint8")
        first = int(os.environ["FIRST_TRAIN_EXAMPLE"])
        return MultiLabelData("shifting", {"f": X}, Y, ("a", "b"), protocol="official",
                              splits={"train": np.arange(first, 40), "test": np.arange(40, 60)})
'''


def test_a_changed_training_part_never_reuses_a_stored_result(isolated, tmp_path, monkeypatch, capsys):
    """Same data, same test part, another training part: a new job, not the stored one."""
    (isolated / "datasets" / "shifting.py").write_text(SPLIT_FROM_ENV)
    argv = ["run", "--method", "br", "--dataset", "shifting", "--seeds", "0", "--no-progress"]
    for first, expected in [(0, "1 job(s) run, 0 already in"), (0, "0 job(s) run, 1 already in"),
                            (10, "1 job(s) run, 0 already in")]:
        monkeypatch.setenv("FIRST_TRAIN_EXAMPLE", str(first))
        runner.load_dataset.cache_clear()  # the data changed on disk between two commands
        assert main(argv) == 0
        assert expected in capsys.readouterr().out
    records = [json.loads(p.read_text()) for p in (tmp_path / "results" / "shifting" / "br").glob("*.json")]
    assert sorted(r["n_train"] for r in records) == [30, 40]
