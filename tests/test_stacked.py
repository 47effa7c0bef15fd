"""Folds trained as one model (bench.stacked): each fold ends with the weights, history and scores
it gets when trained alone; a padded-and-masked batch updates as the unpadded one."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import plugin_module

from bench import plugins
from bench.errors import BenchError
from bench.protocols import make_splits
from bench.runner import load_dataset
from bench.stacked import FoldAdam, StackedFolds, fit_folds, padded_batches, stack_padded, supports_stacking

pytestmark = pytest.mark.usefixtures("one_torch_thread")

DIMS, HIDDEN, LABELS, LAM, LR = (3, 2), 6, 3, 0.1, 0.05


@pytest.fixture
def rmlc():
    return plugin_module("methods", "rmlc")


def fold_data(sizes, seed=0):
    """Per fold: float64 views [n, d_t] and labels [n, L] (folds of different sizes)."""
    rng = np.random.default_rng(seed)
    out = []
    for n in sizes:
        xs = [torch.as_tensor(rng.normal(size=(n, d))) for d in DIMS]
        out.append((xs, torch.as_tensor((rng.random((n, LABELS)) < 0.4).astype(np.float64))))
    return out


def nets(rmlc, k, label_correlation):
    """k float64 networks with different initial weights (and a non-zero S)."""
    out = []
    for i in range(k):
        net = rmlc.RMLCNet(list(DIMS), HIDDEN, LABELS, label_correlation, torch.Generator().manual_seed(i)).double()
        with torch.no_grad():
            net.S.normal_(generator=torch.Generator().manual_seed(100 + i))
        out.append(net)
    return out


def epoch_batches(sizes, batch_size, epoch):
    return [[o[s:s + batch_size] for s in range(0, n, batch_size)]
            for n, o in ((n, np.random.default_rng([n, epoch]).permutation(n)) for n in sizes)]


def train_alone(rmlc, net, data, batches_per_epoch):
    optimizer = rmlc.make_optimizer(net, LR)
    xs, y = data
    losses = []
    for batches in batches_per_epoch:
        for b in batches:
            bce, reg = rmlc.train_batch(net, optimizer, [x[b] for x in xs], y[b], LAM)
            losses.append(float(bce + reg))
    return losses


def train_stacked(rmlc, fold_nets, data, batches_per_epoch, batch_size):
    stack = StackedFolds(fold_nets)
    optimizer = FoldAdam(stack.params, LR)
    xs_all = tuple(stack_padded([d[0][t] for d in data]) for t in range(len(DIMS)))
    y_all = stack_padded([d[1] for d in data])
    folds = torch.arange(len(fold_nets))[:, None]
    losses = [[] for _ in fold_nets]
    for epoch_batches_ in batches_per_epoch:
        for index, mask, active in padded_batches(epoch_batches_, batch_size):
            idx = torch.as_tensor(index)
            total, _ = rmlc.stacked_train_batch(stack, optimizer, tuple(x[folds, idx] for x in xs_all),
                                                y_all[folds, idx], torch.as_tensor(mask, dtype=torch.float64),
                                                LAM, active)
            for i in active:
                losses[i].append(float(total[i]))
    for i in range(len(fold_nets)):
        stack.load_fold(i)
    return losses


@pytest.mark.parametrize("label_correlation", [True, False], ids=["rmlc", "rmlc_ns"])
def test_stacked_folds_get_the_weights_of_training_alone(rmlc, label_correlation):
    """THE test: three folds of different sizes (so the last batches are padded, and one fold has a
    batch the others lack), two epochs, float64: every fold's weights and per-batch losses match
    training it alone with RMLC's own Algorithm 1 and torch's fused Adam."""
    sizes, batch_size = (21, 18, 16), 6   # 4, 3 and 3 batches per epoch; last ones of 3, 6 and 4 rows
    data = fold_data(sizes)
    schedule = [epoch_batches(sizes, batch_size, e) for e in (1, 2)]
    alone = nets(rmlc, 3, label_correlation)
    stacked = [net for net in nets(rmlc, 3, label_correlation)]
    expected = [train_alone(rmlc, alone[i], data[i], [epoch[i] for epoch in schedule]) for i in range(3)]
    got = train_stacked(rmlc, stacked, data, schedule, batch_size)
    for i in range(3):
        np.testing.assert_allclose(got[i], expected[i], rtol=1e-10)
        for (name, p), q in zip(alone[i].named_parameters(), stacked[i].parameters(), strict=True):
            torch.testing.assert_close(q, p, rtol=1e-10, atol=1e-12, msg=f"fold {i}: {name}")
    # the weights moved (the comparison is not of untouched initial weights)
    assert not torch.allclose(alone[0].w_h, nets(rmlc, 1, label_correlation)[0].w_h)


def test_a_padded_and_masked_batch_updates_like_the_unpadded_one(rmlc):
    """Five rows as a batch of five, and padded to eight (three masked rows of other data): the same
    loss and the same weights after the update."""
    (xs, y), = fold_data((8,))
    rows = np.arange(5)
    plain, padded = nets(rmlc, 1, True), nets(rmlc, 1, True)
    train_stacked(rmlc, plain, [([x[:5] for x in xs], y[:5])], [[[rows]]], 5)
    losses = train_stacked(rmlc, padded, [(xs, y)], [[[rows]]], 8)
    alone = nets(rmlc, 1, True)[0]
    expected = train_alone(rmlc, alone, (xs, y), [[rows]])
    np.testing.assert_allclose(losses[0], expected, rtol=1e-12)
    for p, q, r in zip(plain[0].parameters(), padded[0].parameters(), alone.parameters(), strict=True):
        torch.testing.assert_close(q, p, rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(q, r, rtol=1e-12, atol=1e-14)


def test_padded_batches_masks_and_leaves_out_folds_without_a_batch():
    batches = [[np.array([4, 2, 0]), np.array([1])], [np.array([3, 1])]]
    out = padded_batches(batches, 3)
    assert [a for _, _, a in out] == [[0, 1], [0]]
    np.testing.assert_array_equal(out[0][0], [[4, 2, 0], [3, 1, 0]])
    np.testing.assert_array_equal(out[0][1], [[1, 1, 1], [1, 1, 0]])
    np.testing.assert_array_equal(out[1][1], [[1, 0, 0], [0, 0, 0]])
    with pytest.raises(BenchError, match="exceeds batch_size"):
        padded_batches([[np.arange(4)]], 3)


def test_fold_adam_steps_only_the_active_folds():
    p = torch.zeros(2, 3, dtype=torch.float64, requires_grad=True)
    adam = FoldAdam({"p": p}, lr=0.1)
    adam.step({"p": torch.ones(2, 3, dtype=torch.float64)}, active=[1])
    assert torch.equal(p[0], torch.zeros(3, dtype=torch.float64)) and (p[1] < 0).all()
    assert adam.steps["p"].tolist() == [0.0, 1.0]


def tiny_folds(n_folds=3):
    data = load_dataset("tiny", "")
    return data, make_splits(data, "kfold", n_folds, (0,))


@pytest.mark.parametrize("name", ["rmlc", "rmlc_ns"])
def test_fit_folds_gives_each_fold_its_fit(name):
    """Through the method: early stopping on each fold's own validation part, so folds stop at
    different epochs; each fold's history, best epoch and scores are those of its own ``fit``
    (float32: to float32 rounding)."""
    cls = plugins.get("methods", name)
    assert supports_stacking(cls)
    data, splits = tiny_folds()
    kw = dict(hidden=8, epochs=8, patience=2, val_fraction=0.25, batch_size=16, lr=0.01, device="cpu")
    alone = [cls(**kw).fit(data.subset(s.train)) for s in splits]
    together = fit_folds([cls(**kw) for _ in splits], [data.subset(s.train) for s in splits])
    assert len({len(m.history_) for m in alone}) > 1, "the folds should stop at different epochs"
    for a, b, s in zip(alone, together, splits, strict=True):
        assert b.best_epoch_ == a.best_epoch_
        assert [h["epoch"] for h in b.history_] == [h["epoch"] for h in a.history_]
        for ha, hb in zip(a.history_, b.history_, strict=True):
            assert set(hb) == set(ha)
            for key in ("loss", "bce", "reg", "val_loss", "val_hamming_loss"):
                assert hb[key] == pytest.approx(ha[key], rel=1e-4, abs=1e-6), key
        test = data.subset(s.test)
        np.testing.assert_allclose(b.predict_scores(test), a.predict_scores(test), rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(b.predict_steps(test), a.predict_steps(test), rtol=1e-4, atol=1e-6)


def test_fit_folds_refuses_a_method_without_the_hooks():
    br = plugins.get("methods", "br")
    with pytest.raises(BenchError, match="cannot train its folds together"):
        fit_folds([br()], [load_dataset("tiny", "")])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")
def test_cuda_graph_replays_give_the_eager_stacked_weights():
    cls = plugins.get("methods", "rmlc")
    data, splits = tiny_folds()
    kw = dict(hidden=8, epochs=4, patience=None, val_fraction=0.0, batch_size=8, device="cuda")
    eager = fit_folds([cls(**kw) for _ in splits], [data.subset(s.train) for s in splits])
    graphed = fit_folds([cls(**kw) for _ in splits], [data.subset(s.train) for s in splits], cuda_graph=True)
    for a, b, s in zip(eager, graphed, splits, strict=True):
        np.testing.assert_allclose(b.predict_scores(data.subset(s.test)), a.predict_scores(data.subset(s.test)),
                                   rtol=1e-4, atol=1e-5)


def rmlc_jobs(tmp_path, store="results", folds=3):
    from bench.runner import build_jobs, parse_overrides

    overrides = parse_overrides(["hidden=8", "epochs=5", "patience=2", "val_fraction=0.25", "batch_size=16",
                                 "device=cpu"])
    return build_jobs(["rmlc"], ["tiny"], protocol="kfold", n_folds=folds, seeds=None, overrides=overrides,
                      data_root=tmp_path / "data", store_root=tmp_path / store)


def test_a_stacked_run_stores_one_record_per_fold_as_separate_jobs_do(tmp_path):
    """The runner groups the folds into one task and still stores a record per fold, with the
    job ids, metrics and histories of the unstacked run; a rerun trains only the missing fold."""
    from bench.runner import group_jobs, run_jobs
    from bench.store import ResultStore

    separate = run_jobs(rmlc_jobs(tmp_path, "a"), progress=False, stack_folds="off")
    jobs = rmlc_jobs(tmp_path, "b")
    assert [len(t) for t in group_jobs(jobs, stack=True)] == [3]
    stacked = run_jobs(jobs, progress=False, stack_folds="on")
    assert not separate.failures and not stacked.failures and stacked.ran == 3
    by_id = {r["job_id"]: r for r in separate.records}
    assert set(by_id) == {r["job_id"] for r in stacked.records}
    for rec in stacked.records:
        alone = by_id[rec["job_id"]]
        assert rec["timings"]["stacked_folds"] == 3 and "stacked_folds" not in alone["timings"]
        assert [h["epoch"] for h in rec["history"]] == [h["epoch"] for h in alone["history"]]
        for metric, value in alone["metrics"].items():
            assert rec["metrics"][metric] == pytest.approx(value, rel=1e-4, abs=1e-6, nan_ok=True), metric
    store = ResultStore(tmp_path / "b")
    victim = stacked.records[1]
    (tmp_path / "b" / "tiny" / "rmlc" / f"{victim['job_id']}.json").unlink()
    rerun = run_jobs(rmlc_jobs(tmp_path, "b"), progress=False, stack_folds="on")
    assert (rerun.ran, rerun.skipped) == (1, 2)
    assert store.load("tiny", "rmlc", victim["job_id"]) is not None


def test_a_failed_stacked_group_reports_every_fold(tmp_path, monkeypatch):
    import bench.stacked
    from bench.runner import run_jobs

    def fail(*args, **kwargs):
        raise BenchError("stacked training broke")

    monkeypatch.setattr(bench.stacked, "fit_folds", fail)
    summary = run_jobs(rmlc_jobs(tmp_path), progress=False, stack_folds="on")
    assert summary.ran == 3 and len(summary.failures) == 3
    assert {f["error"] for f in summary.failures} == {"stacked training broke"}
    assert len({f["job_id"] for f in summary.failures}) == 3
    assert not list((tmp_path / "results").rglob("*.json"))


def test_grouping_follows_the_option_and_the_method(tmp_path):
    from bench.runner import build_jobs, group_jobs, run_jobs

    jobs = rmlc_jobs(tmp_path)
    assert [len(t) for t in group_jobs(jobs, stack=False)] == [1, 1, 1]
    br = build_jobs(["br"], ["tiny"], protocol="kfold", n_folds=3, seeds=None, overrides={},
                    data_root=tmp_path / "data", store_root=tmp_path / "results")
    assert [len(t) for t in group_jobs(br + jobs, stack=True)] == [1, 1, 1, 3]  # br has no stacked hooks
    with pytest.raises(BenchError, match="--stack-folds must be one of"):
        run_jobs(jobs, stack_folds="yes")
