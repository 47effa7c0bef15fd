"""RMLC (methods/rmlc.py): Eqs. 1-6 against a per-sample reference loop, the role of S, Algorithm 1's
per-step updates, the shared training loop against the implementation it replaced, views by name,
training through the harness, and one-line errors for bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import plugin_module
from reference_rmlc import OldRMLCNet, old_make_optimizer, old_standardised_views, old_train_batch

from bench import plugins
from bench.cli import main
from bench.data import ImageView, MultiLabelData
from bench.errors import BenchError
from bench.protocols import validation_split
from bench.store import ResultStore

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models: one thread is fastest


@pytest.fixture
def rmlc():
    """The plug-in module (imported by the plug-in loader under a private name)."""
    return plugin_module("methods", "rmlc")


def tiny_net(rmlc, label_correlation=True, dims=(2, 3, 4), hidden=5, n_labels=3, seed=0, peepholes="full"):
    """A float64 network with a non-zero S (S starts at zero in training)."""
    net = rmlc.RMLCNet(list(dims), hidden, n_labels, label_correlation,
                       torch.Generator().manual_seed(seed), peepholes=peepholes).double()
    with torch.no_grad():
        net.S.copy_(torch.randn(n_labels, n_labels, generator=torch.Generator().manual_seed(seed + 1),
                                dtype=torch.float64))
    return net


def tiny_batch(dims=(2, 3, 4), batch=4, n_labels=3, seed=0):
    rng = np.random.default_rng(seed)
    xs = [rng.normal(size=(batch, d)) for d in dims]
    y = (rng.random((batch, n_labels)) < 0.5).astype(np.float64)
    return xs, y


def sigmoid(v):
    return 1.0 / (1.0 + np.exp(-v))


def reference(net, xs, y, lam, label_correlation):
    """Eqs. 1-6 written out per example, with the paper's full matrices W_i, W_f, W_c, W_o built from
    the network's parameters. Returns F^t [M, B, L] and the losses L^t [M]."""
    p = {k: v.detach().numpy() for k, v in literal_parameters(net).items()}
    h, dims, M = net.hidden, [x.shape[1] for x in xs], len(xs)
    W_i, W_f, W_c, W_o = p["W_i"], p["W_f"], p["W_c"], p["W_o"]  # on [X̂, h, c^{t-1}] / same / [X̂, h] / [X̂, h, c^t]
    b = {g: p[f"b_{g}"] for g in "ifco"}
    S = p["S"]
    n, L = y.shape
    F_all = np.zeros((M, n, L))
    losses = np.zeros(M)
    for i in range(n):
        h_prev, c_prev, stacked, Z_prev = np.zeros(h), np.zeros(h), [], np.zeros(L)
        for t in range(M):
            X_hat = np.concatenate([xs[m][i] if m == t else np.zeros(dims[m]) for m in range(M)])  # Eq. 1
            i_g = sigmoid(W_i @ np.concatenate([X_hat, h_prev, c_prev]) + b["i"])                 # Eq. 2
            f_g = sigmoid(W_f @ np.concatenate([X_hat, h_prev, c_prev]) + b["f"])
            c = f_g * c_prev + i_g * np.tanh(W_c @ np.concatenate([X_hat, h_prev]) + b["c"])
            o_g = sigmoid(W_o @ np.concatenate([X_hat, h_prev, c]) + b["o"])
            h_t = o_g * np.tanh(c)
            stacked.append(h_t)
            H = np.concatenate(stacked)                                                           # H^t
            f_spec = p[f"U{t}"] @ H + p[f"b{t}"]                                                   # Eq. 3
            Z = sigmoid(f_spec + Z_prev @ S) if label_correlation else sigmoid(f_spec)            # Eq. 4
            for k in range(L):                                                                    # Eq. 5
                losses[t] -= y[i, k] * np.log(Z[k]) + (1 - y[i, k]) * np.log(1 - Z[k])
            F_all[t, i] = Z
            h_prev, c_prev, Z_prev = h_t, c, Z
    for t in range(M):                                                                            # Eq. 6
        losses[t] += lam * np.sum(p[f"U{t}"] ** 2)
    return F_all, losses


# --------------------------------------------------------------------------- (a) equations
@pytest.mark.parametrize("label_correlation, peepholes", [(True, "full"), (False, "full"), (True, "diagonal")])
def test_vectorized_forward_and_loss_match_the_per_example_equations(rmlc, label_correlation, peepholes):
    net = tiny_net(rmlc, label_correlation, peepholes=peepholes)
    xs, y = tiny_batch()
    lam = 0.1
    F_ref, loss_ref = reference(net, xs, y, lam, label_correlation)
    xt, yt = [torch.as_tensor(x) for x in xs], torch.as_tensor(y)
    logits = net(xt)
    np.testing.assert_allclose(torch.sigmoid(torch.stack(logits)).detach().numpy(), F_ref, atol=1e-6, rtol=0)
    for t in range(3):
        # the training forward: steps 1..t+1 recomputed, only the last step's logits kept
        last = net(xt, t + 1, every_step=False)[-1]
        bce, reg = rmlc.step_loss(net, t, last, yt, lam)
        assert abs(float((bce + reg).detach()) - loss_ref[t]) < 1e-6
    assert not np.allclose(F_ref[1], F_ref[2])  # the steps differ: the check is not vacuous


# --------------------------------------------------------------------------- (b) the role of S
def test_S_gets_the_gradient_of_Eq4_and_RMLC_NS_ignores_S(rmlc):
    xs, y = tiny_batch(dims=(2, 3))
    xt, yt = [torch.as_tensor(x) for x in xs], torch.as_tensor(y)
    net = tiny_net(rmlc, True, dims=(2, 3))
    logits = net(xt)
    bce, _ = rmlc.step_loss(net, 1, logits[1], yt, 0.1)
    bce.backward()
    # M = 2: a^2 = f_spec^2 + F^1 S and F^1 = σ(f_spec^1) does not involve S, so dL/dS = F^1ᵀ (F^2 - Y)
    F1, F2 = torch.sigmoid(logits[0]).detach(), torch.sigmoid(logits[1]).detach()
    np.testing.assert_allclose(net.S.grad.numpy(), (F1.T @ (F2 - yt)).numpy(), atol=1e-10)
    assert net.S.grad.abs().sum() > 0

    ns = tiny_net(rmlc, False, dims=(2, 3))
    before = torch.stack(ns(xt)).detach()
    with torch.no_grad():
        ns.S.mul_(-3.0).add_(1.0)
    after = torch.stack(ns(xt))
    assert torch.equal(before, after.detach())
    after.sum().backward()
    assert ns.S.grad is None


def literal_parameters(net):
    """The paper's parameters as separate leaf tensors: full W_i, W_f, W_c, W_o acting on the
    zero-padded X̂^t (Eq. 1) and on [h^{t-1}, c^{t-1}] / [h^{t-1}] / [h^{t-1}, c^t] (Eq. 2)."""
    p = {k: v.detach().clone() for k, v in net.named_parameters()}
    h, M = net.hidden, net.n_steps
    if p["w_c"].ndim == 1:  # diagonal peepholes (Gers & Schmidhuber): the literal matrices are diagonal
        p["w_c"] = torch.cat([torch.diag(p["w_c"][:h]), torch.diag(p["w_c"][h:])])
        p["w_co"] = torch.diag(p["w_co"])
    w_x = torch.cat([p[f"w_x.{m}"] for m in range(M)], dim=1)
    rows = {g: slice(k * h, (k + 1) * h) for k, g in enumerate("ifco")}
    lit = {"W_i": torch.cat([w_x[rows["i"]], p["w_h"][rows["i"]], p["w_c"][:h]], dim=1),
           "W_f": torch.cat([w_x[rows["f"]], p["w_h"][rows["f"]], p["w_c"][h:]], dim=1),
           "W_c": torch.cat([w_x[rows["c"]], p["w_h"][rows["c"]]], dim=1),
           "W_o": torch.cat([w_x[rows["o"]], p["w_h"][rows["o"]], p["w_co"]], dim=1),
           **{f"b_{g}": p["bias"][rows[g]] for g in "ifco"}, "S": p["S"],
           **{f"U{t}": p[f"heads.{t}.weight"] for t in range(M)}, **{f"b{t}": p[f"heads.{t}.bias"] for t in range(M)}}
    return {k: v.requires_grad_() for k, v in lit.items()}


def literal_step_loss(lit, xs, y, t, lam, label_correlation):
    """L^t (Eqs. 1-6) with the literal matrices: zero-padded inputs, h^0 = c^0 = F^0 = 0 tensors."""
    n, L = y.shape
    h = torch.zeros(n, lit["W_o"].shape[0], dtype=y.dtype)
    c, Z, stacked = torch.zeros_like(h), torch.zeros(n, L, dtype=y.dtype), []
    for s in range(t + 1):
        X_hat = torch.cat([x if m == s else torch.zeros_like(x) for m, x in enumerate(xs)], dim=1)   # Eq. 1
        i = torch.sigmoid(torch.cat([X_hat, h, c], 1) @ lit["W_i"].T + lit["b_i"])                  # Eq. 2
        f = torch.sigmoid(torch.cat([X_hat, h, c], 1) @ lit["W_f"].T + lit["b_f"])
        c = f * c + i * torch.tanh(torch.cat([X_hat, h], 1) @ lit["W_c"].T + lit["b_c"])
        h = torch.sigmoid(torch.cat([X_hat, h, c], 1) @ lit["W_o"].T + lit["b_o"]) * torch.tanh(c)
        stacked.append(h)
        a = torch.cat(stacked, 1) @ lit[f"U{s}"].T + lit[f"b{s}"]                                   # Eq. 3
        Z = torch.sigmoid(a + Z @ lit["S"]) if label_correlation else torch.sigmoid(a)             # Eq. 4
    bce = -(y * torch.log(Z) + (1 - y) * torch.log(1 - Z)).sum()                                   # Eq. 5
    return bce + lam * lit[f"U{t}"].square().sum()                                                 # Eq. 6


@pytest.mark.parametrize("label_correlation", [True, False])
def test_algorithm1_matches_a_literal_training_loop(rmlc, label_correlation):
    """Two batches of Algorithm 1 (one Adam step per modality on Φ, U^t, b^t, S) through the
    vectorized code and through the literal equations with full matrices end with the same weights."""
    net = tiny_net(rmlc, label_correlation)
    lit = literal_parameters(net)
    shared = [k for k in lit if not k[1:].isdigit() and (label_correlation or k != "S")]
    lit_opt = torch.optim.Adam([lit[k] for k in shared] + [lit[k] for k in lit if k[1:].isdigit()], lr=1e-2)
    opt = rmlc.make_optimizer(net, lr=1e-2)
    for seed in (0, 1):
        xs, y = tiny_batch(seed=seed)
        xt, yt = [torch.as_tensor(x) for x in xs], torch.as_tensor(y)
        rmlc.train_batch(net, opt, xt, yt, 0.1)
        for t in range(net.n_steps):                      # Algorithm 1, lines 4-15, written out
            lit_opt.zero_grad(set_to_none=True)
            literal_step_loss(lit, xt, yt, t, 0.1, label_correlation).backward()
            for other in range(net.n_steps):              # line 14: U^t, b^t only
                if other != t:
                    lit[f"U{other}"].grad = lit[f"b{other}"].grad = None
            lit_opt.step()
    for key, value in literal_parameters(net).items():
        np.testing.assert_allclose(value.detach().numpy(), lit[key].detach().numpy(), atol=1e-9, err_msg=key)
    steps = {name: int(opt.state[p]["step"]) for name, p in net.named_parameters() if p in opt.state}
    assert steps["w_h"] == steps["w_x.2"] == steps["bias"] == 6          # Φ: every step of every batch
    assert [steps[f"heads.{t}.weight"] for t in range(3)] == [2, 2, 2]   # U^t: at step t only
    assert steps.get("S") == (6 if label_correlation else None)          # RMLC_NS never updates S


# --------------------------------------------------------------------------- fitting and outputs
def multiview_data(n=240, seed=0, n_views=3):
    """Labels driven by different views, with a label that copies another (a correlation)."""
    rng = np.random.default_rng(seed)
    views = {f"v{m}": rng.normal(size=(n, 4 + m)).astype(np.float32) for m in range(n_views)}
    first = [v[:, 0] + 0.5 * v[:, 1] for v in views.values()]
    logits = np.stack([*first, first[0] + first[-1]], axis=1)
    Y = (logits + rng.normal(scale=0.3, size=logits.shape) > 0).astype(np.uint8)
    return MultiLabelData("synthetic", views, Y, tuple(f"l{k}" for k in range(Y.shape[1])))


def test_fit_records_history_and_per_step_predictions(rmlc):
    data = multiview_data()
    model = rmlc.RMLC(hidden=16, epochs=4, patience=2, device="cpu").fit(data.subset(np.arange(200)))
    test = data.subset(np.arange(200, 240))
    steps = model.predict_steps(test)
    assert steps.shape == (3, 40, 4) and ((steps > 0) & (steps < 1)).all()
    np.testing.assert_array_equal(model.predict_scores(test), steps[-1])
    assert [h["epoch"] for h in model.history_] == list(range(1, len(model.history_) + 1))
    first = model.history_[0]
    assert {"loss", "bce", "reg", "val_loss", "val_micro_f1", "val_ranking_loss", "val_mAP"} <= set(first)
    assert first["loss"] == pytest.approx(first["bce"] + first["reg"])
    assert model.history_[-1]["bce"] < first["bce"]  # it learns
    again = rmlc.RMLC(hidden=16, epochs=4, patience=2, device="cpu").fit(data.subset(np.arange(200)))
    np.testing.assert_array_equal(again.predict_scores(test), model.predict_scores(test))  # seeded
    readouts = model.predict_readouts(test)          # F^1, F^2 as rows of their own; F^3 is the main row
    assert list(readouts) == ["modalities_1", "modalities_2"]
    np.testing.assert_array_equal(readouts["modalities_1"], steps[0])
    np.testing.assert_array_equal(readouts["modalities_2"], steps[1])


@pytest.mark.parametrize("monitor, best", [("val_mAP", max), ("val_loss", min), ("val_ranking_loss", min),
                                           ("val_micro_f1", max), ("val_hamming_loss", min)])
def test_early_stopping_keeps_the_best_epoch_by_the_monitored_validation_score(rmlc, monitor, best):
    data = multiview_data()
    model = rmlc.RMLC(hidden=16, epochs=12, patience=3, monitor=monitor, device="cpu").fit(data)
    scores = [h[monitor] for h in model.history_]
    assert model.best_epoch_ == 1 + scores.index(best(scores))
    # It stopped `patience` epochs after that best one, or at `epochs`.
    assert len(scores) == min(12, model.best_epoch_ + 3)
    # The weights kept are the best epoch's: the validation part scores as recorded then.
    _, val = validation_split(data, 0.1, seed=0)
    assert model.validate(val)[monitor] == pytest.approx(scores[model.best_epoch_ - 1], rel=1e-5)


def test_with_one_modality_RMLC_is_exactly_RMLC_NS(rmlc):
    data = multiview_data(n_views=1)
    kw = dict(hidden=8, epochs=3, device="cpu")
    a = rmlc.RMLC(**kw).fit(data)
    b = rmlc.RMLC_NS(**kw).fit(data)
    np.testing.assert_array_equal(a.predict_scores(data), b.predict_scores(data))
    assert not a.model_.net.S.abs().sum()  # F^0 = 0: S never receives a gradient
    assert a.predict_readouts(data) == {}   # one modality: F^M is the only step
    assert rmlc.RMLC_NS().get_params().keys() == rmlc.RMLC().get_params().keys() - {"label_correlation"}


# --------------------------------------------------------------------------- (c) through the harness
def test_rmlc_and_rmlc_ns_train_through_the_cli_and_beat_chance(tmp_path, capsys):
    rc = main(["run", "--method", "rmlc,rmlc_ns", "--dataset", "tiny", "--folds", "3", "--device", "cpu",
               "--set", "hidden=32", "--set", "epochs=40", "--set", "lr=0.01",
               # 8 validation examples: any ranking criterion is noise there, the BCE is steadier
               "--set", "monitor=val_loss", "--no-progress"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "rmlc" in out and "rmlc_ns" in out  # two rows of the printed table
    store = ResultStore(tmp_path / "results")
    for method in ("rmlc", "rmlc_ns"):
        records = list(store.records("tiny", method))
        assert len(records) == 3
        for rec in records:
            y = plugins.get("datasets", "tiny")().load(None).Y[store.arrays(rec)["test_index"]]
            all_ones_f1 = 2 * y.mean() / (1 + y.mean())  # micro-F1 of predicting every label
            assert rec["metrics"]["micro_f1"] > all_ones_f1 + 0.1
            assert rec["metrics"]["ranking_loss"] < 0.25  # random scores: 0.5
            assert rec["history"] and "val_loss" in rec["history"][0]


# --------------------------------------------------------------------------- (d) bad input
def test_bad_input_gives_one_line_errors(rmlc):
    data = multiview_data(n=60)
    with pytest.raises(BenchError, match="predict called before fit"):
        rmlc.RMLC().predict_scores(data)
    for bad, match in [(dict(hidden=0), "hidden must be an integer >= 1, got 0"),
                       (dict(batch_size=6.5), "batch_size must be a positive integer, got 6.5"),
                       (dict(lam=-1), "lam must be a number >= 0"),
                       (dict(val_fraction=1.0), r"validation fraction must be in \(0, 1\)"),
                       (dict(patience=0), "patience must be a positive integer or None"),
                       (dict(peepholes="none"), "peepholes must be one of full, diagonal"),
                       (dict(monitor="val_bce"), "monitor must be one of val_loss, val_hamming_loss")]:
        with pytest.raises(BenchError, match=match):
            rmlc.RMLC(epochs=1, **bad).fit(data)
    images = MultiLabelData("pics", {"image": ImageView(array=np.zeros((60, 8, 8), np.uint8))}, data.Y,
                            data.label_names)
    with pytest.raises(BenchError, match="dataset 'pics' has no feature view"):
        rmlc.RMLC(epochs=1).fit(images)
    model = rmlc.RMLC(hidden=4, epochs=1, device="cpu").fit(data)
    other = MultiLabelData("other", {"v0": data.views["v0"], "v1": data.views["v1"]}, data.Y, data.label_names)
    with pytest.raises(BenchError, match="was fitted on the feature views .* dataset 'other' has"):
        model.predict_scores(other)
    if not torch.cuda.is_available():
        with pytest.raises(BenchError, match="torch sees no CUDA device"):
            rmlc.RMLC(device="cuda:0").fit(data)


# --------------------------------------------------------------------------- the shared training loop
@pytest.mark.parametrize("label_correlation", [True, False])
def test_three_batches_on_the_shared_loop_give_the_weights_of_the_replaced_implementation(rmlc, label_correlation):
    """RMLC.fit (shared loop, Algorithm 1 as its per-batch update, fused Adam) against the code it
    replaced (tests/reference_rmlc.py), fed the same three batches from the same initial weights."""
    data = multiview_data(n=48)  # one epoch of 16-example batches: three batches
    seen = []

    class Recording(rmlc.RMLC):
        def step_callbacks(self):
            return [lambda model, batch: seen.append(batch.index.cpu().numpy().copy())]

    method = Recording(hidden=8, batch_size=16, epochs=1, val_fraction=0.0, patience=None,
                       label_correlation=label_correlation, device="cpu").fit(data)
    assert [len(b) for b in seen] == [16, 16, 16] and len(np.unique(np.concatenate(seen))) == 48
    assert method.make_optimizer(method.model_).defaults["fused"] is True   # fused Adam on the CPU too

    old = OldRMLCNet([4, 5, 6], 8, data.n_labels, label_correlation, torch.Generator().manual_seed(0))
    start = {name: p.detach().clone() for name, p in old.named_parameters()}
    xs = old_standardised_views(list(data.feature_views.values()))
    y = torch.as_tensor(data.Y, dtype=torch.float32)
    optimizer = old_make_optimizer(old, method.lr)
    for idx in seen:
        old_train_batch(old, optimizer, [x[idx] for x in xs], y[idx], method.lam)
    new = dict(method.model_.net.named_parameters())
    assert set(new) == set(start)
    for name, p in old.named_parameters():
        torch.testing.assert_close(new[name].detach(), p.detach(), rtol=1e-5, atol=1e-6, msg=name)
        if name != "S" or label_correlation:  # RMLC_NS never updates S
            assert (p.detach() - start[name]).abs().max() > 1e-4, f"{name} did not move: the check is vacuous"


def test_views_are_taken_by_name_whatever_their_order_in_the_dataset(rmlc):
    """Equal-sized views (FCVID's five 400-d views) listed in another order must not be scrambled."""
    rng = np.random.default_rng(3)
    views = {name: rng.normal(size=(120, 5)).astype(np.float32) for name in ("a", "b", "c")}
    Y = (np.c_[views["a"][:, :2], views["c"][:, :1]] > 0).astype(np.uint8)
    data = MultiLabelData("ordered", views, Y, ("l0", "l1", "l2"))
    model = rmlc.RMLC(hidden=8, epochs=3, patience=None, val_fraction=0.0, device="cpu").fit(data)
    reordered = MultiLabelData("reordered", {k: views[k] for k in ("c", "a", "b")}, Y, data.label_names)
    scores = model.predict_scores(data)
    np.testing.assert_array_equal(model.predict_scores(reordered), scores)
    np.testing.assert_array_equal(model.predict_steps(reordered), model.predict_steps(data))
    renamed = MultiLabelData("renamed", {"a": views["a"], "b": views["b"], "d": views["c"]}, Y, data.label_names)
    with pytest.raises(BenchError, match=r"fitted on the feature views \{'a': 5, 'b': 5, 'c': 5\}"):
        model.predict_scores(renamed)


def test_S_initialisation_is_a_reading_of_its_own(rmlc):
    zeros = rmlc.RMLCNet([3, 4], 6, 5, generator=torch.Generator().manual_seed(0))
    uniform = rmlc.RMLCNet([3, 4], 6, 5, generator=torch.Generator().manual_seed(0), s_init="uniform")
    assert not zeros.S.abs().sum()
    assert uniform.S.abs().min() > 0 and uniform.S.abs().max() <= 1 / np.sqrt(5)
    torch.testing.assert_close(uniform.w_h, zeros.w_h)  # the other weights are drawn as before
    with pytest.raises(BenchError, match="s_init must be one of zeros, uniform"):
        rmlc.RMLC(s_init="ones", epochs=1).fit(multiview_data(n=60))
