"""Figures from a hand-made results store: the plotted lines and bands equal hand-computed means
and sample stds over runs; sweeps are found only across rows differing in one numeric
hyper-parameter; files are real PNG/PDF."""

from __future__ import annotations

import math

import numpy as np
import pytest

from bench import plots
from bench.store import ResultStore


def record(job_id, *, method="m", seed=0, fold=0, metrics=None, history=None, step_metrics=None,
           params=None, overrides=None, dataset="tiny"):
    rec = {
        "job_id": job_id,
        "config": {"method": method, "dataset": dataset, "params": params or {"alpha": 0.5},
                   "protocol": "kfold", "n_folds": 3, "fold": fold, "seed": seed, "split_hash": f"h{job_id}",
                   "data_fingerprint": "f"},
        "overrides": overrides or {},
        "metrics": metrics or {"mAP": 0.5, "hamming_loss": 0.2},
        "timings": {"fit_s": 0.1, "predict_s": 0.1},
        "history": history or [],
    }
    if step_metrics is not None:
        rec["step_metrics"] = step_metrics
    return rec


def stored(tmp_path, records):
    store = ResultStore(tmp_path / "results")
    for rec in records:
        store.write(rec, {"scores": np.zeros((2, 2), dtype=np.float32)})
    return store


def band_range(ax):
    """(lowest, highest) y of the ± std band drawn on ``ax``."""
    ys = np.concatenate([p.vertices[:, 1] for p in ax.collections[0].get_paths()])
    return ys.min(), ys.max()


def test_convergence_mean_over_runs_per_epoch_with_std_band(tmp_path):
    a = [{"epoch": e, "loss": v, "val_mAP": 0.1 * e} for e, v in enumerate([3.0, 2.0, 1.0])]
    b = [{"epoch": e, "loss": v, "val_mAP": 0.1 * e} for e, v in enumerate([5.0, 4.0])]  # stopped early
    store = stored(tmp_path, [record("a", fold=0, history=a), record("b", fold=1, history=b),
                              record("c", method="nohistory")])
    [plot] = plots.convergence_plots(list(store.records()))
    assert plot.name == "tiny__kfold3__convergence" and plot.rows == {"m"}
    loss_ax, val_ax = [ax for ax in plot.figure.axes if ax.get_visible()]
    assert (loss_ax.get_title(), val_ax.get_title()) == ("loss", "mAP (validation)")
    line = loss_ax.lines[0]
    assert list(line.get_xdata()) == [0, 1, 2]
    assert list(line.get_ydata()) == pytest.approx([4.0, 3.0, 1.0])
    # epoch 0: 4 ± std([3, 5], ddof=1) = 4 ± √2; epoch 2 has one run: no spread
    assert band_range(loss_ax) == pytest.approx((1.0, 4.0 + math.sqrt(2)))
    assert [t.get_text() for t in loss_ax.get_legend().get_texts()] == ["m"]
    plots.close([plot])


def test_convergence_shows_every_recorded_curve_of_an_rmlc_history(tmp_path):
    """RMLC records 3 loss terms and 8 validation curves; the stopping criterion
    (val_ranking_loss) sorts late and must not be cut off."""
    keys = ["loss", "bce", "reg", "val_map", "val_bce", "val_hamming_loss", "val_ranking_loss",
            "val_subset_accuracy", "val_macro_f1", "val_example_f1", "val_micro_f1"]
    history = [{"epoch": e, **{k: 0.1 * e for k in keys}} for e in (1, 2)]
    [plot] = plots.convergence_plots(list(stored(tmp_path, [record("a", history=history)]).records()))
    titles = [ax.get_title() for ax in plot.figure.axes if ax.get_visible()]
    assert len(titles) == 11 and "ranking_loss (validation)" in titles and titles[0] == "loss"
    plots.close([plot])


def test_no_history_no_convergence_figure(tmp_path):
    store = stored(tmp_path, [record("a"), record("b", fold=1)])
    assert plots.convergence_plots(list(store.records())) == []
    assert plots.modality_plots(list(store.records())) == []


def test_modalities_mean_per_number_of_modalities(tmp_path):
    store = stored(tmp_path, [
        record("a", step_metrics=[{"mAP": 0.5, "hamming_loss": 0.3, "odd": 1.0}, {"mAP": 0.7, "hamming_loss": 0.2}]),
        record("b", fold=1, step_metrics=[{"mAP": 0.6, "hamming_loss": 0.5}, {"mAP": 0.9, "hamming_loss": 0.1}]),
    ])
    [plot] = plots.modality_plots(list(store.records()))
    axes = [ax for ax in plot.figure.axes if ax.get_visible()]
    # the dataset family's order (tiny shows every metric: the default panels), unknown keys left out
    assert [ax.get_title() for ax in axes] == ["Hamming loss ↓", "mAP ↑"]
    assert list(axes[1].lines[0].get_xdata()) == [1, 2]
    assert list(axes[1].lines[0].get_ydata()) == pytest.approx([0.55, 0.8])
    assert list(axes[0].lines[0].get_ydata()) == pytest.approx([0.4, 0.15])
    plots.close([plot])


def sweep_records():
    def params(alpha, beta=0.05, flag=True):
        return {"alpha": alpha, "beta": beta, "flag": flag, "random_state": 0}

    out = []
    for i, (alpha, beta, flag, maps) in enumerate([
        (0.5, 0.05, True, (0.70, 0.74)),   # the defaults
        (0.1, 0.05, True, (0.60, 0.62)),
        (0.9, 0.05, True, (0.50,)),
        (0.1, 0.5, True, (0.40,)),         # differs from the defaults in alpha and beta
        (0.5, 0.05, False, (0.10,)),       # a boolean switch is an ablation, not a sweep
    ]):
        overrides = {k: v for k, v in (("alpha", alpha), ("beta", beta), ("flag", flag))
                     if v != params(0.5)[k]}
        for fold, value in enumerate(maps):
            out.append(record(f"r{i}f{fold}", fold=fold, params={**params(alpha, beta, flag), "random_state": fold},
                              overrides=overrides, metrics={"mAP": value, "hamming_loss": 0.1}))
    return out


def test_sweeps_pair_rows_that_differ_in_one_numeric_hyper_parameter(tmp_path):
    found = plots.sweeps(sweep_records())
    assert set(found) == {("m", "alpha"), ("m", "beta")}
    assert sorted({r["config"]["params"]["alpha"] for r in found["m", "alpha"]}) == [0.1, 0.5, 0.9]
    assert {r["config"]["params"]["beta"] for r in found["m", "alpha"]} == {0.05}
    assert sorted({r["config"]["params"]["beta"] for r in found["m", "beta"]}) == [0.05, 0.5]
    assert {r["config"]["params"]["alpha"] for r in found["m", "beta"]} == {0.1}


def test_sensitivity_curve_is_the_mean_metric_per_value(tmp_path):
    store = stored(tmp_path, sweep_records())
    by_name = {p.name: p for p in plots.sensitivity_plots(list(store.records()))}
    assert set(by_name) == {"tiny__kfold3__sensitivity_m_alpha", "tiny__kfold3__sensitivity_m_beta"}
    plot = by_name["tiny__kfold3__sensitivity_m_alpha"]
    assert plot.rows == {"m", "m (alpha=0.1)", "m (alpha=0.9)"}
    ax = next(ax for ax in plot.figure.axes if ax.get_title() == "mAP ↑")
    assert list(ax.lines[0].get_xdata()) == [0.1, 0.5, 0.9]
    assert list(ax.lines[0].get_ydata()) == pytest.approx([0.61, 0.72, 0.50])
    assert ax.get_xlabel() == "alpha"
    plots.close(list(by_name.values()))


def test_make_plots_filters_and_save_writes_real_png_and_pdf(tmp_path):
    history = [{"epoch": 0, "loss": 1.0}, {"epoch": 1, "loss": 0.5}]
    store = stored(tmp_path, [record("a", history=history), record("b", dataset="gone", history=history)])
    figures = plots.make_plots(store, datasets=["gone"])
    assert [p.name for p in figures] == ["gone__kfold3__convergence"]  # an unknown dataset still plots
    assert plots.make_plots(store, methods=["other"]) == []
    written = plots.save(figures, tmp_path / "figures")
    assert [p.name for p in written] == ["gone__kfold3__convergence.png", "gone__kfold3__convergence.pdf"]
    assert figures[0].paths == written
    assert written[0].read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert written[1].read_bytes().startswith(b"%PDF-")
    assert not list((tmp_path / "figures").glob(".*.tmp"))
    plots.close(figures)
