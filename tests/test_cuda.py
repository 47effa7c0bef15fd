"""GPU checks: the torch code gives on CUDA what it gives on the CPU, and trains there.

Skipped without CUDA (CI has no GPU). ``BENCH_TEST_DEVICE=cpu`` runs them on the CPU, which checks
the tests themselves on a machine without a GPU (every comparison is then CPU against CPU).
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from conftest import plugin_module

from bench import image_features, plugins, runner
from bench.cli import main
from bench.store import ResultStore

DEVICE = os.environ.get("BENCH_TEST_DEVICE", "cuda")
pytestmark = [
    pytest.mark.skipif(DEVICE.startswith("cuda") and not torch.cuda.is_available(), reason="needs a CUDA GPU"),
    pytest.mark.usefixtures("one_torch_thread"),
]


def mosaic(n: int):
    data = runner.load_dataset("mnist-mosaic", "unused")
    return data.subset(np.arange(n))


def test_rmlc_forward_on_the_device_matches_the_cpu():
    rmlc = plugin_module("methods", "rmlc")
    cpu = rmlc.RMLCNet([5, 7, 3], 16, 4, True, torch.Generator().manual_seed(0))
    with torch.no_grad():
        cpu.S.normal_(generator=torch.Generator().manual_seed(1))
    dev = rmlc.RMLCNet([5, 7, 3], 16, 4, True).to(DEVICE)
    dev.load_state_dict(cpu.state_dict())
    xs = [torch.randn(32, d, generator=torch.Generator().manual_seed(d)) for d in (5, 7, 3)]
    expected = cpu(xs)
    got = dev([x.to(DEVICE) for x in xs])
    for t, (a, b) in enumerate(zip(expected, got, strict=True)):
        torch.testing.assert_close(b.cpu(), a, rtol=1e-4, atol=1e-4, msg=f"step {t + 1}")


def test_rmlc_trains_on_the_device_and_stays_there():
    data = mosaic(400)
    model = plugin_module("methods", "rmlc").RMLC(hidden=32, epochs=3, device=DEVICE).fit(data.subset(np.arange(300)))
    assert model.device_.type == torch.device(DEVICE).type
    assert all(p.device.type == model.device_.type for p in model.model_.parameters())
    assert all(np.isfinite(h["loss"]) and np.isfinite(h["val_ranking_loss"]) for h in model.history_)
    steps = model.predict_steps(data.subset(np.arange(300, 400)))
    assert steps.shape == (len(data.feature_views), 100, data.n_labels) and np.isfinite(steps).all()


def test_der_trains_with_bf16_autocast_and_channels_last_on_the_device():
    data = mosaic(96)
    der = plugins.get("methods", "der")(backbone="small-cnn", pretrained=False, image_size=None, resize=None,
                                        batch_size=16, epochs=2, steps_per_epoch=2, num_workers=0,
                                        device=DEVICE, random_state=0)
    der.fit(data.subset(np.arange(64)))
    if der.device_.type == "cuda":  # the pipeline's CUDA defaults (bench.deep): NHWC weights
        conv = next(m for m in der.model_.modules() if isinstance(m, torch.nn.Conv2d))
        assert conv.weight.is_contiguous(memory_format=torch.channels_last)
        assert der.encoder_.channels_last
    assert [h["epoch"] for h in der.history_] == [1, 2]
    assert all(np.isfinite([h["loss"], h["cls"], h["lce"], h["rank"]]).all() for h in der.history_)
    scores = der.predict_scores(data.subset(np.arange(64, 96)))
    assert scores.shape == (32, data.n_labels) and np.isfinite(scores).all()


def test_stage_features_on_the_device_match_the_cpu():
    data = mosaic(16)
    kwargs = dict(backbone="small-cnn", image_size=56, pretrained=False, batch_size=8, num_workers=0)
    torch.manual_seed(0)  # the small CNN's random weights: the same on both devices
    on_cpu = image_features.stage_features(data, device="cpu", **kwargs)
    torch.manual_seed(0)
    on_device = image_features.stage_features(data, device=DEVICE, **kwargs)
    for name, values in on_cpu.items():
        # cuDNN convolutions may use TF32: about 1e-3 relative
        np.testing.assert_allclose(on_device[name], values, rtol=1e-2, atol=1e-3, err_msg=name)


def test_cli_runs_a_torch_method_on_the_device_and_records_it(tmp_path):
    rc = main(["--results", str(tmp_path / "results"), "run", "--method", "rmlc", "--dataset", "yeast",
               "--folds", "2", "--device", DEVICE, "--set", "epochs=2", "--set", "hidden=16",
               "--no-progress", "--no-mlflow"])
    assert rc == 0
    records = list(ResultStore(tmp_path / "results").records("yeast", "rmlc"))
    assert len(records) == 2
    for rec in records:
        assert rec["environment"]["device"].startswith(DEVICE)
        if DEVICE.startswith("cuda"):
            assert rec["environment"]["gpu"] == torch.cuda.get_device_name(0)
