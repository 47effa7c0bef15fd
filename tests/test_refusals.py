"""Every method's own checks run before the first job (issue 29): one ``bench: error:`` line, exit 2,
nothing run, nothing stored; the checks that need the dataset read it (and a label-embedding file)
once, before any job."""

from __future__ import annotations

import os
import pickle
import socket
import time

import numpy as np
import pytest

from bench import params, plugins, runner
from bench.cli import main
from bench.errors import BenchError

RUN = ["run", "--folds", "2", "--no-progress", "--device", "cpu", "--jobs", "1"]


@pytest.fixture
def no_job(monkeypatch):
    """A refusal must come before any job: running one fails the test."""
    monkeypatch.setattr(runner, "run_jobs", lambda *a, **k: pytest.fail("a job ran before the refusal"))
    monkeypatch.setattr(runner, "run_task", lambda *a, **k: pytest.fail("a job ran before the refusal"))


def _glove(path, lines):
    path.write_text("".join(f"{line}\n" for line in lines))
    return str(path)


def _pickle_naming_a_missing_module(path):
    path.write_bytes(b"ca_module_that_is_not_installed\nVectors\n.")  # GLOBAL opcode: imports the module
    return str(path)


VECTORS = [f"l{i} {' '.join(str(0.1 * (i + j)) for j in range(4))}" for i in range(4)]

CASES = {
    "rmlc hidden=0": (["--method", "rmlc", "--dataset", "tiny", "--set", "hidden=0"],
                      "method 'rmlc': hidden must be an integer >= 1, got 0"),
    "der alpha=-1": (["--method", "der", "--dataset", "tiny", "--set", "alpha=-1.0"],
                     "method 'der': alpha and beta must be >= 0, got alpha=-1.0"),
    "order_free_rnn beam=0": (["--method", "order_free_rnn", "--set", "beam=0"],
                              "method 'order_free_rnn': beam must be a positive integer, got 0"),
    "order_free_rnn beam wider than the label set": (
        ["--method", "order_free_rnn", "--set", "beam=1000"],
        "method 'order_free_rnn': beam must be at most the number of labels (10 in dataset 'mnist-mosaic'), got 1000"),
    "cmsg heads not dividing the width": (
        ["--method", "cmsg", "--dataset", "tiny", "--set", "sga_heads=3"],
        "method 'cmsg': sga_heads=3 must divide the token width 256"),
    "cmsg heads not dividing the small CNN's width": (
        ["--method", "cmsg", "--set", "saa_heads=3"], "method 'cmsg': saa_heads=3 must divide the token width 128"),
    "retdm more neighbours than training examples": (
        ["--method", "retdm", "--dataset", "tiny", "--set", "n_neighbours=60"],  # 2 folds of 120: 60 to train on
        "method 'retdm': n_neighbours must be smaller than the smallest training part (60 examples on dataset "
        "'tiny'), got 60"),
    "epochs=-1 hidden by --smoke": (["--method", "rmlc", "--dataset", "tiny", "--set", "epochs=-1", "--smoke"],
                                    "values --smoke replaces epochs=-1: method 'rmlc': epochs must be a positive "
                                    "integer, got -1"),
    "a malformed GloVe line": (
        lambda d: ["--method", "cmsg", "--dataset", "tiny", "--set",
                   f"label_embedding={_glove(d / 'g.txt', [*VECTORS[:2], 'l2 0.5', *VECTORS[3:]])}"],
        "g.txt: line 3 has 1 values, expected 4"),
    "a label word missing from the GloVe file": (
        lambda d: ["--method", "cmsg", "--dataset", "tiny", "--set",
                   f"label_embedding={_glove(d / 'g.txt', VECTORS[:3])}"],
        "g.txt: label 'l3': word 'l3' is not in the vocabulary"),
    "an empty GloVe file": (
        lambda d: ["--method", "cmsg", "--dataset", "tiny", "--set", f"label_embedding={_glove(d / 'g.txt', [])}"],
        "g.txt: no word vectors in the file"),
    "a pickle of the wrong shape": (
        lambda d: ["--method", "cmsg", "--dataset", "tiny", "--set",
                   f"label_embedding={_pickle(d / 'v.pkl', np.ones((3, 5)))}"],
        "v.pkl: expected an array [4 labels, dim]"),
    "a pickle naming a missing module": (
        lambda d: ["--method", "cmsg", "--dataset", "tiny", "--set",
                   f"label_embedding={_pickle_naming_a_missing_module(d / 'v.pkl')}"],
        "v.pkl': cannot be read (ModuleNotFoundError: No module named 'a_module_that_is_not_installed')"),
}


def _pickle(path, obj):
    path.write_bytes(pickle.dumps(obj))
    return str(path)


@pytest.mark.parametrize("case", CASES)
def test_a_method_s_own_check_refuses_before_any_job(case, tmp_path, capsys, no_job):
    argv, message = CASES[case]
    if callable(argv):
        argv = argv(tmp_path)
    assert main(RUN + argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("bench: error: ") and err.count("\n") == 1, err
    assert message in err and "Traceback" not in err, err
    assert not list((tmp_path / "results").rglob("*.json"))


def test_a_good_label_embedding_file_passes_and_is_read_once_before_the_jobs(tmp_path, monkeypatch):
    """The check reads the file with the function the jobs use, so a worker in this process reuses it."""
    from bench import label_embeddings

    path = _glove(tmp_path / "g.txt", VECTORS)
    cls = plugins.get("methods", "cmsg")
    reads = []
    real = label_embeddings._glove_embeddings
    monkeypatch.setattr(label_embeddings, "_glove_embeddings", lambda *a: reads.append(a) or real(*a))
    label_embeddings._file_embeddings.cache_clear()
    data = runner.load_dataset("tiny", str(tmp_path))
    resolved = params.resolve(cls, {"label_embedding": path})
    params.validate(cls, resolved, "tiny", data, 60)
    assert len(reads) == 1
    assert np.allclose(label_embeddings.label_embeddings(data.label_names, path)[1], [0.1, 0.2, 0.3, 0.4])
    assert len(reads) == 1  # the job's read came from the check's


def test_the_data_checks_accept_the_boundary_values(tmp_path):
    """n_neighbours = n_train - 1 and beam = L are allowed; one more is refused."""
    data = runner.load_dataset("tiny", str(tmp_path))
    retdm = plugins.get("methods", "retdm")
    params.validate(retdm, params.resolve(retdm, {"n_neighbours": 59}), "tiny", data, 60)
    with pytest.raises(BenchError, match="n_neighbours must be smaller"):
        params.validate(retdm, params.resolve(retdm, {"n_neighbours": 60}), "tiny", data, 60)
    ofr = plugins.get("methods", "order_free_rnn")
    mosaic = runner.load_dataset("mnist-mosaic", str(tmp_path))  # 10 labels
    ofr(beam=10, backbone="small-cnn", image_size=None).check_data(mosaic, 96)
    with pytest.raises(BenchError, match="beam must be at most the number of labels"):
        ofr(beam=11, backbone="small-cnn", image_size=None).check_data(mosaic, 96)


def test_smoke_still_replaces_valid_values():
    """The check of the values --smoke replaces refuses only invalid ones: epochs=3 --smoke runs one epoch."""
    resolved = params.resolve(plugins.get("methods", "rmlc"), {"epochs": 3}, smoke=True)
    assert resolved.params["epochs"] == 1 and resolved.replaced == {"epochs": 3}
    params.validate(plugins.get("methods", "rmlc"), resolved, "tiny")


# ----------------------------------------------------------------------------- Ray's --address
def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("argv, message", [
    (["--backend", "ray", "--address", "127.0.0.1:{port}"],
     "--backend ray: cannot reach a Ray cluster at 127.0.0.1:{port} (Connection refused within 10 s)"),
    (["--address", "127.0.0.1:{port}"], "--address 127.0.0.1:{port} names a Ray cluster: it needs --backend ray"),
    (["--backend", "ray", "--address", "headnode"], "--address expects HOST:PORT or ray://HOST:PORT (or auto), "
                                                    "got 'headnode'"),
])
def test_a_ray_address_that_cannot_serve_is_refused_at_once(argv, message, capsys, no_job, tmp_path):
    pytest.importorskip("ray")
    port = _closed_port()
    started = time.monotonic()
    assert main(RUN + ["--method", "br", "--dataset", "tiny"] + [a.format(port=port) for a in argv]) == 2
    assert time.monotonic() - started < 30
    err = capsys.readouterr().err
    assert err.startswith("bench: error: ") and err.count("\n") == 1 and message.format(port=port) in err, err


def test_ray_s_retry_warnings_are_held_back_unless_the_connection_succeeds(capfd):
    """A port that answers but is not Ray's: Ray's client writes a warning to fd 2 each second for
    20 s before it gives up; they are not shown beside the one error line."""
    from bench.backends import ray as ray_backend

    with pytest.raises(RuntimeError), ray_backend._stderr_held(True):
        os.write(2, b"W gcs_client.cc: Failed to get cluster ID\n")
        raise RuntimeError("Failed to connect")
    assert capfd.readouterr().err == ""
    with ray_backend._stderr_held(True):
        os.write(2, b"connected after one retry\n")
    assert capfd.readouterr().err == "connected after one retry\n"


# ----------------------------------------------------------------------------- bench report's folder
def test_bench_report_into_a_folder_it_cannot_write_is_one_line(tmp_path, capsys, monkeypatch):
    """Permission denied (simulated: the suite may run as root, who writes anywhere) and a path
    under a file: one line naming the folder, no traceback."""
    import errno
    import tempfile

    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    assert main(["report", "--out", str(blocker / "reports")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"bench: error: reports folder {blocker / 'reports'} cannot be written (")
    assert err.count("\n") == 1 and "choose another with --out or $BENCH_REPORTS" in err

    def denied(*args, **kwargs):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))

    monkeypatch.setattr(tempfile, "mkstemp", denied)
    assert main(["report"]) == 2
    err = capsys.readouterr().err
    assert err == (f"bench: error: reports folder {tmp_path / 'reports'} cannot be written (Permission denied); "
                   "choose another with --out or $BENCH_REPORTS\n")


# ----------------------------------------------------------------------------- --smoke caps sizes
def test_smoke_caps_image_and_batch_sizes_of_a_paper_set_up():
    """`--smoke --paper-defaults --set pretrained=false` for DER: ResNet-101 at 448 px in batches of
    32 took over 12 minutes a fold on a CPU; the smoke job runs the same code on 64 px in batches
    of 8. A smaller value, or None (native size), is left as it is."""
    der = plugins.get("methods", "der")
    resolved = params.resolve(der, {"pretrained": False}, None, smoke=True)
    assert {k: resolved.params[k] for k in ("image_size", "resize", "batch_size", "epochs", "backbone")} == {
        "image_size": 64, "resize": 72, "batch_size": 8, "epochs": 1, "backbone": "resnet101"}
    assert resolved.smoke == {"epochs": 1, "steps_per_epoch": 2, "image_size": 64, "resize": 72, "batch_size": 8}
    kept = params.resolve(der, {"image_size": 32, "resize": None, "batch_size": 4}, None, smoke=True)
    assert (kept.params["image_size"], kept.params["resize"], kept.params["batch_size"]) == (32, None, 4)
    assert params.resolve(der, {}, None).params["image_size"] == 448  # without --smoke: untouched
    with pytest.raises(BenchError, match="batch_size must be a positive integer, got 0"):
        params.validate(der, params.resolve(der, {"batch_size": 0}, None, smoke=True))  # a cap only lowers
    # RETDM's training crop (240 by default) must fit in the capped resize (72): every smoke job of
    # `bench reproduce retdm IV --smoke` failed with "five_crop 240 is larger than resize 72"
    retdm = params.resolve(plugins.get("methods", "retdm"), {}, None, smoke=True).params
    assert retdm["five_crop"] <= retdm["resize"] and (retdm["five_crop"], retdm["resize"]) == (64, 72)


SIZED = """
import numpy as np
from bench.api import Method


class Sized(Method):
    name = "sized"

    def __init__(self, epochs: int = 50, batch_size: int = 32, image_size: int | None = 448):
        self.epochs, self.batch_size, self.image_size = epochs, batch_size, image_size

    def fit(self, train, val=None):
        self.prior_ = train.Y.mean(0)
        return self

    def predict_scores(self, data):
        return np.tile(self.prior_, (data.n_samples, 1))
"""


def test_capped_smoke_runs_are_current_not_stale(isolated, tmp_path, capsys, caplog):
    """The report's check that a stored run is what `bench run` would run today knows the caps."""
    import json
    import logging

    (isolated / "methods" / "sized.py").write_text(SIZED)
    plugins.load.cache_clear()
    assert main(["run", "--method", "sized", "--dataset", "tiny", "--folds", "2", "--no-progress", "--smoke"]) == 0
    stored = [json.loads(p.read_text()) for p in (tmp_path / "results" / "tiny" / "sized").glob("*.json")]
    assert [r["config"]["params"] for r in stored] == [{"epochs": 1, "batch_size": 8, "image_size": 64}] * 2
    capsys.readouterr()
    with caplog.at_level(logging.WARNING):
        assert main(["report", "--smoke", "--format", "md", "--no-leaderboard"]) == 0
    assert "| sized (smoke) |" in capsys.readouterr().out
    assert not [m for m in caplog.messages if "left out" in m]


# ----------------------------------------------------------------------------- Ctrl-C with --jobs 2
SLEEPY = """
import os, time
from pathlib import Path
import numpy as np
from bench.api import Method


class Sleepy(Method):
    name = "sleepy"

    def __init__(self, random_state: int = 0):
        self.random_state = random_state

    def fit(self, train, val=None):
        Path(os.environ["SLEEPY_MARKS"], f"{os.getpid()}-{train.n_samples}").touch()
        time.sleep(60)
        return self

    def predict_scores(self, data):
        return np.zeros((data.n_samples, data.n_labels))
"""


def test_ctrl_c_with_two_workers_is_one_line(isolated, tmp_path):
    """Ctrl-C reaches the whole foreground process group (bench and its loky workers): one line,
    exit 130, nothing from joblib or the resource tracker."""
    import signal
    import subprocess
    import sys

    (isolated / "methods" / "sleepy.py").write_text(SLEEPY)
    marks = tmp_path / "marks"
    marks.mkdir()
    env = {**os.environ, "SLEEPY_MARKS": str(marks)}
    cmd = [sys.executable, "-m", "bench.cli", "run", "--method", "sleepy", "--dataset", "tiny", "--folds", "2",
           "--jobs", "2", "--no-progress"]
    def as_in_a_terminal():  # its own process group, Ctrl-C not ignored (as it is under nohup or `&`)
        os.setsid()
        signal.signal(signal.SIGINT, signal.SIG_DFL)

    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=as_in_a_terminal)
    try:
        deadline = time.monotonic() + 60
        while len(list(marks.iterdir())) < 2 and time.monotonic() < deadline:  # both workers are fitting
            time.sleep(0.1)
        assert len(list(marks.iterdir())) == 2, proc.stderr.read() if proc.poll() is not None else "no fit started"
        os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130
    assert err == "bench: interrupted; finished jobs are stored, re-run the command to resume\n", err


def test_the_resource_trackers_warnings_alone_are_off_in_processes_started_by_the_workers(monkeypatch):
    """loky's resource tracker inherits PYTHONWARNINGS from bench: its late "FileNotFoundError"
    warnings after Ctrl-C (a race that failed the test above once in CI) are off, others are not."""
    import subprocess
    import sys

    from bench.backends import local

    monkeypatch.setenv("PYTHONWARNINGS", "default::DeprecationWarning")
    local._quiet_resource_tracker()
    local._quiet_resource_tracker()  # once only
    assert os.environ["PYTHONWARNINGS"] == f"default::DeprecationWarning,{local.TRACKER_WARNINGS_OFF}"
    code = "import warnings\nwarnings.warn('resource_tracker: /loky-1: FileNotFoundError')"
    for module, shown in [("joblib.externals.loky.backend.resource_tracker", False), ("bench.cli", True)]:
        script = f"exec({code!r}, {{'__name__': {module!r}}})"
        err = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True).stderr
        assert ("FileNotFoundError" in err) == shown, (module, err)


def test_order_free_rnn_refuses_a_decode_that_does_not_fit_in_memory(tmp_path, monkeypatch):
    """Beam search keeps regions [m, C], keys [m, A] and maps [L, m] (float32) per path of an
    evaluation batch (2 x batch_size images). Small CNN on 56 px mosaics: m = 14 x 14 = 196, C = 128,
    A = hidden = 512, L = 10: 4 * 196 * 650 = 509,600 bytes a path; with beam 10 and a budget of
    half of 2 GiB, batch_size 105 needs 1,070,160,000 bytes (fits), 106 needs 1,080,352,000 (not)."""
    import sys

    ofr = plugins.get("methods", "order_free_rnn")
    monkeypatch.setattr(sys.modules[ofr.__module__], "host_memory", lambda: 2 * 2**30)
    data = runner.load_dataset("mnist-mosaic", str(tmp_path))
    small = dict(backbone="small-cnn", pretrained=False, image_size=None, beam=10)
    ofr(**small, batch_size=105).check_data(data, 96)
    with pytest.raises(BenchError, match=r"beam=10 with batch_size=106 needs 1\.0 GiB to decode a batch, more "
                                         r"than half this machine's 2\.0 GiB; lower beam or batch_size"):
        ofr(**small, batch_size=106).check_data(data, 96)


def _voc_tree(root, n_train: int):
    """A VOC 2007 tree whose trainval set holds ``n_train`` images (the official split: one training part)."""
    from test_datasets_voc_coco_custom import VOC_TEST, write_voc

    trainval = {f"{100 + i:06d}": [("person" if i % 2 else "dog", 0)] for i in range(n_train)}
    write_voc(root, sets={"trainval": trainval, "test": VOC_TEST})
    return root


def test_a_validation_part_carved_from_too_few_training_examples_is_refused_before_any_job(
        tmp_path, capsys, no_job):
    """Order-Free RNN calibrates τ on val_fraction=0.1 of the training part: with 3 training images
    every job used to fail on its own; now one line before any job."""
    data = _voc_tree(tmp_path / "data", n_train=3)
    argv = ["--results", str(tmp_path / "results"), "--data-root", str(data), "run", "--method", "order_free_rnn",
            "--dataset", "voc2007", "--smoke", "--no-progress", "--no-mlflow"]
    assert main(argv) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[-1] == ("bench: error: method 'order_free_rnn' on dataset 'voc2007': training parts hold as few as 3 "
                       "examples; val_fraction=0.1 carves a validation part out of them, which needs at least 4")
    assert not list((tmp_path / "results").rglob("*.json"))


def test_with_method_all_such_an_entry_is_skipped_and_four_examples_are_enough(tmp_path, caplog):
    """Not strict (``--method all``): the entries that carve (ORF's val_fraction, RETDM's in-fold search
    of α) are skipped with a warning, the others kept; with 4 training examples all are built (RETDM
    with fewer neighbours than that)."""
    def methods_built(n_train):
        data = _voc_tree(tmp_path / f"data{n_train}", n_train)
        jobs = runner.build_jobs(["order_free_rnn", "retdm", "der"], ["voc2007"], protocol=None, n_folds=10,
                                 seeds=(0,), overrides={"retdm.n_neighbours": 2}, data_root=data, store_root=tmp_path / "results",
                                 strict=False, smoke=True)
        return {j.method for j in jobs}

    assert methods_built(3) == {"der"}
    assert "skipping: method 'retdm' on dataset 'voc2007': training parts hold as few as 3 examples; its in-fold " \
           "search carves a validation part out of them" in caplog.text
    assert "skipping: method 'order_free_rnn'" in caplog.text
    assert methods_built(4) == {"order_free_rnn", "retdm", "der"}


def test_a_small_official_test_part_is_warned_about_without_the_advice_to_use_fewer_folds(tmp_path, caplog):
    runner.build_jobs(["br"], ["voc2007"], protocol=None, n_folds=10, seeds=(0,), overrides={},
                      data_root=_voc_tree(tmp_path / "data", 4), store_root=tmp_path / "results")
    assert ("dataset 'voc2007': official test folds hold as few as 2 examples (fewer than 10): their metrics "
            "are noisy and partly undefined") in caplog.text
    assert "fewer folds" not in caplog.text
