"""CMSG (methods/cmsg.py) and its label graph (bench/label_embeddings.py): masked multi-head attention
against a readable per-head loop, a zero correlation entry blocking attention (output and gradient),
the whole head (class-specific features -> masked SGA -> SAA with keys X + P, values X -> per-class
dot product) against a step-by-step reference, the sine encoding against its formula, the
asymmetric loss against its per-element formula and against BCE, and its wiring (the method's
γ+/γ-/clip, summed over the batch), Adam's parameter groups, the per-step OneCycle, the defaults,
prediction with the EMA weights, the embeddings offline (no network), with a prompt, and from tiny
GloVe / word-vector files in their real formats, the re-weighted graph and its summary on
hand-computed cases, the run-time warnings, the validation-chosen thresholds, and the fitted
method (hyper-parameters, maps, ablations), also on a 4 KB image fixture with semantic label names
(tests/fixtures/custom-images) where the graph changes the outputs.

Each of these was checked by breaking the wire it guards (13 changes to the head, loss wiring,
optimizer, schedule and defaults; each makes at least one test here fail)."""

from __future__ import annotations

import logging
import math
import pickle
import socket
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import plugin_module

from bench import label_embeddings as le
from bench import plugins
from bench.data import ImageView, MultiLabelData
from bench.errors import BenchError
from bench.training import EMA, Batch

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def cmsg():
    return plugin_module("methods", "cmsg")


# ----------------------------------------------------------------------------- readable references
def reference_attention(layer, x, allowed, log_weights=None):
    """One SGA layer written out: per example, per head, per query label i, a softmax over the
    labels j that i may attend to (``allowed[i, j]``), optionally weighted by exp(log_weights)."""
    mha = layer.attention
    d, heads = x.shape[-1], mha.num_heads
    dh = d // heads
    wq, wk, wv = mha.in_proj_weight.detach().chunk(3)
    bq, bk, bv = mha.in_proj_bias.detach().chunk(3)
    out = torch.zeros_like(x)
    for b in range(x.shape[0]):
        q, k, v = x[b] @ wq.T + bq, x[b] @ wk.T + bk, x[b] @ wv.T + bv
        concat = torch.zeros(x.shape[1], d, dtype=x.dtype)
        for h in range(heads):
            cols = slice(h * dh, (h + 1) * dh)
            for i in range(x.shape[1]):
                js = [j for j in range(x.shape[1]) if allowed[i, j]]
                scores = torch.stack([q[i, cols] @ k[j, cols] / math.sqrt(dh) for j in js])
                if log_weights is not None:
                    scores = scores + torch.stack([log_weights[i, j] for j in js])
                weights = scores.softmax(0)
                concat[i, cols] = sum(w * v[j, cols] for w, j in zip(weights, js, strict=True))
        out[b] = concat @ mha.out_proj.weight.detach().T + mha.out_proj.bias.detach()
    z = layer.norm1(x + out)
    return layer.norm2(z + layer.ffn(z))


def graph(n=5, blocked=((0, 3), (3, 0), (1, 4), (4, 1), (2, 4), (4, 2))):
    """A re-weighted correlation matrix with the ``blocked`` pairs at 0."""
    binary = np.ones((n, n))
    for i, j in blocked:
        binary[i, j] = 0
    return le.reweight_correlation(binary, 0.2)


# ----------------------------------------------------------------------------- SGA: masked attention
@pytest.mark.parametrize("weighting", ["mask", "log"])
def test_masked_multi_head_attention_matches_a_per_head_loop(cmsg, weighting):
    torch.manual_seed(0)
    layer = cmsg.MaskedSelfAttentionLayer(width=8, heads=2, ffn_dim=16, dropout=0.0).eval()
    corr = torch.as_tensor(graph(), dtype=torch.float32)
    x = torch.randn(3, 5, 8)
    with torch.no_grad():
        got = layer(x, cmsg.attention_bias(corr, weighting))
        expected = reference_attention(layer, x, allowed=(corr > 0).numpy(),
                                       log_weights=corr.log() if weighting == "log" else None)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    unmasked = layer(x, None).detach()
    assert not torch.allclose(unmasked, got, atol=1e-4), "the mask must change the result"


def test_a_zero_correlation_entry_blocks_attention_between_the_two_labels(cmsg):
    torch.manual_seed(1)
    corr = torch.as_tensor(graph(), dtype=torch.float32)          # A'[0, 3] = A'[3, 0] = 0
    layer = cmsg.MaskedSelfAttentionLayer(width=8, heads=2, ffn_dim=16, dropout=0.0).eval()
    bias = cmsg.attention_bias(corr)
    x = torch.randn(2, 5, 8, requires_grad=True)
    out = layer(x, bias)
    probe = torch.randn(8)   # a random readout of label 0 (the sum of a LayerNorm output is constant)
    (grad,) = torch.autograd.grad((out[:, 0] * probe).sum(), x)
    assert torch.count_nonzero(grad[:, 3]) == 0, "label 0 must not see label 3"
    assert torch.count_nonzero(grad[:, 1]) > 0 and torch.count_nonzero(grad[:, 0]) > 0  # allowed ones do
    changed = x.detach().clone()
    changed[:, 3] += 5 * torch.randn(2, 8)
    torch.testing.assert_close(layer(changed, bias)[:, 0], out[:, 0].detach())
    assert not torch.allclose(layer(changed, bias)[:, 1], out[:, 1].detach())
    # without the matrix (the cmsg_no_correlation ablation) label 0 does see label 3
    (free,) = torch.autograd.grad((layer(x, None)[:, 0] * probe).sum(), x)
    assert torch.count_nonzero(free[:, 3]) > 0


def test_attention_bias_keeps_the_diagonal_and_blocks_zeros(cmsg):
    corr = torch.tensor([[0.0, 0.5, 0.0], [0.2, 0.8, 0.0], [0.0, 0.0, 0.0]])
    bias = cmsg.attention_bias(corr)
    assert torch.isinf(bias[0, 2]) and torch.isinf(bias[1, 2]) and bias[0, 1] == 0
    assert torch.isfinite(torch.diagonal(bias)).all()   # self kept, even where A'_ii = 0
    log = cmsg.attention_bias(corr, "log")
    assert log[1, 0] == pytest.approx(math.log(0.2)) and log[0, 0] == 0 and torch.isinf(log[0, 2])


# ----------------------------------------------------------------------------- asymmetric loss
def asl_per_element(x, y, gamma_neg, gamma_pos, clip):
    p = 1 / (1 + math.exp(-x))
    if y == 1:
        return -((1 - p) ** gamma_pos) * math.log(p)
    pm = max(p - clip, 0.0)
    return -(pm ** gamma_neg) * math.log(1 - pm)


def test_asymmetric_loss_against_its_per_element_formula(cmsg):
    g = torch.Generator().manual_seed(0)
    logits = 3 * torch.randn(4, 6, generator=g, dtype=torch.float64)
    logits[0, 0] = -4.0                                            # p < clip: an easy negative, discarded
    y = (torch.rand(4, 6, generator=g) > 0.6).double()
    y[0, 0] = 0
    for gn, gp, clip in [(4, 0, 0.05), (2, 1, 0.1), (0, 0, 0.0)]:
        expected = np.mean([sum(asl_per_element(float(logits[b, c]), int(y[b, c]), gn, gp, clip) for c in range(6))
                            for b in range(4)])
        # the loss runs in float32 (hook 11), whatever the input's precision
        assert float(cmsg.asymmetric_loss(logits, y, gn, gp, clip)) == pytest.approx(expected, rel=1e-6)


def test_asymmetric_loss_focusing_weight_carries_no_gradient(cmsg):
    # one negative, gamma_neg = 4, clip 0.05: with the weight w = p_m^4 held constant,
    # d/dx [-w log(1 - p_m)] = w * p (1 - p) / (1 - p_m)
    x = torch.tensor([[0.7]], dtype=torch.float64, requires_grad=True)
    cmsg.asymmetric_loss(x, torch.zeros(1, 1, dtype=torch.float64), 4.0, 0.0, 0.05).backward()
    p = 1 / (1 + math.exp(-0.7))
    pm = p - 0.05
    assert float(x.grad) == pytest.approx(pm ** 4 * p * (1 - p) / (1 - pm), rel=1e-6)
    # an easy negative below the margin gives no gradient at all
    easy = torch.tensor([[-5.0]], requires_grad=True)
    cmsg.asymmetric_loss(easy, torch.zeros(1, 1), 4.0, 0.0, 0.05).backward()
    assert float(easy.grad) == 0.0


def test_asymmetric_loss_with_no_focusing_and_no_clip_is_bce_summed_over_labels(cmsg):
    g = torch.Generator().manual_seed(2)
    logits = 25 * torch.randn(5, 7, generator=g)                   # also far beyond ASL's 1e-8 clamp
    y = (torch.rand(5, 7, generator=g) > 0.5).float()
    bce = F.binary_cross_entropy_with_logits(logits, y, reduction="none").sum(1).mean()
    torch.testing.assert_close(cmsg.asymmetric_loss(logits, y, 0.0, 0.0, 0.0), bce)


# ----------------------------------------------------------------------------- the label graph
def test_semantic_correlation_binarises_cosine_and_reweights_as_ml_gcn():
    e = np.array([[1.0, 0.0], [0.8, 0.6], [0.0, 2.0]])             # cos: (0,1) 0.8, (1,2) 0.6, (0,2) 0
    np.testing.assert_allclose(le.cosine_similarity(e), [[1, 0.8, 0], [0.8, 1, 0.6], [0, 0.6, 1]], atol=1e-12)
    np.testing.assert_allclose(le.semantic_correlation(e, tau=0.7, p=0.2),
                               [[0.8, 0.2, 0], [0.2, 0.8, 0], [0, 0, 1]], atol=1e-12)    # label 2 alone: keeps 1
    np.testing.assert_allclose(le.semantic_correlation(e, tau=0.5, p=0.2),
                               [[0.8, 0.2, 0], [0.1, 0.8, 0.1], [0, 0.2, 0.8]], atol=1e-12)


# ----------------------------------------------------------------------------- embeddings
@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a connection fails (the embeddings must come from local files)."""
    def refuse(*args, **kwargs):
        raise OSError("network access attempted in an offline test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):   # not relied upon: unset them
        monkeypatch.delenv(var, raising=False)


def test_the_default_sentence_model_embeds_label_names_offline(no_network):
    le._sentence_model.cache_clear()      # load the model itself under the network block
    le._minilm_embeddings.cache_clear()
    names = ["cat", "dog", "dining table", "diningtable", "aeroplane"]
    e = le.label_embeddings(names)
    assert e.shape == (5, 384) and e.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1, atol=1e-5)
    np.testing.assert_array_equal(e[2], e[3])                    # VOC's run-together name read as its words
    cos = le.cosine_similarity(e)
    assert cos[0, 1] > cos[0, 2] and cos[0, 1] > 0.5             # cat is nearer dog than dining table
    np.testing.assert_array_equal(le.label_embeddings(names), e)  # cached, and a copy
    assert le._minilm_embeddings.cache_info().hits >= 1
    # transformers imports any module named `datasets` it finds: never the plug-in folder
    assert "datasets" not in sys.modules and "methods" not in sys.modules


GLOVE = """cat 1.0 0.0 0.0 0.5
dog 0.9 0.1 0.0 0.4
dining 0.0 1.0 0.0 0.0
table 0.0 0.0 1.0 0.0
. . . 0.1 0.2 0.3 0.4
tv 1.0 1.0 1.0 1.0
"""


def test_glove_text_file_gives_the_mean_of_each_names_words(tmp_path):
    path = tmp_path / "glove.test.4d.txt"
    path.write_text(GLOVE)
    e = le.label_embeddings(["cat", "Dining_Table", "diningtable"], str(path))
    np.testing.assert_allclose(e, [[1, 0, 0, 0.5], [0, 0.5, 0.5, 0], [0, 0.5, 0.5, 0]])
    header = tmp_path / "w2v.txt"                                 # word2vec text header "<count> <dim>"
    header.write_text("2 4\n" + GLOVE)
    np.testing.assert_allclose(le.label_embeddings(["dog"], str(header)), [[0.9, 0.1, 0, 0.4]])


def test_glove_and_pickle_errors_are_one_line_and_name_the_problem(tmp_path):
    path = tmp_path / "glove.txt"
    path.write_text(GLOVE)
    with pytest.raises(BenchError, match=r"label 'traffic light': word 'traffic' is not in the vocabulary"):
        le.label_embeddings(["cat", "traffic light"], str(path))
    with pytest.raises(BenchError, match="no such file"):
        le.label_embeddings(["cat"], str(tmp_path / "missing.txt"))
    bad = tmp_path / "bad.txt"
    bad.write_text("cat 1 2 3\ndog 1 2\n")
    with pytest.raises(BenchError, match=r"line 2 has 2 values, expected 3"):
        le.label_embeddings(["dog"], str(bad))
    with pytest.raises(BenchError, match="GloVe text file"):
        le.check_source(str(tmp_path / "vectors.bin"))
    pkl = tmp_path / "voc_glove_word2vec.pkl"
    with pkl.open("wb") as f:
        pickle.dump(np.arange(12, dtype=np.float64).reshape(3, 4), f)
    np.testing.assert_array_equal(le.label_embeddings(["a", "b", "c"], str(pkl)),
                                  np.arange(12, dtype=np.float32).reshape(3, 4))
    with pytest.raises(BenchError, match=r"expected an array \[2 labels, dim\].*got shape \(3, 4\)"):
        le.label_embeddings(["a", "b"], str(pkl))


# ----------------------------------------------------------------------------- EMA warm-up
def test_ema_warmup_uses_min_decay_and_the_update_count():
    model = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(0.0)
    ema = EMA(model, 0.9, warmup=True)
    expected = 0.0
    for t, w in enumerate([1.0, 2.0, 3.0, 4.0]):
        with torch.no_grad():
            model.weight.fill_(w)
        decay = min(0.9, (1 + t) / (10 + t))
        assert ema.current_decay() == pytest.approx(decay)
        ema(model, None)
        expected = decay * expected + (1 - decay) * w
        assert float(ema.module.weight.detach()) == pytest.approx(expected, rel=1e-6)
    plain = EMA(model, 0.9)
    assert plain.current_decay() == 0.9


# ----------------------------------------------------------------------------- the fitted method
def tiny_images(n=24, names=("cat", "dog", "dining table", "tv")):
    rng = np.random.default_rng(0)
    Y = (rng.random((n, 4)) > 0.5).astype(np.uint8)
    pix = rng.integers(0, 80, (n, 16, 16)).astype(np.uint8)
    for label, (r, c) in enumerate([(0, 0), (0, 8), (8, 0), (8, 8)]):
        pix[Y[:, label] == 1, r:r + 8, c:c + 8] += 150
    return MultiLabelData("tiny-images", {"image": ImageView(array=pix)}, Y, names)


TINY = dict(backbone="small-cnn", pretrained=False, image_size=None, resize=None, epochs=1, batch_size=8,
            steps_per_epoch=2, num_workers=0, device="cpu")


def test_fit_reads_the_graph_from_the_given_embedding_and_honours_heads_and_layers(cmsg, tmp_path):
    path = tmp_path / "glove.txt"
    path.write_text(GLOVE)
    data = tiny_images()
    method = cmsg.CMSG(**TINY, label_embedding=str(path), tau=0.9, sga_heads=4, saa_heads=4,
                          sga_layers=2, saa_layers=2).fit(data)
    expected = le.semantic_correlation(le.label_embeddings(data.label_names, str(path)), 0.9, 0.2)
    np.testing.assert_allclose(method.correlation_, expected)
    np.testing.assert_allclose(method.head_.correlation.numpy(), expected, rtol=1e-6)
    assert method.embedding_dim_ == 4 and len(method.head_.sga) == 2 and len(method.head_.saa) == 2
    assert {layer.attention.num_heads for layer in [*method.head_.sga, *method.head_.saa]} == {4}
    assert method.get_params()["label_embedding"] == str(path)    # part of the job's identity
    maps = method.class_maps(data.subset(np.arange(4)))            # SAA's attention over the positions
    assert maps.shape == (4, 4, *method.encoder_.grid)
    np.testing.assert_allclose(maps.reshape(4, 4, -1).sum(-1), 1, atol=1e-5)
    with pytest.raises(BenchError, match="sga_heads=3 must divide the token width 128"):
        cmsg.CMSG(**TINY, label_embedding=str(path), sga_heads=3).fit(data)


def test_bad_settings_are_refused_before_any_work(cmsg, tmp_path):
    with pytest.raises(BenchError, match="no such file"):
        cmsg.CMSG(label_embedding=str(tmp_path / "glove.840B.300d.txt"))._check_params()
    with pytest.raises(BenchError, match="correlation_weighting"):
        cmsg.CMSG(correlation_weighting="softmax")._check_params()
    with pytest.raises(BenchError, match="sga_layers must be a positive integer"):
        cmsg.CMSG(sga_layers=0)._check_params()
    cmsg.CMSGNoSGA()._check_params()                       # no graph: no embedding to check


def test_ablations_switch_the_modules_off(cmsg, tmp_path):
    path = tmp_path / "glove.txt"
    path.write_text(GLOVE)
    data = tiny_images()
    encoder = SimpleNamespace(width=16, grid=(2, 3))
    tokens = torch.randn(2, 6, 16)

    def head(method):
        method.setup(data)
        return method.build_head(encoder, 4).eval()

    no_saa = head(cmsg.CMSGNoSAA(label_embedding=str(path)))
    assert len(no_saa.saa) == 0 and len(no_saa.sga) == 1 and no_saa.correlation is not None
    maps = no_saa(tokens)["class_maps"]                  # without SAA: the class-specific attention a_c
    assert maps.shape == (2, 4, 6)
    torch.testing.assert_close(maps.sum(-1), torch.ones(2, 4))
    no_sga = head(cmsg.CMSGNoSGA())
    assert len(no_sga.sga) == 0 and len(no_sga.saa) == 1 and no_sga.correlation is None
    no_corr = head(cmsg.CMSGNoCorrelation())
    assert len(no_corr.sga) == 1 and len(no_corr.saa) == 1 and no_corr.correlation is None
    baseline = head(cmsg.CMSGBaseline())
    assert isinstance(baseline.fc, torch.nn.Linear) and set(baseline(tokens)) == {"logits"}  # no maps
    full = head(cmsg.CMSG(label_embedding=str(path)))
    assert len(full.sga) == 1 and len(full.saa) == 1 and full.correlation is not None
    assert "label_embedding" not in cmsg.CMSGNoSGA().get_params() and "sga_heads" not in cmsg.CMSGBaseline().get_params()


# ----------------------------------------------------------------------------- the whole head, written out
def reference_sine_encoding(h, w, width):
    """DETR's 2-D sine encoding from its formula, one position and channel at a time: channel k of
    the first half encodes the row r (k even: sin, odd: cos, of (r + 1) / h * 2π * 10000^(-(k // 2) / F)),
    the second half the column likewise; F = ceil(half / 2) frequencies, half = ceil(width / 2)."""
    half = math.ceil(width / 2)
    n_freq = math.ceil(half / 2)
    pe = torch.zeros(h * w, width, dtype=torch.float64)
    for r in range(h):
        for c in range(w):
            for k in range(width):
                axis, kk = (r, k) if k < half else (c, k - half)
                size = h if k < half else w
                angle = (axis + 1) / size * 2 * math.pi * 10000.0 ** (-(kk // 2) / n_freq)
                pe[r * w + c, k] = math.sin(angle) if kk % 2 == 0 else math.cos(angle)
    return pe.float()


@pytest.mark.parametrize("grid, width", [((2, 3), 8), ((3, 2), 12), ((1, 4), 10), ((14, 14), 16)])
def test_sine_positional_encoding_against_its_formula(cmsg, grid, width):
    torch.testing.assert_close(cmsg.sine_positional_encoding(grid, width), reference_sine_encoding(*grid, width),
                               rtol=1e-5, atol=1e-5)


def reference_cross_attention(layer, f, keys, values):
    """One SAA layer written out: per example, head and label i, a softmax over the positions n of
    q_i · k_n / √d_h, with k_n from X_n + P_n and v_n from X_n; then residual + LayerNorm, FFN,
    residual + LayerNorm. Also the attention averaged over the heads [B, L, N]."""
    mha = layer.attention
    d, heads = f.shape[-1], mha.num_heads
    dh = d // heads
    wq, wk, wv = mha.in_proj_weight.detach().chunk(3)
    bq, bk, bv = mha.in_proj_bias.detach().chunk(3)
    out = torch.zeros_like(f)
    maps = torch.zeros(f.shape[0], f.shape[1], keys.shape[1])
    for b in range(f.shape[0]):
        q, k, v = f[b] @ wq.T + bq, keys[b] @ wk.T + bk, values[b] @ wv.T + bv
        concat = torch.zeros(f.shape[1], d)
        for h in range(heads):
            cols = slice(h * dh, (h + 1) * dh)
            for i in range(f.shape[1]):
                weights = torch.stack([q[i, cols] @ k[n, cols] / math.sqrt(dh) for n in range(len(k))]).softmax(0)
                concat[i, cols] = sum(weights[n] * v[n, cols] for n in range(len(k)))
                maps[b, i] += weights / heads
        out[b] = concat @ mha.out_proj.weight.detach().T + mha.out_proj.bias.detach()
    z = layer.norm1(f + out)
    return layer.norm2(z + layer.ffn(z)), maps


def reference_head(head, x, allowed, grid):
    """CMSG's head on tokens X [B, N, D], step by step: class-specific features
    f_c = Σ_n softmax_n(w_cᵀ X_n + b_c) X_n -> SGA (masked by ``allowed``) -> SAA (keys X + P,
    values X) -> ŷ_c = w_cᵀ z_c + b_c, one weight vector per class."""
    w, b = head.class_features.attend.weight.detach(), head.class_features.attend.bias.detach()
    n_labels = len(w)
    f = torch.zeros(x.shape[0], n_labels, x.shape[-1])
    for i in range(x.shape[0]):
        for c in range(n_labels):
            a = torch.stack([w[c] @ x[i, n] + b[c] for n in range(x.shape[1])]).softmax(0)
            f[i, c] = sum(a[n] * x[i, n] for n in range(x.shape[1]))
    for layer in head.sga:
        f = reference_attention(layer, f, allowed)
    keys = x + reference_sine_encoding(*grid, x.shape[-1])
    maps = None
    for layer in head.saa:
        f, maps = reference_cross_attention(layer, f, keys, x)
    weight, bias = head.classifier.weight.detach(), head.classifier.bias.detach()
    logits = torch.stack([torch.stack([weight[c] @ f[i, c] + bias[c] for c in range(n_labels)])
                          for i in range(x.shape[0])])
    return logits, maps


@pytest.mark.parametrize("sga_layers, saa_layers", [(1, 1), (2, 1), (1, 2)])
def test_the_whole_head_matches_a_step_by_step_reference(cmsg, sga_layers, saa_layers):
    torch.manual_seed(3)
    grid, width = (2, 3), 8
    corr = graph()                                                   # 5 labels, 3 blocked pairs
    head = cmsg.CMSGHead(width, grid, 5, corr, sga_layers=sga_layers, saa_layers=saa_layers, sga_heads=2,
                         saa_heads=4, ffn_dim=16, dropout=0.1).eval()
    with torch.no_grad():                                            # distinct, non-trivial class vectors
        head.classifier.weight.normal_()
        head.classifier.bias.normal_()
    x = torch.randn(2, 6, width)
    with torch.no_grad():
        got = head(x)
        logits, maps = reference_head(head, x, allowed=corr > 0, grid=grid)
    torch.testing.assert_close(got["logits"], logits, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(got["class_maps"], maps, rtol=1e-4, atol=1e-5)
    assert {layer.attention.num_heads for layer in head.sga} == {2}
    assert {layer.attention.num_heads for layer in head.saa} == {4}
    assert (len(head.sga), len(head.saa)) == (sga_layers, saa_layers)
    assert head.classifier.weight.shape == (5, width)                 # one weight vector per class


# ----------------------------------------------------------------------------- recipe: loss, groups, schedule, defaults
def test_compute_loss_passes_the_methods_gammas_and_clip(cmsg):
    g = torch.Generator().manual_seed(4)
    logits = 2 * torch.randn(6, 5, generator=g, dtype=torch.float64)
    y = (torch.rand(6, 5, generator=g) > 0.5).double()
    for params in [{}, {"gamma_neg": 3.0, "gamma_pos": 1.0, "clip": 0.2}]:
        method = cmsg.CMSG(**params)
        gn, gp, clip = method.gamma_neg, method.gamma_pos, method.clip
        expected = np.mean([sum(asl_per_element(float(logits[b, c]), int(y[b, c]), gn, gp, clip) for c in range(5))
                            for b in range(6)])
        total, terms = method.compute_loss({"logits": logits}, y)
        assert float(total) == pytest.approx(expected, rel=1e-6) and float(terms["asl"]) == float(total)


def test_training_loss_sums_over_the_batch_as_asl_by_default(cmsg):
    g = torch.Generator().manual_seed(5)
    logits = 2 * torch.randn(7, 3, generator=g)
    y = (torch.rand(7, 3, generator=g) > 0.5).float()
    per_image = float(cmsg.asymmetric_loss(logits, y))
    batch = Batch(logits, y, torch.arange(7))
    for reduction, factor in [("sum", 7), ("mean", 1)]:
        method = cmsg.CMSG(reduction=reduction)
        method.model_, method.device_ = (lambda inputs: {"logits": inputs}), torch.device("cpu")
        total, terms = method.training_loss(batch)
        assert float(total) == pytest.approx(factor * per_image, rel=1e-6)
        assert float(terms["asl"]) == pytest.approx(per_image, rel=1e-6)     # logged per image either way
    assert cmsg.CMSG().reduction == "sum"
    with pytest.raises(BenchError, match="reduction must be one of sum, mean"):
        cmsg.CMSG(reduction="none")._check_params()


def test_weight_decay_only_on_weight_matrices_and_adam_at_the_methods_lr(cmsg):
    method = cmsg.CMSG(label_embedding="minilm", lr=3e-4, weight_decay=2e-4)
    method.correlation_ = graph()
    head = method.build_head(SimpleNamespace(width=16, grid=(2, 2)), 5)
    optimizer = method.make_optimizer(head)
    assert isinstance(optimizer, torch.optim.Adam)
    decay = {id(p) for g in optimizer.param_groups if g["weight_decay"] == 2e-4 for p in g["params"]}
    no_decay = {id(p) for g in optimizer.param_groups if g["weight_decay"] == 0 for p in g["params"]}
    assert all(g["lr"] == 3e-4 for g in optimizer.param_groups)
    names = dict(head.named_parameters())
    for name, p in names.items():
        exempt = name.endswith("bias") or ".norm" in name
        assert (id(p) in no_decay, id(p) in decay) == (exempt, not exempt), name
    assert any(".norm1.weight" in n for n in names) and "classifier.weight" in names    # both kinds present


def test_onecycle_is_stepped_after_every_batch(cmsg):
    data = tiny_images()
    method = cmsg.CMSG(**{**TINY, "epochs": 3}, label_embedding="minilm", use_correlation=False, lr=1e-3).fit(data)
    reference = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1e-3)
    schedule = torch.optim.lr_scheduler.OneCycleLR(reference, max_lr=1e-3, epochs=3, steps_per_epoch=2, pct_start=0.2)
    expected = []
    for _ in range(3):                                   # lr at the start of each epoch, after 2 steps each
        expected.append(reference.param_groups[0]["lr"])
        for _ in range(2):
            reference.step()
            schedule.step()
    assert [r["lr"] for r in method.history_] == pytest.approx(expected, rel=1e-9)
    assert cmsg.CMSG.scheduler_interval == "step"


def test_defaults_are_the_papers_and_asls_recipe(cmsg):
    params = cmsg.CMSG().get_params()
    expected = dict(backbone="resnet101", pretrained=True, image_size=448, resize=512, flip=True,
                    label_embedding="minilm", label_prompt=None, tau=0.4, reweight_p=0.2,
                    correlation_weighting="mask", sga_layers=1, saa_layers=1, sga_heads=8, saa_heads=8,
                    ffn_dim=None, dropout=0.1, positional_encoding="sine", use_sga=True, use_saa=True,
                    use_correlation=True, baseline=False, gamma_neg=4.0, gamma_pos=0.0, clip=0.05,
                    reduction="sum", lr=1e-4, weight_decay=1e-4, pct_start=0.2, ema_decay=0.9997,
                    ema_warmup=True, val_fraction=0.0, patience=None)
    assert {k: params[k] for k in expected} == expected


def test_a_fitted_model_predicts_with_the_ema_weights(cmsg, monkeypatch):
    import bench.deep

    data = tiny_images()
    trained = {}
    real_loop = bench.deep.train_loop

    def spy(model, *args, **kwargs):                     # the weights the optimizer left
        result = real_loop(model, *args, **kwargs)
        trained.update({k: v.detach().clone() for k, v in model.state_dict().items()})
        return result

    monkeypatch.setattr(bench.deep, "train_loop", spy)
    method = cmsg.CMSG(**TINY, use_correlation=False, lr=1e-2).fit(data)
    final = method.model_.state_dict()
    changed = [k for k in trained if k.endswith("weight") and not torch.equal(trained[k], final[k])]
    assert changed, "prediction must use the EMA average, not the last weights"


# ----------------------------------------------------------------------------- where the label graph matters
FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="module")
def semantic_images():
    """``tests/fixtures/custom-images``: 32 grey 24 x 24 PNGs (4 KB in all) in the ``custom-images``
    layout (labels.csv + images/), labels cat, dog, car, bus, apple, banana, each a bright square in
    its own cell of a 3 x 3 grid. Their MiniLM graph at τ = 0.4 is not complete (cat-bus 0.29)."""
    return plugins.get("datasets", "custom-images")().load(FIXTURES)


def test_on_semantic_label_names_the_graph_changes_cmsgs_outputs(cmsg, semantic_images, caplog, monkeypatch):
    monkeypatch.setattr(cmsg, "_said", set())                        # lines said once per process: say them again
    data = semantic_images
    settings = {**TINY, "image_size": 24, "epochs": 2, "lr": 1e-3}   # files: no native size, 448 unless told
    with caplog.at_level(logging.INFO):
        full = cmsg.CMSG(**settings).fit(data)
    names = list(data.label_names)
    cat, bus = names.index("cat"), names.index("bus")
    assert 0 < full.graph_["density"] < 1 and full.correlation_[cat, bus] == 0
    assert any("density 0.40" in r.getMessage() for r in caplog.records)
    ablation = cmsg.CMSGNoCorrelation(**settings).fit(data)
    complete = cmsg.CMSG(**settings, tau=-1.0).fit(data)            # every pair allowed: the mask blocks nothing
    scores = full.predict_scores(data)
    assert np.abs(scores - ablation.predict_scores(data)).max() > 1e-4      # the graph changes the outputs
    np.testing.assert_allclose(complete.predict_scores(data), ablation.predict_scores(data), atol=1e-6)

    # in the fitted model, the blocked pair gets exactly zero attention in every head; without the graph it gets some
    def sga_attention(method):
        with torch.no_grad():
            model = method.model_.eval()
            images = next(method._source(data.subset(np.arange(8)), train=False).batches([np.arange(8)])).inputs
            features, _ = model.head.class_features(model.encoder(images))
            bias = (None if model.head.correlation is None
                    else cmsg.attention_bias(model.head.correlation, method.correlation_weighting))
            _, weights = model.head.sga[0].attention(features, features, features, attn_mask=bias,
                                                     need_weights=True, average_attn_weights=False)
        return weights                                                       # [B, heads, L, L]

    assert torch.count_nonzero(sga_attention(full)[:, :, cat, bus]) == 0
    assert torch.count_nonzero(sga_attention(full)[:, :, bus, cat]) == 0
    assert (sga_attention(ablation)[:, :, cat, bus] > 0).all()


def test_graph_summary_on_a_hand_made_graph():
    a = le.reweight_correlation(np.array([[0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]), 0.2)
    summary = le.graph_summary(a, ["a", "b", "c", "d"])
    assert summary == {"density": pytest.approx(2 / 12), "complete": False, "isolated": ["c", "d"]}
    assert le.graph_summary(le.reweight_correlation(np.ones((3, 3)), 0.2), ["x", "y", "z"])["complete"]


def test_a_complete_graph_and_a_single_token_are_warned_about(cmsg, caplog, monkeypatch):
    monkeypatch.setattr(cmsg, "_said", set())
    data = tiny_images(names=("0", "1", "2", "3"))                  # digit names: a complete graph
    with caplog.at_level(logging.WARNING):
        cmsg.CMSG(**TINY).fit(data)
    assert any("the graph is complete" in r.getMessage() and "cmsg_no_correlation" in r.getMessage()
               for r in caplog.records)
    caplog.clear()
    rng = np.random.default_rng(0)
    one_view = MultiLabelData("one-view", {"features": rng.normal(size=(24, 5)).astype(np.float32)},
                              (rng.random((24, 3)) > 0.5).astype(np.uint8), ["cat", "bus", "apple"])
    with caplog.at_level(logging.WARNING):
        cmsg.CMSG(**{**TINY, "width": 16}).fit(one_view)
    assert any("one token" in r.getMessage() and "per-class linear layer" in r.getMessage() for r in caplog.records)


def test_on_one_token_the_graph_changes_nothing_and_every_label_sees_the_same_feature(cmsg):
    torch.manual_seed(8)
    masked = cmsg.CMSGHead(8, (1, 1), 5, graph(), sga_heads=2, saa_heads=2, ffn_dim=16, dropout=0.0).eval()
    free = cmsg.CMSGHead(8, (1, 1), 5, None, sga_heads=2, saa_heads=2, ffn_dim=16, dropout=0.0).eval()
    free.load_state_dict({k: v for k, v in masked.state_dict().items() if k != "correlation"}, strict=False)
    x = torch.randn(3, 1, 8)
    with torch.no_grad():
        torch.testing.assert_close(masked(x)["logits"], free(x)["logits"])
        z = x.expand(3, 5, 8)                            # f_c = X for every label: softmax over one position
        for layer in masked.sga:
            z = layer(z, None)
        assert torch.allclose(z, z[:, :1].expand_as(z), atol=1e-6)   # one feature shared by the labels


def test_reweight_p_zero_is_refused(cmsg):
    with pytest.raises(BenchError, match=r"reweight_p must be in \(0, 1\).*block all label-to-label attention"):
        cmsg.CMSG(reweight_p=0.0)._check_params()


def test_a_prompt_template_changes_the_sentence_embeddings_and_is_checked(tmp_path):
    names = ["car", "cat", "train"]
    bare = le.cosine_similarity(le.label_embeddings(names))
    prompted = le.label_embeddings(names, prompt="a photo of a {}")
    expected = le._sentence_model().encode(["a photo of a car", "a photo of a cat", "a photo of a train"],
                                           normalize_embeddings=True)
    np.testing.assert_allclose(prompted, expected, atol=1e-5)
    assert bare[0, 1] > bare[0, 2]             # bare words: car nearer cat (spelling) than train
    cos = le.cosine_similarity(prompted)
    assert cos[0, 2] > cos[0, 1]               # in a sentence, meaning wins
    with pytest.raises(BenchError, match="template with one"):
        le.check_prompt("a photo of a cat")
    path = tmp_path / "glove.txt"
    path.write_text(GLOVE)
    with pytest.raises(BenchError, match="needs the sentence model"):
        le.label_embeddings(["cat"], str(path), prompt="a {}")


# ----------------------------------------------------------------------------- thresholds chosen on validation
def test_choose_thresholds_maximises_f1_on_the_given_part():
    from sklearn.metrics import f1_score

    rng = np.random.default_rng(6)
    Y = (rng.random((60, 4)) > 0.6).astype(np.uint8)
    scores = np.clip(0.5 * Y + rng.random((60, 4)) * 0.7, 0, 1)
    Y[:, 3] = 0                                                      # a label with no positive keeps 0.5
    t, per_label = plugin_module("methods", "cmsg").choose_thresholds(Y, scores)
    grid = plugin_module("methods", "cmsg").THRESHOLD_GRID
    best = max(f1_score(Y, scores >= g, average="micro", zero_division=0) for g in grid)
    assert f1_score(Y, scores >= t, average="micro", zero_division=0) == pytest.approx(best)
    for c in range(3):
        best_c = max(f1_score(Y[:, c], scores[:, c] >= g, zero_division=0) for g in grid)
        assert f1_score(Y[:, c], scores[:, c] >= per_label[c], zero_division=0) == pytest.approx(best_c)
    assert per_label[3] == 0.5


def test_move_threshold_puts_the_threshold_at_one_half_and_keeps_each_labels_order(cmsg):
    rng = np.random.default_rng(7)
    scores = rng.random((50, 3))
    t = np.array([0.2, 0.5, 0.83])
    moved = cmsg.move_threshold(scores, t)
    np.testing.assert_array_equal(moved >= 0.5, scores >= t)
    for c in range(3):
        np.testing.assert_array_equal(np.argsort(moved[:, c]), np.argsort(scores[:, c]))
    assert moved.min() >= 0 and moved.max() <= 1
    np.testing.assert_allclose(cmsg.move_threshold(np.array([[0.0, 0.2, 1.0]]), 0.2), [[0.0, 0.5, 1.0]])


def test_threshold_readouts_are_chosen_on_the_validation_carve_out_only(cmsg):
    from bench.protocols import validation_split

    data = tiny_images(n=40)
    test = tiny_images(n=12)
    method = cmsg.CMSG(**{**TINY, "val_fraction": 0.25}, use_correlation=False).fit(data)
    _, val = validation_split(data, 0.25, 0)                      # the same carve-out (seed 0)
    expected = cmsg.choose_thresholds(val.Y, method.predict_scores(val))
    assert method.val_threshold_ == expected[0]
    np.testing.assert_array_equal(method.val_thresholds_, expected[1])
    readouts = method.predict_readouts(test)
    scores = method.predict_scores(test)
    np.testing.assert_array_equal(readouts["val_threshold"] >= 0.5, scores >= method.val_threshold_)
    np.testing.assert_array_equal(readouts["val_thresholds"] >= 0.5, scores >= method.val_thresholds_)
    assert cmsg.CMSG(**TINY, use_correlation=False).fit(data).predict_readouts(test) == {}   # no carve-out: none
