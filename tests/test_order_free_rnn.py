"""Order-Free RNN (methods/order_free_rnn.py) against readable references on tiny tensors.

The candidate pool (Eqs. 9-10), the attention (Eqs. 4-5), the loss (Eq. 8), the beam search
(Eq. 11; beam 1 = a greedy loop, a wide beam = brute-force enumeration of all label paths), the
stop-threshold calibration (against scikit-learn's F1), the per-label scores and attention maps of
the decoded path, the fixed-order ablations and the frozen CNN running once per image.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import plugin_module
from sklearn.metrics import f1_score

from bench.backbones import Backbone
from bench.data import ImageView, MultiLabelData
from bench.errors import BenchError

ofr = plugin_module("methods", "order_free_rnn")   # imported by the plug-in loader under a private name
OrderFreeRNN, OrderFreeRNNHead, OrderFreeRNNRareFirst = ofr.OrderFreeRNN, ofr.OrderFreeRNNHead, ofr.OrderFreeRNNRareFirst
SoftAttention, beam_search, best_threshold, emit = ofr.SoftAttention, ofr.beam_search, ofr.best_threshold, ofr.emit
ordered_sequences, step_bce, unroll = ofr.ordered_sequences, ofr.step_bce, ofr.unroll

pytestmark = pytest.mark.usefixtures("one_torch_thread")

L, M, C = 4, 6, 5   # labels, regions, region width of the toy head


def close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """numpy's assert_allclose (torch.testing's first call imports sympy: seconds)."""
    np.testing.assert_allclose(np.asarray(actual, np.float64), np.asarray(expected, np.float64), rtol=1e-5, atol=1e-6)


def toy_head(seed: int = 0, attention: bool = True, bias: torch.Tensor | None = None) -> OrderFreeRNNHead:
    torch.manual_seed(seed)
    head = OrderFreeRNNHead(C, L, hidden=8, attention_dim=7, pred_hidden=9, dropout=0.0, attention=attention).eval()
    with torch.no_grad():   # larger weights than the default init: confidences far from 0.5, paths that differ
        for p in head.parameters():
            p.mul_(3.0)
        if bias is not None:
            head.pred[-1].bias.add_(bias)
    return head


def regions(n: int = 5, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, M, C, generator=torch.Generator().manual_seed(seed))


def run_path(head, region: torch.Tensor, path: list[int]) -> dict:
    """The network fed one label path, step by step (an image [1, m, C]): the log-probability of the
    path (Eq. 11), every step's σ(p_t) and α_t (the steps that emitted the labels, then one more)."""
    state = head.start(region, torch.sigmoid(head.map_logits(region)))
    keys = head.keys(region)
    log_prob, probs, alphas = 0.0, [], []
    for t in range(len(path) + 1):
        logits, alpha, state = head.step(region, keys, state)
        probs.append(torch.sigmoid(logits)[0])
        alphas.append(None if alpha is None else alpha[0])
        if t < len(path):
            log_prob += math.log(float(torch.sigmoid(logits)[0, path[t]]))
            state = emit(state, torch.tensor([path[t]]))
    return {"log_prob": log_prob, "probs": probs, "alphas": alphas}


def every_path(head, region: torch.Tensor) -> dict[tuple[int, ...], float]:
    """Brute force: the log-probability (Eq. 11) of every sequence of distinct labels, by walking
    the tree of all paths depth first (each node's state computed once)."""
    found = {}

    def walk(path: tuple[int, ...], log_prob: float, state):
        found[path] = log_prob
        if len(path) == L:
            return
        logits, _, after = head.step(region, head.keys(region), state)
        for label in range(L):
            if label not in path:
                p = float(torch.sigmoid(logits)[0, label])
                walk(path + (label,), log_prob + math.log(p), emit(after, torch.tensor([label])))

    walk((), 0.0, head.start(region, torch.sigmoid(head.map_logits(region))))
    return found


def greedy(head, region: torch.Tensor, steps: int) -> list[int]:
    """Greedy decoding as a readable loop: at each step the most confident label not yet emitted."""
    path = []
    for _ in range(steps):
        probs = run_path(head, region, path)["probs"][-1]
        path.append(max((c for c in range(L) if c not in path), key=lambda c: float(probs[c])))
    return path


@torch.no_grad()
def test_the_candidate_pool_never_emits_a_label_twice():
    bias = torch.tensor([8.0, 0.0, 0.0, 0.0])   # label 0 would win every step without the pool
    head = toy_head(bias=bias)
    x = regions(8)
    hard = unroll(head, x, steps=L)["hard_labels"]
    assert all(sorted(row) == list(range(L)) for row in hard.tolist())   # every label exactly once in L steps
    decoded = beam_search(head, x, beam=3, max_steps=L)
    for t in range(L + 1):
        assert (decoded.sets[t].sum(dim=1) == t).all()                  # a path of length t holds t labels
    assert decoded.sets[1][:, 0].all()                                  # and the dominant label came first


@torch.no_grad()
def test_attention_weights_sum_to_one_and_follow_eqs_4_and_5():
    torch.manual_seed(0)
    attention = SoftAttention(C, 8, 7)
    v, h = regions(3), torch.randn(3, 8)
    z, alpha = attention(v, attention.keys(v), h)
    close(alpha.sum(dim=1), torch.ones(3))
    assert (alpha >= 0).all()
    for b in range(3):   # e_i = wᵀ tanh(W_v v_i + W_h h), α = softmax(e), z = Σ α_i v_i
        e = torch.stack([attention.score.weight[0] @ torch.tanh(attention.regions.weight @ v[b, i]
                                                                + attention.regions.bias + attention.state.weight @ h[b])
                         + attention.score.bias[0] for i in range(M)])
        a = torch.exp(e) / torch.exp(e).sum()
        close(alpha[b], a)
        close(z[b], sum(a[i] * v[b, i] for i in range(M)))


@torch.no_grad()
def test_beam_one_is_greedy_decoding_with_its_scores_and_maps():
    head, x = toy_head(seed=2), regions(6)
    decoded = beam_search(head, x, beam=1, max_steps=3)
    for b in range(len(x)):
        path = greedy(head, x[b:b + 1], 3)
        run = run_path(head, x[b:b + 1], path)
        for t in range(4):
            assert torch.nonzero(decoded.sets[t, b]).flatten().tolist() == sorted(path[:t])
            prefix = run_path(head, x[b:b + 1], path[:t])
            assert float(decoded.log_prob[t, b]) == pytest.approx(prefix["log_prob"], abs=1e-5)
            # scores: each label's highest σ(p_s) over the steps s = 1 .. t+1 of the path
            close(decoded.scores[t, b], torch.stack(run["probs"][:t + 1]).amax(dim=0))
            # maps: the attention of the step that emitted the label; zeros for the others
            expected = torch.zeros(L, M)
            for s, label in enumerate(path[:t]):
                expected[label] = run["alphas"][s]
            close(decoded.maps[t, b], expected)


@torch.no_grad()
def test_a_wide_beam_finds_the_brute_force_best_path_of_every_length_and_the_stop():
    head, x = toy_head(seed=3), regions(3, seed=4)
    decoded = beam_search(head, x, beam=math.factorial(L), max_steps=L)   # 24 >= every path count
    narrow = beam_search(head, x, beam=1, max_steps=L)
    best, differs = [], 0
    for b in range(len(x)):
        best.append({0: (0.0, ())})
        enumerated = every_path(head, x[b:b + 1])
        for t in range(1, L + 1):   # every sequence of t distinct labels
            paths = {p: lp for p, lp in enumerated.items() if len(p) == t}
            assert len(paths) == math.perm(L, t)
            best[b][t] = max((lp, p) for p, lp in paths.items())
            assert float(decoded.log_prob[t, b]) == pytest.approx(best[b][t][0], abs=1e-5)
            assert torch.nonzero(decoded.sets[t, b]).flatten().tolist() == sorted(best[b][t][1])
            alphas = run_path(head, x[b:b + 1], list(best[b][t][1]))["alphas"]
            for s, label in enumerate(best[b][t][1]):   # each label's map: the attention that emitted it
                close(decoded.maps[t, b, label], alphas[s])
            differs += float(narrow.log_prob[t, b]) < best[b][t][0] - 1e-6
    assert differs   # the toy is not one where greedy is already optimal
    for threshold in (0.0, 0.05, 0.3, 0.6):
        # the thresholded search: the longest length whose best path keeps probability >= threshold
        stopped = beam_search(head, x, beam=math.factorial(L), max_steps=L, threshold=threshold)
        labels = stopped.at(stopped.stop_lengths(threshold))["labels"]
        for b in range(len(x)):
            length = max(t for t in best[b] if best[b][t][0] >= math.log(threshold)) if threshold > 0 else L
            assert torch.nonzero(labels[b]).flatten().tolist() == sorted(best[b][length][1]), threshold


def test_eq_8_is_the_bce_against_the_whole_ground_truth_at_every_step():
    torch.manual_seed(0)
    logits, y = torch.randn(3, 2, L), (torch.rand(3, L) > 0.5).float()
    expected = 0.0
    for b in range(3):
        for t in range(2):
            p = torch.sigmoid(logits[b, t])
            expected += -float((y[b] * torch.log(p) + (1 - y[b]) * torch.log(1 - p)).sum())
    targets = y.unsqueeze(1).expand(-1, 2, -1)
    assert float(step_bce(logits, targets)) == pytest.approx(expected / 6, rel=1e-5)


def test_fixed_orders_teacher_force_the_labels_by_training_frequency():
    y = torch.tensor([[1, 0, 1, 1], [0, 1, 0, 0], [0, 0, 0, 0]], dtype=torch.float32)
    counts = np.array([5, 9, 1, 5])                       # frequency-first: 1, 0, 3, 2 (ties by index)
    method = OrderFreeRNN(label_order="frequency")
    method.setup(MultiLabelData("d", {"f": np.zeros((19, 1), np.float32)}, _rows_with_counts(counts), ("a", "b", "c", "d")))
    seq = ordered_sequences(y, torch.as_tensor(method.label_rank_), steps=4)
    assert seq.tolist() == [[0, 3, 2, -1], [1, -1, -1, -1], [-1, -1, -1, -1]]
    rare = OrderFreeRNNRareFirst()
    rare.setup(MultiLabelData("d", {"f": np.zeros((19, 1), np.float32)}, _rows_with_counts(counts), ("a", "b", "c", "d")))
    assert ordered_sequences(y, torch.as_tensor(rare.label_rank_), steps=4).tolist()[0] == [2, 3, 0, -1]
    assert method.max_steps_ == 3                          # the largest label count of a training image
    targets = method._targets(y, 4)                        # one-hot of the t-th label, zeros after the last
    assert targets[0].argmax(dim=1)[:3].tolist() == [0, 3, 2] and targets[0, 3].sum() == 0 and targets[2].sum() == 0
    head = toy_head()
    with torch.no_grad():
        hard = unroll(head, regions(3), 4, forced=seq)["hard_labels"]
    assert hard.tolist() == seq.tolist()


def _rows_with_counts(counts: np.ndarray) -> np.ndarray:
    """19 label rows with the column counts [5, 9, 1, 5]; row 0 holds 3 labels, the others fewer."""
    Y = np.zeros((19, 4), np.uint8)
    Y[[0, 9, 10, 11, 12], 0] = 1
    Y[:9, 1] = 1
    Y[0, 2] = 1
    Y[14:19, 3] = 1
    assert (Y.sum(0) == counts).all() and Y.sum(1).max() == 3
    return Y


def test_the_stop_threshold_maximises_the_validation_f1_of_the_decoded_sets():
    rng = np.random.default_rng(0)
    n, T = 12, 3
    log_prob = np.cumsum(np.log(rng.uniform(0.2, 1.0, (T, n))), axis=0)
    log_prob = np.r_[np.zeros((1, n)), log_prob]
    sets = np.zeros((T + 1, n, L), bool)
    for b in range(n):
        order = rng.permutation(L)
        for t in range(1, T + 1):
            sets[t, b, order[:t]] = True
    Y = sets[rng.integers(1, 3, n), np.arange(n)] ^ (rng.random((n, L)) < 0.1)   # the first 1-2 labels, noisy
    tau = best_threshold(log_prob, sets, Y, "micro_f1")

    def f1(threshold):
        lengths = (log_prob[1:] >= np.log(threshold)).sum(axis=0)
        return f1_score(Y, sets[lengths, np.arange(n)], average="micro", zero_division=1.0)

    grid = np.r_[np.exp(log_prob[1:]).ravel(), 1.0 + 1e-9]
    scores = {g: f1(g) for g in grid}
    best = max(scores.values())
    assert f1(tau) == pytest.approx(best)
    assert tau == max(g for g, v in scores.items() if v == pytest.approx(best))   # ties: the largest τ
    assert f1(tau) > f1(1e-12) and f1(tau) > f1(1.0 + 1e-9)   # neither "all T labels" nor "none" here


# ----------------------------------------------------------------------------- the method
def mosaic(n: int = 30) -> MultiLabelData:
    rng = np.random.default_rng(0)
    Y = (rng.random((n, L)) < 0.5).astype(np.uint8)
    pix = rng.integers(0, 60, (n, 16, 16)).astype(np.uint8)
    for label, (r, c) in enumerate([(0, 0), (0, 8), (8, 0), (8, 8)]):
        pix[Y[:, label] == 1, r:r + 8, c:c + 8] += 180
    return MultiLabelData("toy-images", {"image": ImageView(array=pix)}, Y, ("a", "b", "c", "d"))


TINY = dict(backbone="small-cnn", pretrained=False, image_size=None, hidden=8, batch_size=8, epochs=2,
            num_workers=0, device="cpu")


def test_the_frozen_cnn_runs_once_per_image_across_stages_epochs_and_folds(monkeypatch):
    calls = []
    forward = Backbone.forward
    monkeypatch.setattr(Backbone, "forward", lambda self, x: calls.append(len(x)) or forward(self, x))
    data = mosaic()
    folds = [(np.arange(0, 20), np.arange(20, 30)), (np.arange(10, 30), np.arange(0, 10))]
    for train, test in folds:
        method = OrderFreeRNN(**{**TINY, "epochs": 1}).fit(data.subset(train))   # 2 stages, validation, calibration
        method.predict_scores(data.subset(test))
        method.predict(data.subset(test))
        method.class_maps(data.subset(test))
    probes = 2   # building an encoder runs the backbone once on one blank image (its grid)
    assert sum(calls) == data.n_samples + probes
    assert [h.get("stage") for h in method.history_] == ["map", "rnn"]


def test_fit_trains_m_map_first_then_the_rnn_calibrates_and_decodes():
    snapshots = []

    class Recording(OrderFreeRNN):
        def epoch_callbacks(self):
            return [lambda record: snapshots.append({k: v.clone() for k, v in self.head_.state_dict().items()})]

    data = mosaic(40)
    method = Recording(**{**TINY, "epochs": 2}).fit(data.subset(np.arange(30)))
    fc = [k for k in snapshots[0] if k.startswith("map_fc")]
    rnn = [k for k in snapshots[0] if not k.startswith("map_fc")]
    assert all(torch.equal(snapshots[0][k], snapshots[1][k]) for k in rnn)      # stage "map": the FC alone
    assert all(torch.equal(snapshots[1][k], snapshots[3][k]) for k in fc)       # stage "rnn": v_prob fixed
    assert any(not torch.equal(snapshots[2][k], snapshots[3][k]) for k in rnn)
    assert 0 < method.stop_threshold_ <= 1 + 1e-9
    test = data.subset(np.arange(30, 40))
    labels, scores = method.predict(test), method.predict_scores(test)
    maps = method.class_maps(test)
    assert maps.shape == (10, L, *method.encoder_.grid)
    # a label has a map exactly when the decoded path emitted it; each map is one attention (sums to 1)
    np.testing.assert_array_equal(maps.reshape(10, L, -1).sum(-1) > 0, labels.astype(bool))
    np.testing.assert_allclose(maps.reshape(10, L, -1).sum(-1)[labels.astype(bool)], 1.0, rtol=1e-5)
    assert (labels.sum(axis=1) <= method.max_steps_).all()
    assert set(method.predict_readouts(test)) == {"cnn_baseline"} and scores.shape == (10, L)


def test_per_step_updates_do_one_adam_step_per_time_step():
    steps = []

    class Counting(OrderFreeRNN):
        def stages(self):
            stages = super().stages()
            real = stages[1].optimizer.step
            stages[1].optimizer.step = lambda *a, **k: (steps.append(1), real(*a, **k))[1]
            return stages

    method = Counting(**{**TINY, "epochs": 1, "updates": "per_step", "val_fraction": 0.0}).fit(mosaic(16))
    assert len(steps) == method.max_steps_ * 2                     # T steps for each of the 2 batches
    assert method.stop_threshold_ == 0.5                           # no validation part: the default
    with pytest.raises(BenchError, match="updates must be one of sequence, per_step"):
        OrderFreeRNN(**{**TINY, "updates": "bptt"}).fit(mosaic(16))


# ----------------------------------------------------------------------------- the wiring of Eqs. 6-8
def reference_unroll(head: OrderFreeRNNHead, region: torch.Tensor, steps: int) -> dict:
    """Eqs. (4)-(7) and (9)-(10) for one image [m, C] as a readable loop, written without
    ``head.step``: the LSTM input [v_pred; z_t; ỹ_{t-1}] of every step (v_pred = v_prob at t = 1,
    σ(p_{t-1}) after; ỹ_{t-1} the multi-hot vector of the labels emitted before t), the logits p_t
    and the hard labels (the most confident label not yet emitted)."""
    att, cell = head.attention, head.lstm
    mean = region.mean(dim=0)
    h, c = torch.tanh(head.init_h(mean)), torch.tanh(head.init_c(mean))
    v_pred = torch.sigmoid(head.map_fc(mean))                                   # v_prob, Eqs. (1)-(3)
    emitted, inputs, logits_seen = [], [], []
    for _ in range(steps):
        e = torch.stack([att.score.weight[0] @ torch.tanh(att.regions.weight @ v_i + att.regions.bias
                                                           + att.state.weight @ h) + att.score.bias[0]
                         for v_i in region])                                     # Eq. (4)
        alpha = torch.exp(e) / torch.exp(e).sum()
        z = sum(alpha[i] * region[i] for i in range(len(region)))               # Eq. (5)
        y_tilde = torch.tensor([1.0 if label in emitted else 0.0 for label in range(head.n_labels)])
        x = torch.cat([v_pred, z, y_tilde])
        inputs.append(x)
        gates = cell.weight_ih @ x + cell.bias_ih + cell.weight_hh @ h + cell.bias_hh   # Eq. (6): the LSTM
        i, f, g, o = gates.chunk(4)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        p = head.pred(torch.cat([x, h]).unsqueeze(0))[0]                        # Eq. (7)
        logits_seen.append(p)
        emitted.append(max((label for label in range(head.n_labels) if label not in emitted),
                           key=lambda label: float(p[label])))                  # Eqs. (9)-(10)
        v_pred = torch.sigmoid(p)
    return {"inputs": inputs, "logits": logits_seen, "labels": emitted}


def lstm_inputs(head: OrderFreeRNNHead) -> tuple[list[torch.Tensor], object]:
    """The inputs the LSTM cell receives, recorded by a forward hook (and the hook's handle)."""
    seen: list[torch.Tensor] = []
    handle = head.lstm.register_forward_hook(lambda module, args, out: seen.append(args[0].detach().clone()))
    return seen, handle


@torch.no_grad()
def test_the_lstm_input_is_v_pred_z_t_and_the_emitted_labels_at_every_step():
    head, x = toy_head(seed=5), regions(4, seed=6)
    T = L - 1
    seen, handle = lstm_inputs(head)
    out = unroll(head, x, steps=T)
    handle.remove()
    for b in range(len(x)):
        ref = reference_unroll(head, x[b], T)
        assert out["hard_labels"][b].tolist() == ref["labels"]
        for t in range(T):
            close(seen[t][b], ref["inputs"][t])
            close(out["step_logits"][b, t], ref["logits"][t])
    # the search feeds its paths the same way (beam 1: the greedy path, which is unroll's)
    seen, handle = lstm_inputs(head)
    beam_search(head, x, beam=1, max_steps=T)
    handle.remove()
    for b in range(len(x)):
        ref = reference_unroll(head, x[b], T)
        for t in range(T):
            close(seen[t][b], ref["inputs"][t])
    # the toy is one where the wiring shows: v_pred and ỹ change from step to step
    first = reference_unroll(head, x[0], T)["inputs"]
    assert not torch.allclose(first[0][:L], first[1][:L]) and first[1][-L:].sum() == 1 and first[2][-L:].sum() == 2


def fitted(data: MultiLabelData, **params) -> OrderFreeRNN:
    return OrderFreeRNN(**{**TINY, "epochs": 1, "dropout": 0.0, **params}).fit(data)


def test_the_training_target_is_the_whole_label_vector_at_every_step():
    data = mosaic(24)
    method = fitted(data, val_fraction=0.0)
    method.model_.eval()
    batch = next(method._source(data, train=False).batches([np.arange(10)]))
    T = method.max_steps_
    with torch.no_grad():
        step_logits = unroll(method.head_, method.encoder_(batch.inputs), T)["step_logits"]
        loss, _ = method._rnn_loss(batch)
        _, terms = method.compute_loss(method.forward_train(method.model_, batch), batch.y)
    y = data.Y[:10].astype(np.float64)
    expected = 0.0
    for b in range(10):          # Eq. (8): every step against the image's whole ground truth
        for t in range(T):
            for c in range(L):
                p = 1.0 / (1.0 + math.exp(-float(step_logits[b, t, c])))
                expected -= y[b, c] * math.log(p) + (1 - y[b, c]) * math.log(1 - p)
    assert T >= 2 and float(loss) == pytest.approx(expected / (10 * T), rel=1e-5)
    assert float(terms["steps"]) == pytest.approx(expected / (10 * T), rel=1e-5)


# ----------------------------------------------------------------------------- one decode, keys once
def test_predict_scores_readouts_and_maps_come_from_one_search(monkeypatch):
    data = mosaic(40)
    train, test = data.subset(np.arange(30)), data.subset(np.arange(30, 40))
    method = fitted(train, val_fraction=0.0)   # no validation, no calibration: τ stays 0.5 across fits
    searches = []
    real = ofr.beam_search
    monkeypatch.setattr(ofr, "beam_search", lambda *a, **k: searches.append(len(a[1])) or real(*a, **k))
    scores, labels = method.predict_scores(test), method.predict(test)
    readout, maps = method.predict_readouts(test)["cnn_baseline"], method.class_maps(test)
    assert searches == [10]
    # the same as each one's own search (the forward pass of prediction, batch by batch)
    own = method.map_batches(test, method.forward_eval)
    np.testing.assert_array_equal(labels, own["labels"].astype(np.uint8))
    np.testing.assert_allclose(scores, own["path_scores"], rtol=1e-6)
    np.testing.assert_allclose(readout, 1 / (1 + np.exp(-own["logits"].astype(np.float64))), rtol=1e-5)
    np.testing.assert_allclose(maps.reshape(own["class_maps"].shape), own["class_maps"], rtol=1e-6)
    searches.clear()
    method.predict(test.subset(np.arange(5)))        # another dataset: a search of its own
    assert searches == [5]
    method.predict(test)
    method.fit(data.subset(np.arange(10, 40)))        # new weights: the earlier search no longer holds
    searches.clear()
    method.predict(test)
    assert searches == [10]


@torch.no_grad()
def test_the_attention_keys_are_computed_once_per_image_not_per_beam():
    head, x = toy_head(seed=7), regions(5)
    rows = []
    handle = head.attention.regions.register_forward_hook(lambda module, args, out: rows.append(args[0].shape[0]))
    beam_search(head, x, beam=3, max_steps=L)
    handle.remove()
    assert rows == [len(x)]   # one call on the images' regions [B, m, C], not on the B x beam copies


def test_the_map_stage_validates_v_prob_alone_without_a_search(monkeypatch):
    from sklearn.metrics import average_precision_score

    data = mosaic(40)
    train, val = data.subset(np.arange(28)), data.subset(np.arange(28, 40))
    searches, readouts = [], []
    real = ofr.beam_search
    monkeypatch.setattr(ofr, "beam_search", lambda *a, **k: searches.append(1) or real(*a, **k))

    class Recording(OrderFreeRNN):
        def epoch_callbacks(self):
            def record(entry):
                logits = self.map_batches(val, lambda model, batch: model.head.map_logits(model.encoder(batch.inputs)))
                readouts.append((entry, len(searches), 1 / (1 + np.exp(-logits.astype(np.float64)))))
            return [record]

    Recording(**{**TINY, "epochs": 2, "dropout": 0.0}).fit(train, val)
    map_epochs = [(e, n, s) for e, n, s in readouts if e["stage"] == "map"]
    assert len(map_epochs) == 2 and all(n == 0 for _, n, _ in map_epochs)    # no search before the RNN trains
    for entry, _, scores in map_epochs:
        assert entry["val_loss"] == entry["val_map"]
        assert entry["val_mAP"] == pytest.approx(average_precision_score(val.Y, scores, average="macro"), abs=1e-6)
    rnn_epochs = [(e, n) for e, n, _ in readouts if e["stage"] == "rnn"]
    assert [n for _, n in rnn_epochs] == [1, 2]                               # one search per validation
    assert all("val_steps" in e for e, _ in rnn_epochs)


# ----------------------------------------------------------------------------- settings
IMAGE_DATASET = '''
import numpy as np
from bench.api import Dataset
from bench.data import ImageView, MultiLabelData


class TinyImages(Dataset):
    name = "tiny-images"
    protocol = "kfold"
    embedded = True
    scale_defaults = {"backbone": "small-cnn", "pretrained": False, "image_size": None}

    def load(self, data_root):
        rng = np.random.default_rng(0)
        Y = (rng.random((40, 3)) < 0.5).astype(np.uint8)
        images = rng.integers(0, 256, (40, 16, 16)).astype(np.uint8)
        return MultiLabelData("tiny-images", {"image": ImageView(array=images)}, Y, ("a", "b", "c"))
'''


def test_set_pretrained_true_reaches_the_record_and_the_weights_through_the_cli(isolated, tmp_path, one_torch_thread):
    """The README's `--set backbone=efficientnet-lite0 --set pretrained=true` on a dataset whose scale
    says `pretrained=False`: the record says True, and the maps were cached from the ImageNet weights."""
    from bench.backbones import build_backbone
    from bench.cli import main
    from bench.feature_cache import SpatialFeatureCache
    from bench.image import test_transform
    from bench.store import ResultStore

    (isolated / "datasets" / "tiny_images.py").write_text(IMAGE_DATASET)
    argv = ["run", "--method", "order_free_rnn", "--dataset", "tiny-images", "--protocol", "holdout", "--seeds", "0",
            "--smoke", "--device", "cpu", "--no-progress", "--no-mlflow"]
    settings = ["backbone=efficientnet-lite0", "pretrained=true", "image_size=32", "hidden=8", "num_workers=0"]
    assert main(argv + [a for s in settings for a in ("--set", s)]) == 0
    (record,) = ResultStore(tmp_path / "results").records("tiny-images", "order_free_rnn")
    params = record["config"]["params"]
    assert (params["backbone"], params["pretrained"], params["image_size"]) == ("efficientnet-lite0", True, 32)
    assert record["overrides"]["pretrained"] is True and "pretrained" not in record["config"].get("scale_defaults", {})
    cache = tmp_path / "results" / "_cache"
    imagenet = SpatialFeatureCache.for_backbone(build_backbone("efficientnet-lite0", True), test_transform(32), cache)
    assert list(imagenet.folder.glob("shard-*.npy"))
    assert [p.name for p in (cache / "spatial_features").iterdir()] == [imagenet.folder.name]   # no random one


def test_on_mnist_mosaic_order_free_rnn_and_its_ablations_get_the_frozen_imagenet_cnn():
    from bench import params, plugins

    scale = plugins.get("datasets", "mnist-mosaic").scale_defaults
    for name in ("order_free_rnn", "order_free_rnn_no_attention", "order_free_rnn_frequency_first",
                 "order_free_rnn_rare_first"):
        got = params.resolve(plugins.get("methods", name), {}, scale).params
        assert (got["backbone"], got["pretrained"], got["image_size"], got["freeze_backbone"], got["map_epochs"]) == \
            ("efficientnet-lite0", True, 224, True, 80), name
    for name in ("der", "cmsg", "retdm"):     # the methods that train their CNN keep the small one
        got = params.resolve(plugins.get("methods", name), {}, scale).params
        assert (got["backbone"], got["pretrained"]) == ("small-cnn", False), name


def test_the_optional_first_stage_trains_the_cnn_on_the_training_part_then_freezes_it(monkeypatch):
    from bench import deep

    data = mosaic(40)
    seen = []
    real = deep.ImageSource.batches
    monkeypatch.setattr(deep.ImageSource, "batches", lambda self, idx: seen.append(len(np.concatenate(idx))) or real(self, idx))
    plain = fitted(data, val_fraction=0.25)
    seen.clear()
    method = fitted(data, val_fraction=0.25, cnn_epochs=2)
    trained, untouched = method.encoder_.backbone.state_dict(), plain.encoder_.backbone.state_dict()
    assert any(not torch.equal(trained[k], untouched[k]) for k in trained)      # the CNN learnt
    assert not any(p.requires_grad for p in method.encoder_.backbone.parameters())  # and is frozen again
    assert len(method.cnn_history_) == 2 and seen[:2] == [30, 30]                # 40 less the 10 held out
    assert method.feature_cache_.folder != plain.feature_cache_.folder            # maps of the trained CNN
    assert list(method.feature_cache_.folder.glob("shard-*.npy"))
    after = fitted(data, val_fraction=0.25, cnn_epochs=2)                         # the same seed, the same CNN
    assert all(torch.equal(v, after.encoder_.backbone.state_dict()[k]) for k, v in trained.items())
