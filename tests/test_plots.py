"""Figures from a hand-made results store: the plotted lines and bands equal hand-computed means
and sample stds over runs; sweeps are found only across rows differing in one numeric
hyper-parameter; files are real PNG/PDF; and what a reader relies on holds: one colour per row in
every panel and figure, a legend naming what each figure and panel draws, a log axis where curves
span more than 10x, loss terms per method family, no curve dropped, timing and learning rate apart."""

from __future__ import annotations

import math

import numpy as np
import pytest
from matplotlib.colors import to_hex

from bench import plots
from bench import results as results_layer
from bench.results import Knowledge
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


def figures(store, knowledge=None, **kw):
    results = results_layer.load(store, **kw) if knowledge is None else \
        results_layer.from_records(results_layer.read_records(store, **kw), knowledge=knowledge)
    return plots.make_plots(results)


def visible(plot):
    return [ax for ax in plot.figure.axes if ax.get_visible()]


def band_range(ax):
    """(lowest, highest) y of the ± std band drawn on ``ax``."""
    ys = np.concatenate([p.vertices[:, 1] for p in ax.collections[0].get_paths()])
    return ys.min(), ys.max()


def line_colours(ax) -> dict[str, str]:
    return {line.get_label(): to_hex(line.get_color()) for line in ax.lines}


def test_convergence_mean_over_runs_per_epoch_with_std_band(tmp_path):
    a = [{"epoch": e, "loss": v, "val_mAP": 0.1 * e} for e, v in enumerate([3.0, 2.0, 1.0])]
    b = [{"epoch": e, "loss": v, "val_mAP": 0.1 * e} for e, v in enumerate([5.0, 4.0])]  # stopped early
    store = stored(tmp_path, [record("a", fold=0, history=a), record("b", fold=1, history=b),
                              record("c", method="nohistory")])
    [plot] = [p for p in figures(store) if "convergence" in p.name]
    assert plot.name == "tiny__kfold3__convergence_m" and plot.rows == {"m"}
    loss_ax, val_ax = visible(plot)
    assert (loss_ax.get_title(), val_ax.get_title()) == ("loss", "mAP (validation)")
    line = loss_ax.lines[0]
    assert list(line.get_xdata()) == [0, 1, 2]
    assert list(line.get_ydata()) == pytest.approx([4.0, 3.0, 1.0])
    # epoch 0: 4 ± std([3, 5], ddof=1) = 4 ± √2; epoch 2 has one run: no spread
    assert band_range(loss_ax) == pytest.approx((1.0, 4.0 + math.sqrt(2)))
    assert [t.get_text() for t in plot.figure.legends[0].get_texts()] == ["m"]  # the figure's rows
    assert loss_ax.get_legend() is None  # every panel draws every row: the figure legend says it
    plots.close([plot])


def test_convergence_shows_every_recorded_curve_of_an_rmlc_history(tmp_path):
    """RMLC records 3 loss terms and 8 validation curves; the stopping criterion
    (val_ranking_loss) sorts late and must not be cut off."""
    keys = ["loss", "bce", "reg", "val_map", "val_bce", "val_hamming_loss", "val_ranking_loss",
            "val_subset_accuracy", "val_macro_f1", "val_example_f1", "val_micro_f1"]
    history = [{"epoch": e, **{k: 0.1 * e for k in keys}} for e in (1, 2)]
    [plot] = figures(stored(tmp_path, [record("a", history=history)]))
    titles = [ax.get_title() for ax in visible(plot)]
    assert len(titles) == 11 and "ranking_loss (validation)" in titles and titles[0] == "loss"
    plots.close([plot])


def test_no_curve_is_dropped_more_curves_give_more_figures(tmp_path):
    keys = [f"term{i:02d}" for i in range(15)] + ["val_ranking_loss"]
    history = [{"epoch": e, **{k: 1.0 + e for k in keys}} for e in (1, 2)]
    made = figures(stored(tmp_path, [record("a", history=history)]))
    assert [p.name for p in made] == ["tiny__kfold3__convergence_m", "tiny__kfold3__convergence_m_2"]
    titles = [ax.get_title() for p in made for ax in visible(p)]
    assert sorted(titles) == sorted(k.removeprefix("val_") + (" (validation)" if k.startswith("val_") else "")
                                    for k in keys)
    plots.close(made)


def test_timing_and_learning_rate_are_not_convergence_curves(tmp_path):
    history = [{"epoch": e, "loss": 1.0 / e, "lr": 0.1, "time_s": 3.0 + e} for e in (1, 2, 3)]
    made = {p.name: p for p in figures(stored(tmp_path, [record("a", history=history)]))}
    assert set(made) == {"tiny__kfold3__convergence_m", "tiny__kfold3__schedule_m"}
    assert [ax.get_title() for ax in visible(made["tiny__kfold3__convergence_m"])] == ["loss"]
    assert sorted(ax.get_title() for ax in visible(made["tiny__kfold3__schedule_m"])) == ["lr", "time_s"]
    plots.close(list(made.values()))


def test_loss_terms_are_grouped_per_method_family_each_on_its_scale(tmp_path):
    """RMLC's loss (~600) and DER's (~2) used to share one linear axis."""
    rmlc = [{"epoch": e, "loss": 600.0 / e} for e in (1, 2, 3)]
    rmlc_ns = [{"epoch": e, "loss": 590.0 / e} for e in (1, 2, 3)]
    der = [{"epoch": e, "loss": 2.0 - 0.1 * e, "val_mAP": 0.5} for e in (1, 2, 3)]
    # (plug-in names of their own: the real rmlc and der would find these parameters stale)
    store = stored(tmp_path, [record("r", method="rnn", history=rmlc), record("n", method="rnn_ns", history=rmlc_ns),
                              record("d", method="cnn", history=der)])
    knowledge = Knowledge(ablation_of={"rnn_ns": "rnn"})
    made = {p.name: p for p in figures(store, knowledge)}
    assert set(made) == {"tiny__kfold3__convergence_rnn", "tiny__kfold3__convergence_cnn"}
    assert made["tiny__kfold3__convergence_rnn"].rows == {"rnn", "rnn_ns"}
    [der_loss, _] = visible(made["tiny__kfold3__convergence_cnn"])
    assert der_loss.get_yscale() == "linear"  # 1.7 .. 1.9
    plots.close(list(made.values()))


def test_a_panel_whose_curves_span_more_than_10x_is_drawn_on_a_log_axis(tmp_path):
    history = [{"epoch": e, "loss": 500.0 / e**3} for e in (1, 2, 3, 4)]  # 500 .. 7.8
    [plot] = figures(stored(tmp_path, [record("a", history=history)]))
    assert visible(plot)[0].get_yscale() == "log"
    plots.close([plot])


def test_one_colour_per_row_in_every_panel_and_figure_and_each_panel_names_its_rows(tmp_path):
    """Colours used to be assigned per panel: orange was one row in the legend and another one
    in the next panel."""
    steps = [{"mAP": 0.5, "hamming_loss": 0.3}, {"mAP": 0.7, "hamming_loss": 0.2}]
    records = [record("a", method="alpha", history=[{"epoch": 1, "loss": 2.0, "val_mAP": 0.4}], step_metrics=steps),
               record("b", method="beta", history=[{"epoch": 1, "val_mAP": 0.5}], step_metrics=steps),
               record("c", method="gamma", history=[{"epoch": 1, "loss": 3.0, "val_mAP": 0.6}], step_metrics=steps)]
    made = figures(stored(tmp_path, records), Knowledge(ablation_of={"beta": "alpha", "gamma": "alpha"}))
    colours: dict[str, set[str]] = {}
    for plot in made:
        for ax in visible(plot):
            for label, colour in line_colours(ax).items():
                colours.setdefault(label, set()).add(colour)
    assert set(colours) == {"alpha", "beta", "gamma"}
    assert all(len(c) == 1 for c in colours.values())  # one colour per row everywhere
    assert len({next(iter(c)) for c in colours.values()}) == 3  # and different rows, different colours
    [convergence] = [p for p in made if "convergence" in p.name]
    loss_ax, val_ax = visible(convergence)
    # beta has no loss curve: the loss panel names the two rows it draws, the figure all three
    assert sorted(t.get_text() for t in loss_ax.get_legend().get_texts()) == ["alpha", "gamma"]
    assert val_ax.get_legend() is None
    assert sorted(t.get_text() for t in convergence.figure.legends[0].get_texts()) == ["alpha", "beta", "gamma"]
    plots.close(made)


def test_no_history_no_convergence_figure(tmp_path):
    store = stored(tmp_path, [record("a"), record("b", fold=1)])
    assert figures(store) == []


def test_modalities_mean_per_number_of_modalities(tmp_path):
    store = stored(tmp_path, [
        record("a", step_metrics=[{"mAP": 0.5, "hamming_loss": 0.3, "odd": 1.0}, {"mAP": 0.7, "hamming_loss": 0.2}]),
        record("b", fold=1, step_metrics=[{"mAP": 0.6, "hamming_loss": 0.5}, {"mAP": 0.9, "hamming_loss": 0.1}]),
    ])
    [plot] = plots.modality_plots(results_layer.load(store))
    axes = visible(plot)
    # the dataset family's order (tiny shows every metric: the default panels), unknown keys left out
    assert [ax.get_title() for ax in axes] == ["Hamming loss ↓", "mAP ↑"]
    assert list(axes[1].lines[0].get_xdata()) == [1, 2]
    assert list(axes[1].lines[0].get_ydata()) == pytest.approx([0.55, 0.8])
    assert list(axes[0].lines[0].get_ydata()) == pytest.approx([0.4, 0.15])
    plots.close([plot])


def test_no_modalities_figure_for_one_modality(tmp_path):
    """One view (yeast): a figure of one point per panel says nothing; it is not drawn."""
    store = stored(tmp_path, [record("a", step_metrics=[{"mAP": 0.5}]), record("b", fold=1, step_metrics=[{"mAP": 0.6}])])
    assert plots.modality_plots(results_layer.load(store)) == []


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
    found = plots.sweeps(results_layer.from_records(sweep_records()).rows)
    assert set(found) == {("m", "alpha"), ("m", "beta")}
    assert sorted(r.params["alpha"] for r in found["m", "alpha"]) == [0.1, 0.5, 0.9]
    assert {r.params["beta"] for r in found["m", "alpha"]} == {0.05}
    assert sorted(r.params["beta"] for r in found["m", "beta"]) == [0.05, 0.5]
    assert {r.params["alpha"] for r in found["m", "beta"]} == {0.1}


def test_sensitivity_curve_is_the_mean_metric_per_value(tmp_path):
    store = stored(tmp_path, sweep_records())
    by_name = {p.name: p for p in plots.sensitivity_plots(results_layer.load(store))}
    assert set(by_name) == {"tiny__kfold3__sensitivity_m_alpha", "tiny__kfold3__sensitivity_m_beta"}
    plot = by_name["tiny__kfold3__sensitivity_m_alpha"]
    assert plot.rows == {"m", "m (alpha=0.1)", "m (alpha=0.9)"}
    ax = next(ax for ax in plot.figure.axes if ax.get_title() == "mAP ↑")
    assert list(ax.lines[0].get_xdata()) == [0.1, 0.5, 0.9]
    assert list(ax.lines[0].get_ydata()) == pytest.approx([0.61, 0.72, 0.50])
    assert ax.get_xlabel() == "alpha"
    # the curve is named after, and coloured like, the row run at alpha's default (not --set)
    colours = results_layer.load(store).colours
    assert [t.get_text() for t in plot.figure.legends[0].get_texts()] == ["m, alpha varied"]
    assert to_hex(ax.lines[0].get_color()) == colours["m"] != colours["m (alpha=0.1)"]
    beta = by_name["tiny__kfold3__sensitivity_m_beta"]  # rows m (alpha=0.1) and m (alpha=0.1, beta=0.5)
    assert [t.get_text() for t in beta.figure.legends[0].get_texts()] == ["m (alpha=0.1), beta varied"]
    plots.close(list(by_name.values()))


def test_make_plots_filters_and_save_writes_real_png_and_pdf(tmp_path):
    history = [{"epoch": 0, "loss": 1.0}, {"epoch": 1, "loss": 0.5}]
    store = stored(tmp_path, [record("a", history=history), record("b", dataset="gone", history=history)])
    made = figures(store, datasets=["gone"])
    assert [p.name for p in made] == ["gone__kfold3__convergence_m"]  # an unknown dataset still plots
    assert figures(store, methods=["other"]) == []
    written = plots.save(made, tmp_path / "figures")
    assert [p.name for p in written] == ["gone__kfold3__convergence_m.png", "gone__kfold3__convergence_m.pdf"]
    assert made[0].paths == written
    assert written[0].read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert written[1].read_bytes().startswith(b"%PDF-")
    assert not list((tmp_path / "figures").glob(".*.tmp"))
    plots.close(made)


def test_runs_side_by_side_one_dot_per_run_and_the_mean_as_a_bar(tmp_path):
    runs = {"m": [0.5, 0.7, 0.9], "n": [0.2, 0.4, 0.3]}
    recs = [record(f"{m}{f}", method=m, fold=f, metrics={"mAP": v, "hamming_loss": 0.1})
            for m, values in runs.items() for f, v in enumerate(values)]
    (plot,) = [p for p in figures(stored(tmp_path, recs)) if p.name.startswith("runs_")]
    assert plot.name == "runs_tiny__kfold3_mAP" and plot.rows == {"m", "n"}
    from matplotlib.collections import LineCollection, PathCollection

    ax = plot.figure.axes[0]
    dots = [sorted(c.get_offsets()[:, 1].round(6).tolist()) for c in ax.collections if isinstance(c, PathCollection)]
    assert dots == [sorted(runs["m"]), sorted(runs["n"])]  # one dot per run, per row, in the table's order
    bars = [round(float(c.get_segments()[0][0][1]), 6) for c in ax.collections if isinstance(c, LineCollection)]
    assert bars == [0.7, 0.3]  # each row's mean
    assert len([line for line in ax.lines if line.get_color() == "0.8"]) == 3  # one grey line per fold
