"""The command line as a user meets it: list, run (with resume), report, one-line errors."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bench import plugins, runner
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

    # --metrics: those columns only, in that order, in the tables and the pairwise tests
    assert main(["report", "--format", "md", "--metrics", "mAP,hamming_loss"]) == 0
    header = (tmp_path / "reports" / "tiny__kfold3.md").read_text().splitlines()[2]
    assert header == "| Method | mAP ↑ | Hamming loss ↓ |"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["run", "--method", "nope", "--dataset", "tiny"], "bench: error: unknown method 'nope'; known:"),
        (["run", "--method", "br", "--dataset", "nope"], "bench: error: unknown dataset 'nope'; known:"),
        (["run", "--method", "br", "--dataset", "tiny", "--set", "lr=1"], "no selected method has a hyper-parameter 'lr'"),
        (["run", "--method", "br", "--dataset", "tiny", "--protocol", "official"], "has no official train/test split"),
        (["report"], "bench: error: no finished run in"),
        (["report", "--metrics", "mAP,map_at_5"], "bench: error: --metrics: unknown metric(s) map_at_5; expected names"),
        (["report", "--metrics", ""], "bench: error: --metrics: unknown metric(s) (none given); expected names"),
    ],
)
def test_user_errors_are_one_line(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_console_script_help_works():
    out = subprocess.run([sys.executable, "-m", "bench.cli", "run", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "--protocol {kfold,official,holdout}" in out.stdout


def ci_commands() -> list[str]:
    """The commands of `.ci/run` after its preamble (comments, `set`, `cd`)."""
    lines = (ROOT / ".ci" / "run").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith(("#", "set ", "cd "))]


def test_readme_test_commands_are_what_ci_runs():
    commands = ci_commands()
    assert any("pytest" in c for c in commands) and any(c.startswith(".venv/bin/ruff check") for c in commands)
    block = "\n".join(commands)
    assert f"```bash\n{block}\n```" in (ROOT / "README.md").read_text()


def test_ci_installs_from_pypi_alone():
    import tomllib

    ci = "\n".join(ci_commands())
    assert not re.search(r"--(extra-)?index-url|--find-links|(^|\s)-[fi]\s|git\+|://", ci), ci
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = project["dependencies"] + [r for extra in project["optional-dependencies"].values() for r in extra]
    assert not [r for r in requirements if "://" in r or "@" in r]  # names and version bounds only


# --------------------------------------------------------------------------- light start
HEAVY = ("torch", "torchvision", "mlflow", "scikit_posthocs", "matplotlib")
PROBE = ("import sys; from bench.cli import main; rc = main(sys.argv[1:]); "
         f"print('imported:', ' '.join(m for m in {HEAVY!r} if m in sys.modules)); sys.exit(rc)")


@pytest.mark.parametrize("argv", [["list"], ["run", "--method", "br", "--folds", "2", "--no-progress", "--no-mlflow"]])
def test_list_and_a_br_run_leave_torch_and_mlflow_unimported(argv):
    """`bench list` and `bench run --method br` (on the default dataset) never import torch, whose
    import costs 1-2 s and ~600 MiB, nor MLflow when it is off, nor the leaderboard's statistics and
    figures when there is no leaderboard to build (a fresh process: this one has torch)."""
    out = subprocess.run([sys.executable, "-c", PROBE, *argv], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "imported:"
    if argv[0] == "run":
        assert "2 job(s) run" in out.stdout


# --------------------------------------------------------------------------- bad input, refused up front
def custom_views(root: Path, n: int = 100, **arrays) -> None:
    rng = np.random.default_rng(0)
    folder = root / "custom-views"
    folder.mkdir(parents=True, exist_ok=True)
    content = {"Y": rng.integers(0, 2, size=(n, 3)), "a": rng.normal(size=(n, 4)), **arrays}
    np.savez(folder / "views.npz", **{k: v for k, v in content.items() if v is not None})


def custom_csvs(root: Path, labels: str, view: str) -> None:
    folder = root / "custom-views"
    (folder / "views").mkdir(parents=True, exist_ok=True)
    (folder / "labels.csv").write_text(labels)
    (folder / "views" / "1_a.csv").write_text(view)


LABELS = "x,y\n" + "".join(f"{i % 2},{(i // 2) % 2}\n" for i in range(30))
VIEW = "f1,f2\n" + "".join(f"{i * 0.5},{i % 7 * 1.5}\n" for i in range(30))


def custom_images(root: Path, listed: str) -> None:
    folder = root / "custom-images"
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (root / "secret.jpg").write_bytes(b"\xff\xd8 outside the images folder \xff\xd9")
    (folder / "labels.csv").write_text(f"image,cat\n{listed},1\n")


BAD_INPUT = {
    "--set with a string for a float": (
        None, ["--set", "C=abc"], "--set C='abc': method 'br' expects C: float, got the string 'abc'"),
    "--set with a boolean for a float": (
        None, ["--set", "C=true"], "--set C=True: method 'br' expects C: float, got the boolean True"),
    "--set outside scikit-learn's constraints": (
        None, ["--set", "C=-1"], "The 'C' parameter of BinaryRelevance must be a float in the range (0.0, inf]"),
    "--set twice": (None, ["--set", "C=1", "--set", "C=2"], "--set C is given twice"),
    "--seeds empty": (None, ["--seeds", ""], "argument --seeds: expects comma-separated integers"),
    "--seeds repeated": (None, ["--seeds", "0,0"], "argument --seeds: a seed is given twice in '0,0'"),
    "--jobs 0": (None, ["--jobs", "0"], "argument --jobs: expects a positive number of workers, or -1"),
    "--threads 0": (None, ["--threads", "0"], "argument --threads: expects an integer >= 1, got 0"),
    "--method empty": (None, ["--method", ","], "no method given"),
    "empty npz file": (
        lambda root: (custom_views(root), (root / "custom-views" / "views.npz").write_bytes(b"")),
        ["--dataset", "custom-views"], "views.npz: not a readable .npz file (No data left in file)"),
    "npz without examples": (
        lambda root: custom_views(root, n=0), ["--dataset", "custom-views"], "dataset 'custom-views': no examples"),
    "a one-example hold-out": (
        lambda root: custom_views(root, n=1), ["--dataset", "custom-views", "--protocol", "holdout"],
        "has 1 example(s); a hold-out split needs at least 2"),
    "train and test overlap (a leak)": (
        lambda root: custom_views(root, train_idx=np.arange(0, 70), test_idx=np.arange(20, 100)),
        ["--dataset", "custom-views"], "splits 'train' and 'test' share 50 example(s) (first: index 20)"),
    "an index listed twice": (
        lambda root: custom_views(root, train_idx=np.r_[0:50, 3], test_idx=np.arange(50, 100)),
        ["--dataset", "custom-views"], "split 'train' lists 1 example(s) more than once (first: index 3)"),
    "a zero-column view": (
        lambda root: custom_views(root, b=np.zeros((100, 0))), ["--dataset", "custom-views"],
        "feature view 'b' must be 2-D [N, d] with d >= 1, got shape (100, 0)"),
    "duplicate label names": (
        lambda root: custom_views(root, label_names=np.array(["a", "b", "a"])), ["--dataset", "custom-views"],
        "duplicate label name(s) ['a']"),
    "labels.csv without a header": (
        lambda root: custom_csvs(root, LABELS.split("\n", 1)[1], VIEW), ["--dataset", "custom-views"],
        "labels.csv: the first row (0, 0) looks like data, not a header; add a header row of label names"),
    "a view csv without a header": (
        lambda root: custom_csvs(root, LABELS, VIEW.split("\n", 1)[1]), ["--dataset", "custom-views"],
        "1_a.csv: the first row (0.0, 0.0) looks like data, not a header; add a header row of feature names"),
    "duplicate columns in labels.csv": (
        lambda root: custom_csvs(root, LABELS.replace("x,y", "x,x", 1), VIEW), ["--dataset", "custom-views"],
        "labels.csv: duplicate column name(s) ['x'] in the header row"),
    "a label that is not 0/1 (shown as a number)": (
        lambda root: custom_views(root, Y=np.full((100, 3), 2, dtype=np.uint8)), ["--dataset", "custom-views"],
        "label 'label0' of row 0 is 2; labels must be 0 or 1"),
    "an image path leaving images/": (
        lambda root: custom_images(root, "../../secret.jpg"), ["--dataset", "custom-images"],
        "image path '../../secret.jpg' leaves"),
    "an absolute image path": (
        lambda root: custom_images(root, str(root / "secret.jpg")), ["--dataset", "custom-images"],
        "secret.jpg' leaves"),
}


@pytest.mark.parametrize("case", BAD_INPUT)
def test_bad_input_is_refused_before_any_job_in_one_line(case, tmp_path, capsys):
    setup, argv, message = BAD_INPUT[case]
    if setup:
        setup(tmp_path / "data")
    args = ["run", "--method", "br", "--dataset", "tiny", "--folds", "2", "--no-progress"]
    overridden = {argv[i]: i for i in range(0, len(argv) - 1, 2)}
    for option in list(overridden):
        if option in args:  # the case's value replaces the default one
            del args[args.index(option):args.index(option) + 2]
    assert main(args + argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("bench: error: ") and err.count("\n") == 1, err
    assert message in err and "Traceback" not in err
    assert not list((tmp_path / "results").rglob("*.json"))  # no job ran


@pytest.mark.parametrize("argv, message", [
    (["run", "--method", "br", "--protocol", "loo"],
     "argument --protocol: invalid choice: 'loo' (choose from 'kfold', 'official', 'holdout')"),
    (["run", "--method", "br", "--seeds", "a,b"], "argument --seeds: expects comma-separated integers"),
    (["run", "--method", "br", "--seeds", "-1"], "argument --seeds: seeds must be >= 0, got '-1'"),
    (["run", "--method", "br", "--folds", "1"], "argument --folds: expects an integer >= 2, got 1"),
    (["run", "--method", "br", "--jobs", "two"], "argument --jobs: expects an integer, got 'two'"),
    (["run", "--dataset", "tiny"], "bench run needs --method: a method name (`br`, the binary-relevance baseline, "
                                   "to start), several comma-separated, or all; `bench list` shows them"),
    (["run", "--method", "br", "--bogus"], "unrecognized arguments: --bogus"),
    (["frob"], "argument command: invalid choice: 'frob'"),
    ([], "the following arguments are required: command"),
    (["run", "--method", "br", "--device", "tpu"], "--device must be auto, cpu, cuda or cuda:N, got 'tpu'"),
    (["run", "--method", "br", "--feature-extractor", "resnet101@big"],
     "--feature-extractor expects BACKBONE or BACKBONE@SIZE (e.g. resnet101@448), got 'resnet101@big'"),
])
def test_usage_errors_are_the_same_one_line(argv, message, capsys):
    """argparse's own refusals print no usage block: one `bench: error:` line, exit 2, like the rest."""
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("bench: error: ") and captured.err.count("\n") == 1, captured.err
    assert message in captured.err and not captured.out


def test_bad_bench_threads_is_refused_in_one_line(monkeypatch, capsys):
    monkeypatch.setenv("BENCH_THREADS", "many")
    assert main(["run", "--method", "br", "--dataset", "tiny", "--no-progress"]) == 2
    assert capsys.readouterr().err == "bench: error: $BENCH_THREADS expects an integer, got 'many'\n"


def test_threads_option_is_the_limit_every_job_runs_and_records(tmp_path, capsys):
    assert main(["run", "--method", "br", "--dataset", "tiny", "--folds", "2", "--threads", "3", "--no-progress"]) == 0
    records = [json.loads(p.read_text()) for p in (tmp_path / "results" / "tiny" / "br").glob("*.json")]
    assert len(records) == 2
    for record in records:
        threads = record["environment"]["threads"]
        assert threads["limit"] == 3 and threads["openblas"] == 3  # above $BENCH_THREADS=1 of the suite


def test_an_unwritable_results_folder_is_found_before_any_job(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    argv = ["--results", str(blocker / "results"), "run", "--method", "br", "--dataset", "tiny", "--no-progress"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"results folder {blocker / 'results'} cannot be written" in err


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_results_folder_is_found_before_any_job(tmp_path, capsys):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    assert main(["--results", str(folder), "run", "--method", "br", "--dataset", "tiny", "--no-progress"]) == 2
    assert "cannot be written (Permission denied)" in capsys.readouterr().err


def test_a_read_only_mount_is_found_before_any_job(tmp_path, monkeypatch, capsys):
    """As root (this VM) no folder refuses writes, so the read-only mount's EROFS is simulated where
    the probe meets it; the jobs would have run first before the probe existed."""
    import errno
    import tempfile

    from bench import runner as runner_module

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    monkeypatch.setattr(runner_module, "run_jobs", lambda *a, **k: pytest.fail("a job ran before the probe"))
    (tmp_path / "results").mkdir()
    assert main(["run", "--method", "br", "--dataset", "tiny", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err == (f"bench: error: results folder {tmp_path / 'results'} cannot be written (Read-only file system); "
                   "choose another with --results or $BENCH_RESULTS\n")


def test_too_many_folds_warn_in_one_line():
    argv = ["run", "--method", "br", "--dataset", "tiny", "--folds", "20", "--no-progress"]
    out = subprocess.run([sys.executable, "-m", "bench.cli", *argv], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    from iterstrat.ml_stratifiers import MultilabelStratifiedKFold

    from bench.runner import load_dataset

    Y = load_dataset("tiny", "unused").Y
    folds = MultilabelStratifiedKFold(n_splits=20, shuffle=True, random_state=0).split(np.zeros((120, 1)), Y)
    smallest = min(len(test) for _, test in folds)
    warnings = [line for line in out.stderr.splitlines() if "fewer than 10" in line]
    assert warnings == [f"bench: WARNING: dataset 'tiny': kfold test folds hold as few as {smallest} examples "
                        "(fewer than 10): their metrics are noisy and partly undefined; use fewer folds"]


def test_an_image_that_fails_to_decode_in_a_loader_worker_is_one_line_naming_it(tmp_path, capsys):
    """The file is found bad only when a DataLoader worker decodes it, so the job fails (exit 1,
    after the other jobs): in one line naming the file, not with the worker's traceback."""
    from PIL import Image

    folder = tmp_path / "data" / "custom-images"
    (folder / "images").mkdir(parents=True)
    rows = []
    for i in range(12):
        buffer = io.BytesIO()
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(buffer, "JPEG")
        data = buffer.getvalue()
        (folder / "images" / f"{i}.jpg").write_bytes(data[: len(data) // 2] if i == 5 else data)
        rows.append(f"{i}.jpg,{'test' if i >= 8 else 'train'},{i % 2},{(i // 2) % 2}\n")
    (folder / "labels.csv").write_text("image,split,a,b\n" + "".join(rows))
    settings = ["backbone=small-cnn", "pretrained=false", "image_size=16", "resize=none", "epochs=1",
                "batch_size=4", "num_workers=1"]
    argv = ["run", "--method", "der", "--dataset", "custom-images", "--seeds", "0", "--no-progress", "--device", "cpu"]
    assert main(argv + [a for s in settings for a in ("--set", s)]) == 1
    err = capsys.readouterr().err
    failed = [line for line in err.splitlines() if line.startswith("bench: job failed:")]
    assert len(failed) == 1 and "Traceback" not in err and "worker" not in err, err
    assert f"image file {folder / 'images' / '5.jpg'} cannot be decoded" in failed[0]


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


# --------------------------------------------------------------------------- --smoke
# A method with a schedule (the common names epochs, steps_per_epoch) that records what it ran.
SCHEDULED = """
import numpy as np
from bench.api import Method


class Scheduled(Method):
    name = "scheduled"

    def __init__(self, epochs: int = 50, steps_per_epoch: int | None = None, lr: float = 0.1):
        self.epochs, self.steps_per_epoch, self.lr = epochs, steps_per_epoch, lr

    def fit(self, train, val=None):
        self.prior_ = train.Y.mean(0)
        self.history_ = [{"epoch": e + 1, "loss": 1.0 / (e + 1)} for e in range(self.epochs)]
        return self

    def predict_scores(self, data):
        return np.tile(self.prior_, (data.n_samples, 1))
"""


def _stored(root: Path, method: str) -> list[dict]:
    return [json.loads(p.read_text()) for p in (root / "results" / "tiny" / method).glob("*.json")]


def test_smoke_runs_a_tiny_schedule_over_set_as_jobs_of_their_own(isolated, tmp_path, capsys):
    (isolated / "methods" / "scheduled.py").write_text(SCHEDULED)
    base = ["run", "--method", "scheduled,br", "--dataset", "tiny", "--folds", "2", "--no-progress"]
    assert main([*base, "--set", "scheduled.epochs=3"]) == 0
    capsys.readouterr()
    assert main([*base, "--set", "scheduled.epochs=3", "--smoke"]) == 0
    # br has none of the schedule's names, yet its smoke jobs are jobs of their own, not the real ones
    assert "4 job(s) run, 0 already in" in capsys.readouterr().out
    for method in ("scheduled", "br"):
        records = _stored(tmp_path, method)
        assert sorted(r["config"].get("smoke", False) for r in records) == [False, False, True, True]
        assert len({r["job_id"] for r in records}) == 4
    smoke = [r for r in _stored(tmp_path, "scheduled") if r["config"].get("smoke")]
    real = [r for r in _stored(tmp_path, "scheduled") if not r["config"].get("smoke")]
    # the schedule wins over --set (and is not reported as the user's override); the rest is untouched
    assert all(r["config"]["params"]["epochs"] == 1 and r["config"]["params"]["steps_per_epoch"] == 2
               and r["config"]["params"]["lr"] == 0.1 and len(r["history"]) == 1 and r["overrides"] == {}
               for r in smoke)
    assert all(r["config"]["params"]["epochs"] == 3 and len(r["history"]) == 3 for r in real)


def test_smoke_runs_keep_only_the_first_examples_of_each_fold(isolated, tmp_path, capsys, monkeypatch):
    from bench import params

    monkeypatch.setattr(params, "SMOKE_EXAMPLES", 7)
    base = ["run", "--method", "br", "--dataset", "tiny", "--folds", "2", "--no-progress"]
    assert main(base) == 0 and main([*base, "--smoke"]) == 0
    capsys.readouterr()
    records = _stored(tmp_path, "br")
    smoke = [r for r in records if r["config"].get("smoke")]
    real = [r for r in records if not r["config"].get("smoke")]
    assert len(smoke) == len(real) == 2
    assert all(r["n_train"] == 7 and r["n_test"] == 7 for r in smoke)
    assert all(r["n_train"] > 7 and r["n_test"] > 7 for r in real)


def test_smoke_runs_stay_out_of_real_tables_and_show_apart_when_asked(isolated, tmp_path, capsys, caplog):
    (isolated / "methods" / "scheduled.py").write_text(SCHEDULED)
    base = ["run", "--method", "scheduled,br", "--dataset", "tiny", "--folds", "2", "--no-progress"]
    assert main(base) == 0
    real_table = (tmp_path / "reports" / "tiny__kfold2.md").read_text()
    capsys.readouterr()
    assert main([*base, "--smoke"]) == 0
    out = capsys.readouterr().out
    assert "| br (smoke) |" in out and "| scheduled (smoke) |" in out  # what the smoke run printed
    assert (tmp_path / "reports" / "tiny__kfold2.md").read_text() == real_table  # real reports untouched
    assert "br (smoke)" in (tmp_path / "reports" / "smoke" / "tiny__kfold2.md").read_text()

    caplog.clear()
    assert main(["report", "--format", "md", "--no-leaderboard"]) == 0
    out = capsys.readouterr().out
    assert "| br |" in out and "(smoke)" not in out
    [left_out] = [r.getMessage() for r in caplog.records if "left out" in r.getMessage()]
    assert "4 smoke run(s) of `bench run --smoke`" in left_out and "other hyper-parameters" not in left_out

    caplog.clear()
    assert main(["report", "--format", "md", "--no-leaderboard", "--smoke"]) == 0
    out = capsys.readouterr().out
    assert "| br (smoke) |" in out and "| br |" not in out
    assert not [r for r in caplog.records if "left out" in r.getMessage()]  # smoke runs are current, not stale
    assert (tmp_path / "reports" / "tiny__kfold2.md").read_text() == real_table


def test_smoke_runs_are_not_logged_to_mlflow(isolated, monkeypatch, capsys):
    from bench import tracking

    monkeypatch.setenv("BENCH_MLFLOW", "1")
    monkeypatch.setattr(tracking.Tracker, "for_results", lambda *a, **k: pytest.fail("smoke runs went to MLflow"))
    assert main(["run", "--method", "br", "--dataset", "tiny", "--folds", "2", "--no-progress", "--smoke"]) == 0
    assert main(["report", "--smoke", "--no-leaderboard", "--format", "md"]) == 0


def test_smoke_schedule_is_applied_on_top_of_set_and_scale_defaults():
    from bench.params import SMOKE_SCHEDULE, resolve

    cls = type("M", (), {"name": "m"})  # resolve reads get_params from an instance
    cls.get_params = lambda self, deep=False: {"epochs": 60, "steps_per_epoch": None, "lr": 0.01}
    resolved = resolve(cls, {"epochs": 20, "lr": 0.1}, {"epochs": 10, "m.steps_per_epoch": 5}, smoke=True)
    assert resolved.params == {"epochs": SMOKE_SCHEDULE["epochs"], "steps_per_epoch": SMOKE_SCHEDULE["steps_per_epoch"],
                               "lr": 0.1}
    assert resolved.overrides == {"lr": 0.1} and resolved.scale_defaults == {}
    assert resolve(cls, {"epochs": 20}, {}).params["epochs"] == 20  # without --smoke: untouched


# --------------------------------------------------------------------------- small things
def test_version_prints_the_package_and_the_code_version_results_record(tmp_path, capsys):
    import importlib.metadata

    assert main(["run", "--method", "br", "--dataset", "tiny", "--folds", "2", "--no-progress"]) == 0
    recorded = {r["environment"]["code"] for r in _stored(tmp_path, "br")}
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    out = capsys.readouterr().out
    assert exit_.value.code == 0 and out.count("\n") == 1
    assert out.startswith(f"bench {importlib.metadata.version('bench-multilabel')} (bench-multilabel); "
                          f"code {recorded.pop()} ")


def test_list_columns_fit_the_longest_name(isolated, capsys):
    """Every name, however long (`nus-wide-features`, a plug-in's), leaves one space before its column."""
    long_name = "a-dataset-with-a-very-long-name"
    (isolated / "datasets" / "long.py").write_text(
        "from bench.api import Dataset\n"
        f"class Long(Dataset):\n    name = {long_name!r}\n    description = 'on disk, absent'\n")
    assert main(["list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    methods_at, datasets_at = lines.index(next(x for x in lines if x.startswith("Methods"))), \
        lines.index(next(x for x in lines if x.startswith("Datasets")))
    entries = [x for x in lines[methods_at + 1:] if x.startswith("  ") and x.strip()]
    named = [x for x in entries if not x.startswith("   ")]
    assert any(x.split()[0] == "nus-wide-features" for x in named)
    column = len(long_name) + 3  # two spaces of indent, the longest name, one space
    for line in named:
        name = line.split()[0]
        assert line[:column] == f"  {name:<{len(long_name)}} " and line[column] != " ", line
    descriptions = [x for x in lines[datasets_at + 1:] if x.startswith("   ")]
    assert descriptions and all(x[:column].isspace() and x[column] != " " for x in descriptions)


def test_dataset_all_names_what_it_skips_and_why_in_one_line(isolated, tmp_path, capsys, caplog):
    (isolated / "datasets" / "zbroken.py").write_text(
        "import no_such_module_anywhere\nfrom bench.api import Dataset\n"
        "class Z(Dataset):\n    name = 'zbroken'\n")
    assert main(["run", "--method", "br", "--dataset", "all", "--folds", "2", "--no-progress"]) == 0
    [line] = [r.getMessage() for r in caplog.records if r.getMessage().startswith("--dataset all")]
    skipped, total = map(int, re.match(r"--dataset all: skipping (\d+) of (\d+) dataset\(s\) not usable under ", line).groups())
    assert line.startswith(f"--dataset all: skipping {skipped} of {total} dataset(s) not usable under {tmp_path / 'data'}: ")
    assert "coco2014, voc2007, voc2012 (files absent: see `bench fetch NAME`)" in line
    assert "nus-wide, nus-wide-features, scene, taobao (files absent: see docs/datasets.md, 'Datasets on disk')" in line
    assert "broken: zbroken (plug-in file" in line and "no_such_module_anywhere" in line
    assert "\n## Datasets on disk " in (ROOT / "README.md").read_text()  # the section the hint names
    stored = {p.parent.parent.name for p in (tmp_path / "results").rglob("*.json")}
    assert stored == {"tiny", "tiny-official", "yeast", "mnist-mosaic"} and total - skipped == len(stored)
    assert total == len(plugins.load("datasets"))  # every registered dataset, the broken one included


def test_an_absent_dataset_named_explicitly_stays_an_error(capsys):
    assert main(["run", "--method", "br", "--dataset", "voc2007", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "trainval.txt: image set file not found" in err
