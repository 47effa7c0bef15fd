"""CMSG (methods/cmsg.py) and its label graph (bench/label_embeddings.py): masked multi-head attention
against a readable per-head loop, a zero correlation entry blocking attention (output and gradient),
the asymmetric loss against its per-element formula and against BCE, the embeddings offline (no
network) and from tiny GloVe / word-vector files in their real formats, the re-weighted graph on a
hand-computed case, the EMA warm-up, and the fitted method (hyper-parameters, maps, ablations)."""

from __future__ import annotations

import math
import pickle
import socket
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import plugin_module

from bench import label_embeddings as le
from bench.data import ImageView, MultiLabelData
from bench.errors import BenchError
from bench.training import EMA

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
