"""Golden tests: a small fixed results store rendered to Markdown and LaTeX.

The golden files under ``tests/golden/`` were generated once by these renderers and checked by hand
(the marks below are also asserted cell by cell, independently of the files). To regenerate after an
intended change: ``BENCH_UPDATE_GOLDEN=1 pytest tests/test_report.py`` (every golden check then
rewrites its file and fails, so a regeneration never passes), review the diff, and run again.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import check_golden, check_latex_shape

from bench import results as results_layer
from bench.report import build_ablation_tables, build_per_class_tables, build_tables, write_reports
from bench.results import Knowledge
from bench.store import ResultStore
from bench.tables import to_latex, to_markdown

METRIC_SETS = {"toy": "all", "toy2": "all", "vocish": "voc"}
ABLATION_OF = {"rmlc_ns": "rmlc"}
KNOWLEDGE = Knowledge(METRIC_SETS, frozenset({"vocish"}), ABLATION_OF)


def results_of(records, knowledge=KNOWLEDGE):
    return results_layer.from_records(records, knowledge=knowledge)


def record(method, fold, hamming, mAP, overrides=None, undefined=None, dataset="toy", ap=None, labels=None,
           n_folds=3):
    rec = {
        "job_id": f"{dataset}-{method}-{fold}-{overrides}", "overrides": overrides or {},
        "config": {"dataset": dataset, "method": method, "protocol": "kfold", "n_folds": n_folds, "fold": fold, "seed": 0},
        "metrics": {"hamming_loss": hamming, "mAP": mAP}, "undefined": undefined or {"mAP": 0},
        "timings": {},
    }
    if ap is not None:
        rec["per_label_ap"], rec["label_names"] = ap, labels
    return rec


# br: hamming 0.10/0.20/0.30 -> mean 0.2, sample std 0.1; mAP 0.5/0.6/0.7 -> 0.6 ± 0.1
# rmlc: hamming 0.05/0.15 (two runs of three) -> 0.1 ± 0.0707; mAP 0.8/0.9 -> 0.85 ± 0.0707
# br (C=0.1): one run, hamming 0.4, mAP 0.6 (ties br's printed mAP)
RECORDS = [record("br", f, h, m) for f, h, m in [(0, 0.1, 0.5), (1, 0.2, 0.6), (2, 0.3, 0.7)]] + [
    record("rmlc", 0, 0.05, 0.8, undefined={"mAP": 1}), record("rmlc", 1, 0.15, 0.9),
    record("br", 0, 0.4, 0.6, overrides={"C": 0.1}),
]
# rmlc_ns, an ablation of rmlc: hamming 0.08/0.10/0.12 -> 0.1 ± 0.02 (ties rmlc as printed)
ABLATION = [record("rmlc_ns", f, h, m) for f, h, m in [(0, 0.08, 0.70), (1, 0.10, 0.75), (2, 0.12, 0.80)]]
LABELS = ["aeroplane", "bicycle", "bird"]
# per-class AP: "bird" has no positive in fold 1 of a (None in JSON -> NaN, left out of its mean)
PER_CLASS = [
    record("a", 0, 0.1, 0.60, dataset="vocish", ap=[0.9, 0.5, 0.4], labels=LABELS),
    record("a", 1, 0.1, 0.70, dataset="vocish", ap=[0.7, 0.7, None], labels=LABELS),
    record("b", 0, 0.1, 0.65, dataset="vocish", ap=[0.8, 0.6, 0.5], labels=LABELS),
    record("b", 1, 0.1, 0.65, dataset="vocish", ap=[0.8, 0.6, 0.5], labels=LABELS),
    record("c", 0, 0.1, 0.50, dataset="vocish", ap=[0.6, 0.4, 0.6], labels=LABELS),
    record("c", 1, 0.1, 0.50, dataset="vocish", ap=[0.6, 0.4, 0.6], labels=LABELS),
]


def test_markdown_golden():
    (table,) = build_tables(results_of(RECORDS), metrics=["hamming_loss", "mAP"])
    check_golden("toy_main.md", to_markdown(table))


def test_latex_golden_and_compile_shaped():
    (table,) = build_tables(results_of(RECORDS), metrics=["hamming_loss", "mAP"])
    tex = to_latex(table)
    check_golden("toy_main.tex", tex)
    check_latex_shape(tex)


def test_marks_follow_direction_best_bold_second_underlined():
    (table,) = build_tables(results_of(RECORDS), metrics=["hamming_loss", "mAP"])
    md = to_markdown(table)
    # hamming (lower is better): rmlc 0.100 best, br 0.200 second, br (C=0.1) 0.400 unmarked
    # mAP (higher is better): rmlc 0.850 best, br and br (C=0.1) tie at 0.600 as printed: both second
    assert "| br | <u>0.200 ± 0.100</u> | <u>0.600 ± 0.100</u> |" in md
    assert "| br (C=0.1) † (1/3 runs) | 0.400 | <u>0.600</u> |" in md
    assert "| rmlc † (2/3 runs) | **0.100 ± 0.071** | **0.850 ± 0.071** |" in md
    tex = to_latex(table)
    assert r"rmlc $^\dagger$ (2/3 runs) & \textbf{0.100} $\pm$ 0.071 & \textbf{0.850} $\pm$ 0.071 \\" in tex
    assert r"br & \underline{0.200} $\pm$ 0.100 & \underline{0.600} $\pm$ 0.100 \\" in tex


def test_ties_share_the_mark_and_two_rows_get_no_underline():
    recs = [record("a", 0, 0.3, 0.5, n_folds=1), record("b", 0, 0.1, 0.5, n_folds=1)]
    (table,) = build_tables(results_of(recs), metrics=["hamming_loss", "mAP"])
    md = to_markdown(table)
    assert "| a | 0.300 | **0.500** |" in md and "| b | **0.100** | **0.500** |" in md


def test_marks_compare_values_as_printed():
    # 0.1004 and 0.1001 both print as 0.100: a tie on the page is a tie in the marks, and after a
    # tie for the best there is no second (c ranks third); 0.2004 vs 0.2001 likewise tie for second
    recs = [record("a", 0, 0.1004, 0.5, n_folds=1), record("b", 0, 0.1001, 0.4, n_folds=1),
            record("c", 0, 0.2, 0.3, n_folds=1)]
    (table,) = build_tables(results_of(recs), metrics=["hamming_loss"])
    md = to_markdown(table)
    assert "| a | **0.100** |" in md and "| b | **0.100** |" in md and "| c | 0.200 |" in md
    recs = [record("a", 0, 0.1, 0.5, n_folds=1), record("b", 0, 0.2004, 0.4, n_folds=1),
            record("c", 0, 0.2001, 0.3, n_folds=1), record("d", 0, 0.3, 0, n_folds=1)]
    (table,) = build_tables(results_of(recs), metrics=["hamming_loss"])
    md = to_markdown(table)
    assert "| b | <u>0.200</u> |" in md and "| c | <u>0.200</u> |" in md and "| d | 0.300 |" in md


def test_transposed_markdown_puts_metrics_in_rows():
    (table,) = build_tables(results_of(RECORDS), metrics=["hamming_loss", "mAP"])
    md = to_markdown(table, transpose=True)
    assert "| Metric | br | br (C=0.1) † (1/3 runs) | rmlc † (2/3 runs) |" in md
    assert "| mAP ↑ | <u>0.600 ± 0.100</u> | <u>0.600</u> | **0.850 ± 0.071** |" in md


def test_main_table_uses_the_dataset_metric_set():
    recs = [{**r, "metrics": {"hamming_loss": 0.1, "ranking_loss": 0.2, "mAP": 0.5, "CP": 0.4}} for r in RECORDS]
    (multi,) = build_tables(results_of(recs, Knowledge({"toy": "multimodal"})))
    assert list(multi.mean.columns) == ["hamming_loss", "ranking_loss"]  # RMLC's set, as far as recorded
    (coco,) = build_tables(results_of(recs, Knowledge({"toy": "coco"})))
    assert list(coco.mean.columns) == ["mAP", "CP"]


def test_per_class_ap_table_golden_and_means():
    (table,) = build_per_class_tables(results_of(PER_CLASS))
    assert list(table.mean.columns) == ["ap:aeroplane", "ap:bicycle", "ap:bird", "mAP"]
    # readable reference: a's bird AP is its only defined fold (0.4); aeroplane (0.9 + 0.7) / 2
    assert table.mean.at["a", "ap:bird"] == pytest.approx(0.4)
    assert table.mean.at["a", "ap:aeroplane"] == pytest.approx(0.8)
    md = to_markdown(table)
    assert "| Method | aeroplane | bicycle | bird | mAP ↑ |" in md
    # bird: c 0.6 best, b 0.5 second; aeroplane, bicycle and mAP: a and b tie for best, so no second;
    # each row averages 2 of its 3 folds, and says so
    assert "| a † (2/3 runs) | **0.800** | **0.600** | 0.400 | **0.650** |" in md
    assert "| b † (2/3 runs) | **0.800** | **0.600** | <u>0.500</u> | **0.650** |" in md
    assert "| c † (2/3 runs) | 0.600 | 0.400 | **0.600** | 0.500 |" in md
    check_golden("vocish_per_class.md", md)
    tex = to_latex(table)
    check_golden("vocish_per_class.tex", tex)
    check_latex_shape(tex)


def test_per_class_tables_only_for_datasets_whose_papers_print_one():
    assert build_per_class_tables(results_of(RECORDS + PER_CLASS))[0].dataset == "vocish"
    assert build_per_class_tables(results_of(RECORDS)) == []
    assert build_per_class_tables(results_of(PER_CLASS, Knowledge(METRIC_SETS))) == []


def test_ablation_tables_group_a_method_with_its_ablations_and_variants():
    tables = build_ablation_tables(results_of(RECORDS + ABLATION))
    assert [(t.family, list(t.mean.index)) for t in tables] == [
        ("br", ["br", "br (C=0.1)"]), ("rmlc", ["rmlc", "rmlc_ns"])]
    rmlc = tables[1]
    assert rmlc.slug == "toy__kfold3__ablation_rmlc"
    md = to_markdown(rmlc)
    assert md.startswith("**Table: ablation of rmlc on toy, 3-fold iteratively stratified CV")
    check_golden("toy_ablation_rmlc.md", md)
    check_latex_shape(to_latex(rmlc))


def test_reports_are_rebuilt_from_the_store(tmp_path):
    store = ResultStore(tmp_path / "results")
    for rec in RECORDS + ABLATION + PER_CLASS:
        store.write(rec, {"scores": np.zeros(1)})
    results = results_layer.from_records(results_layer.read_records(store), knowledge=KNOWLEDGE)
    tables, written = write_reports(results, tmp_path / "reports", leaderboard=False)
    assert [p.name for p in written] == [
        "toy__kfold3.md", "toy__kfold3.tex", "vocish__kfold3.md", "vocish__kfold3.tex",
        "vocish__kfold3__per_class_ap.md", "vocish__kfold3__per_class_ap.tex",
        "toy__kfold3__ablation_br.md", "toy__kfold3__ablation_br.tex",
        "toy__kfold3__ablation_rmlc.md", "toy__kfold3__ablation_rmlc.tex"]
    assert "**0.850 ± 0.071**" in written[0].read_text()
    assert tables[0].runs.to_dict() == {"br": 3, "br (C=0.1)": 1, "rmlc": 2, "rmlc_ns": 3}
    assert [t.kind for t in tables] == ["main", "main", "per_class", "ablation", "ablation"]


def test_runs_made_with_other_defaults_are_left_out_of_tables_with_a_warning(tmp_path, caplog):
    """A default changed since a run (here br's max_iter, as after an update of bench) must not be
    averaged into the same row as runs of the current defaults."""
    store = ResultStore(tmp_path / "results")
    current = {"C": 1.0, "max_iter": 1000, "standardize": True, "random_state": 0}
    runs = [({}, current), ({}, {**current, "max_iter": 500}), ({}, {**current, "solver": "old"}),
            ({"C": 0.1}, {**current, "C": 0.1}), ({"C": 0.1}, current)]
    for fold, (overrides, params) in enumerate(runs):
        rec = record("br", fold, 0.1, 0.5, overrides=overrides)
        rec["config"]["params"] = params
        store.write(rec, {"scores": np.zeros(1)})
    with caplog.at_level("WARNING", logger="bench.results"):
        kept = results_layer.load(store).records
    assert sorted(r.config.fold for r in kept) == [0, 3]
    assert "3 of br on toy made with other hyper-parameters than the current defaults (C, max_iter, solver)" in caplog.text
    assert len([r for r in caplog.records if r.name == "bench.results"]) == 1


def test_footnote_counts_only_the_undefined_entries_of_metrics_the_table_shows():
    # mAP is undefined 1 + 2 times, macro-F1 5 times, example-F1 once: only what a column shows counts
    recs = [record("a", 0, 0.1, 0.5, undefined={"mAP": 1, "macro_f1": 5}),
            record("a", 1, 0.2, 0.6, undefined={"mAP": 2, "example_f1": 1}),
            record("b", 0, 0.3, 0.7, undefined={"macro_f1": 4})]
    (with_map,) = build_tables(results_of(recs), metrics=["hamming_loss", "mAP"])
    assert with_map.undefined == {"mAP": 3}
    for text in (to_markdown(with_map), to_latex(with_map)):
        notes = [line for line in text.splitlines() if "ndefined" in line]
        assert len(notes) == 1 and "3" in notes[0] and "5" not in notes[0] and "4" not in notes[0]
        plain = text.lower().replace("\\_", "_")  # LaTeX escapes the underscore of a key
        assert not any(name in plain for name in ("macro_f1", "macro-f1", "example_f1", "example-f1"))
    (without_map,) = build_tables(results_of(recs), metrics=["hamming_loss"])
    assert without_map.undefined == {}
    for text in (to_markdown(without_map), to_latex(without_map)):
        assert "ndefined" not in text and "mAP" not in text


def test_reports_of_several_datasets_add_the_leaderboard_in_the_formats_asked(tmp_path):
    # br beats rmlc on toy and toy2 (hamming 0.1 vs 0.3): a ranking of two rows on two datasets.
    records = [record(m, f, h, 0.5, dataset=d) for d in ("toy", "toy2") for f in range(3)
               for m, h in (("br", 0.1 + f / 100), ("rmlc", 0.3 + f / 100))]
    tables, written = write_reports(results_of(records), tmp_path, formats=("md",))
    assert [p.name for p in written] == ["toy__kfold3.md", "toy2__kfold3.md", "leaderboard.md",
                                         "leaderboard__wilcoxon.md"]
    assert all(p.parent == tmp_path and p.is_file() for p in written)
    assert [t.kind for t in tables] == ["main", "main", "leaderboard"]  # the datasets' tables, then its
    assert [p.name for p in write_reports(results_of(records), tmp_path / "no", formats=("md",),
                                          leaderboard=False)[1]] == ["toy__kfold3.md", "toy2__kfold3.md"]
    one_dataset = [r for r in records if r["config"]["dataset"] == "toy"]
    assert [p.name for p in write_reports(results_of(one_dataset), tmp_path / "one", formats=("md",))[1]] == [
        "toy__kfold3.md"]


def test_ablation_rows_list_variants_before_readouts():
    main = [record("rmlc", f, 0.1, 0.5) for f in range(2)]
    variant = [record("rmlc", f, 0.2, 0.5, overrides={"alpha": 2.0}) for f in range(2)]
    for rec in main:
        rec["readouts"] = {"first": {"metrics": {"hamming_loss": 0.3, "mAP": 0.4}, "per_label_ap": None,
                                     "undefined": {}}}
    (table,) = build_ablation_tables(results_of(main + variant))
    assert list(table.mean.index) == ["rmlc", "rmlc (alpha=2.0)", "rmlc:first"]


def test_an_ablation_table_says_what_it_is_and_shows_the_datasets_metric_columns():
    # "a" (one row, no table) sorts before "rmlc": a family too small for a table skips only itself.
    records = [record(m, f, 0.1 * f, 0.5, dataset="vocish") for m in ("a", "rmlc", "rmlc_ns") for f in range(2)]
    results = results_of(records)
    (table,) = build_ablation_tables(results)
    assert (table.kind, table.dataset, table.protocol, table.n_folds, table.family) == (
        "ablation", "vocish", "kfold", 3, "rmlc")
    assert table.slug == "vocish__kfold3__ablation_rmlc"
    assert list(table.mean.index) == ["rmlc", "rmlc_ns"]
    assert list(table.mean.columns) == list(build_tables(results)[0].mean.columns) == ["mAP"]  # voc: mAP only


def test_main_and_per_class_tables_say_what_they_are():
    # "avoc" (a per-class dataset without per-class AP stored) and "toy" (no per-class table) come
    # before "vocish": each skips only itself.
    per_class = [dict(r) for r in PER_CLASS]
    per_class[0] = {**per_class[0], "undefined": {"mAP": 1}}
    records = RECORDS + [record("a", 0, 0.1, 0.5, dataset="avoc")] + per_class
    knowledge = Knowledge({**METRIC_SETS, "avoc": "voc"}, frozenset({"vocish", "avoc"}), ABLATION_OF)
    results = results_of(records, knowledge)
    assert [(t.kind, t.dataset, t.protocol, t.n_folds) for t in build_tables(results)] == [
        ("main", "avoc", "kfold", 3), ("main", "toy", "kfold", 3), ("main", "vocish", "kfold", 3)]
    (table,) = build_per_class_tables(results)
    assert (table.kind, table.dataset, table.protocol, table.n_folds, table.show_std) == (
        "per_class", "vocish", "kfold", 3, False)
    assert dict(table.undefined) == {"mAP": 1}


def test_rows_run_with_scale_settings_are_named_in_one_note_per_setting():
    scaled = [record(m, f, 0.1, 0.5) for m in ("br", "rmlc") for f in range(2)]
    for rec in scaled:
        rec["config"]["scale_defaults"] = {"epochs": 10, "backbone": "small-cnn"}
    (table,) = build_tables(results_of(scaled))
    assert table.notes == ("Run with the dataset's scale settings (backbone=small-cnn, epochs=10), not the "
                           "papers' defaults: br, rmlc (`bench run --paper-defaults` for the papers' own).",)


def test_a_row_missing_a_fold_says_so_also_when_every_row_misses_one(tmp_path, capsys):
    """After a re-run failed, a 4-fold table may average 3 folds of every row: no row is more
    complete than the others, yet each says 3 of its 4 runs."""
    from bench.cli import main

    argv = ["run", "--method", "br", "--dataset", "tiny", "--folds", "4", "--no-progress"]
    assert main(argv) == 0
    records = sorted((tmp_path / "results" / "tiny" / "br").glob("*.json"))
    assert len(records) == 4
    records[0].unlink()
    capsys.readouterr()
    assert main(["report", "--format", "md", "--no-leaderboard"]) == 0
    out = capsys.readouterr().out
    assert "| br † (3/4 runs) |" in out
    assert main(argv) == 0  # the missing fold runs again: the row is complete, no dagger
    capsys.readouterr()
    assert main(["report", "--format", "md", "--no-leaderboard"]) == 0
    out = capsys.readouterr().out
    assert "| br |" in out and "†" not in out
