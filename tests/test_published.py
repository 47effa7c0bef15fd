"""The transcribed published numbers: file format, and cross-checks between the papers' tables.

The cross-checks compare numbers that two tables (of one paper, or of two papers) print for the same
method, so a transcription slip in either file shows up as a mismatch.
"""

from __future__ import annotations

import inspect
import re

import numpy as np
import pandas as pd
import pytest

from bench.errors import BenchError
from bench.metrics import METRICS
from bench.published import (
    COLUMNS,
    VOC_CLASSES,
    comparison_frame,
    default_folder,
    load_definitions,
    load_published,
    paper_comparison,
    read_csv,
)
from bench.tables import Table

EXPECTED_FILES = {
    "rmlc_table3.csv", "rmlc_table4.csv", "der_table1.csv", "der_table2.csv", "der_table3.csv",
    "der_table4.csv", "der_table5.csv", "der_table6.csv", "retdm_table1.csv", "retdm_table2.csv",
    "retdm_table3.csv", "retdm_table4.csv", "order_free_rnn_table1.csv", "order_free_rnn_table2.csv",
    "cmsg_table2.csv", "cmsg_text.csv",
}
HARNESS_DATASETS = {"mnist-mosaic", "yeast", "voc2007", "voc2012", "coco2014", "nus-wide", "mirflickr", "scene",
                    "ml2000", "msrc", "taobao", "fcvid", "msra"}


@pytest.fixture(scope="module")
def published():
    return load_published()


def value(frame, paper, table, dataset, method, metric):
    hit = frame[(frame.paper == paper) & (frame.table == table) & (frame.dataset == dataset)
                & (frame.method == method) & (frame.metric == metric)]
    assert len(hit) == 1, (paper, table, dataset, method, metric)
    return hit.iloc[0]


def test_every_file_is_valid_and_present(published):
    assert {p.name for p in default_folder().glob("*.csv")} == EXPECTED_FILES
    assert tuple(published.columns) == COLUMNS
    assert set(published.dataset) <= HARNESS_DATASETS
    known = set(METRICS) | {f"ap:{c}" for c in VOC_CLASSES}
    assert set(published.metric) <= known
    assert not published.duplicated(["paper", "table", "dataset", "method", "metric"]).any()
    fractions = published[published.metric != "coverage"]
    assert fractions.value.between(0, 1).all()


def test_table_sizes(published):
    count = published.groupby(["paper", "table"]).size()
    assert count["RMLC", "III"] == 5 * 6 * 6 and count["RMLC", "IV"] == 5 * 2 * 6
    assert count["RETDM", "IV"] == 2 * 11
    assert count["Order-Free RNN", "1"] == 9 * 6 and count["Order-Free RNN", "2"] == 8 * 6
    # DER Table II: 16 rows x 21 columns, minus the 47 damaged cells listed in the README
    assert count["DER", "II"] == 16 * 21 - 47


def test_rmlc_full_method_is_the_same_in_tables_iii_and_iv(published):
    rmlc = published[(published.paper == "RMLC") & (published.method == "RMLC")]
    three = rmlc[rmlc.table == "III"].set_index(["dataset", "metric"])[["value", "std"]].sort_index()
    four = rmlc[rmlc.table == "IV"].set_index(["dataset", "metric"])[["value", "std"]].sort_index()
    pd.testing.assert_frame_equal(three, four)
    assert value(published, "RMLC", "III", "msra", "CAMEL(C)", "hamming_loss")[["value", "std"]].tolist() == [0.045, 0.001]


def test_der_full_method_agrees_across_tables(published):
    for dataset, main_table in [("coco2014", "I"), ("voc2007", "II"), ("nus-wide", "III")]:
        full = value(published, "DER", main_table, dataset, "Our DER", "mAP").value
        assert value(published, "DER", "IV", dataset, "Baseline + Disentangle + Embed + Rank", "mAP").value == full
        assert value(published, "DER", "V", dataset, "Joint confidence (ŷ)", "mAP").value == full
        assert value(published, "DER", "VI", dataset, "Our DER", "mAP").value == full
        base = value(published, "DER", main_table, dataset, "ResNet-101 (Baseline)", "mAP").value
        assert value(published, "DER", "IV", dataset, "ResNet-101 (Baseline)", "mAP").value == base


def test_retdm_and_order_free_rnn_agree_with_other_tables(published):
    for metric in ["CP", "OF1", "coverage", "average_precision"]:
        assert (value(published, "RETDM", "III", "coco2014", "RETDM", metric).value
                == value(published, "RETDM", "IV", "coco2014", "RETDM", metric).value)
    # DER lists Order-Free RNN's own numbers (and the KNN baseline's) under its top-3 columns
    for metric in ["CP", "CR", "CF1", "OP", "OR", "OF1"]:
        assert (value(published, "Order-Free RNN", "2", "coco2014", "Ours", metric).value
                == value(published, "DER", "I", "coco2014", "Order-Free RNN", f"{metric}_top3").value)
        assert (value(published, "Order-Free RNN", "1", "nus-wide", "Ours", metric).value
                == value(published, "DER", "III", "nus-wide", "Order-Free RNN", f"{metric}_top3").value)
        assert (value(published, "Order-Free RNN", "1", "nus-wide", "KNN", metric).value
                == value(published, "DER", "III", "nus-wide", "KNN", f"{metric}_top3").value)


def test_cmsg_and_der_print_the_same_hcp_row(published):
    der = published[(published.table == "II") & (published.method == "HCP")].set_index("metric").value
    cmsg = published[(published.paper == "CMSG") & (published.method == "HCP")].set_index("metric").value
    shared = der.index.intersection(cmsg.index)
    assert len(shared) == 19 and (der[shared] == cmsg[shared]).all()


def write(tmp_path, text):
    path = tmp_path / "x.csv"
    path.write_text("paper,table,dataset,method,metric,value,std\n" + text)
    return path


@pytest.mark.parametrize("line, message", [
    ("P,1,d,m,mAP,84.0,\n", "outside [0, 1.0] (percent not divided by 100?)"),
    ("P,1,d,m,accuracy,0.5,\n", "unknown metric 'accuracy'"),
    ("P,1,d,m,ap:plane,0.5,\n", "names no VOC class"),
    ("P,1,d,m,mAP,abc,\n", "field 'value' must be a number"),
    ("P,1,d,m,mAP,0.5,\nP,1,d,m,mAP,0.6,\n", "duplicate published entry P, 1, d, m, mAP"),
    ("P,1,,m,mAP,0.5,\n", "must not be empty"),
])
def test_bad_files_give_one_clear_line(tmp_path, line, message):
    with pytest.raises(BenchError, match=re.escape(message)) as err:
        read_csv(write(tmp_path, line))
    assert "x.csv" in str(err.value) and "\n" not in str(err.value)


def test_wrong_columns_and_empty_folder(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("paper,dataset,value\nP,d,0.5\n")
    with pytest.raises(BenchError, match="columns must be paper,table,dataset,method,metric,value,std"):
        read_csv(bad)
    with pytest.raises(BenchError, match="no published-results CSV"):
        load_published(tmp_path / "empty")


def table_of(dataset, rows: dict[str, dict[str, float]]):
    mean = pd.DataFrame(rows).T
    return Table(f"{dataset}__kfold10", dataset, mean, mean * 0 + 0.01, pd.Series(10, index=mean.index),
                 dataset=dataset, protocol="kfold", n_folds=10)


def test_paper_comparison_marks_published_rows_and_differences(published):
    table = table_of("ml2000", {"rmlc": {"hamming_loss": 0.090, "micro_f1": 0.800},
                                "br": {"hamming_loss": 0.100, "micro_f1": 0.700}})
    frame = comparison_frame(table, published)
    rmlc_pub = frame[(frame.row == "RMLC") & (frame.metric == "hamming_loss")].iloc[0]
    assert rmlc_pub.source in {"published (RMLC Tab. III)", "published (RMLC Tab. IV)"}
    assert rmlc_pub.against == "rmlc" and rmlc_pub.delta == pytest.approx(0.090 - 0.080)
    camel = frame[(frame.row == "CAMEL(B)")].iloc[0]
    assert camel.against == "" and np.isnan(camel.delta)  # two rows of ours and no reference named
    with_ref = comparison_frame(table, published, reference="br")
    camel = with_ref[(with_ref.row == "CAMEL(B)") & (with_ref.metric == "micro_f1")].iloc[0]
    assert camel.against == "br" and camel.delta == pytest.approx(0.700 - 0.806)
    md = paper_comparison(table, published, reference="br")
    assert "| measured | rmlc | 0.090 ± 0.010 | 0.800 ± 0.010 |  |" in md
    assert "| published (RMLC Tab. III) | CAMEL(B) | 0.089 ± 0.011 (Δ +0.011) | 0.806 ± 0.024 (Δ -0.106) | br |" in md
    with pytest.raises(BenchError, match="'nope' is not a row of the ml2000 table"):
        comparison_frame(table, published, reference="nope")


def test_paper_comparison_without_published_numbers(published):
    assert "no published numbers" in paper_comparison(table_of("yeast", {"br": {"hamming_loss": 0.2}}), published)


def test_harness_method_mapping():
    harness_method = load_definitions().label
    assert harness_method("DER", "Our DER") == "der" and harness_method("DER", "Baseline + Disentangle") == "der_disentangle"
    assert harness_method("RMLC", "RMLC_NS") == "rmlc_ns" and harness_method("CMSG", "ResNet101") is None
    # a readout, a row run under other settings, the ablations' current names
    assert harness_method("DER", "First confidence (ŷ_fcls)") == "der:first_stream"
    assert harness_method("DER", "VGG-DER") == "der (backbone=vgg16)"
    assert harness_method("Order-Free RNN", "Ours (w/o atten)") == "order_free_rnn_no_attention"
    assert harness_method("RETDM", "BCE") == "retdm_bce"


def test_every_row_target_is_a_method_with_that_readout():
    """tables.toml names methods that exist and readouts they give (DER's streams)."""
    from bench import plugins

    methods = plugins.load("methods")
    for paper, rows in load_definitions().targets.items():
        for name, target in rows.items():
            assert target.method in methods, (paper, name, target)
            if target.readout:  # a key of the dict its predict_readouts returns
                source = inspect.getsource(plugins.get("methods", target.method).predict_readouts)
                assert f'"{target.readout}"' in source, (paper, name, target)


@pytest.mark.parametrize("text, fragment", [
    ('tolerance = 2\n', "tolerance must be a number in [0, 1)"),
    ('[methods.DER]\n"Our DER" = 3\n', "[methods.DER] 'Our DER' must be"),
    ('[methods.DER]\n"Our DER" = { method = "der", seed = 1 }\n', "[methods.DER] 'Our DER' must be"),
    ('extra = 1\n', "unknown key(s) extra"),
    ('[methods\n', "cannot read as TOML"),
])
def test_bad_definitions_are_one_line_naming_the_file(tmp_path, text, fragment):
    from bench.published import load_definitions

    (tmp_path / "tables.toml").write_text(text)
    with pytest.raises(BenchError) as info:
        load_definitions(tmp_path)
    message = str(info.value)
    assert "\n" not in message and str(tmp_path / "tables.toml") in message and fragment in message


def test_cli_report_with_paper_prints_published_rows_beside_ours(tmp_path, capsys):
    from bench import plugins
    from bench.api import EXECUTION_PARAMS
    from bench.cli import main
    from bench.runner import resolve_params
    from bench.store import ResultStore

    store = ResultStore(tmp_path / "results")
    for method, hamming in [("rmlc", 0.07), ("br", 0.12)]:
        params = {k: v for k, v in resolve_params(plugins.get("methods", method), {})[0].items()
                  if k not in EXECUTION_PARAMS}  # the current defaults, as `bench run` stores them
        for fold in range(2):
            store.write({"job_id": f"{method}-{fold}", "overrides": {}, "timings": {}, "undefined": {},
                         "config": {"dataset": "ml2000", "method": method, "protocol": "kfold", "n_folds": 2,
                                    "fold": fold, "seed": 0, "params": params},
                         "metrics": {"hamming_loss": hamming, "micro_f1": 0.8}}, {"scores": np.zeros(1)})
    code = main(["--results", str(tmp_path / "results"), "report", "--no-mlflow", "--out", str(tmp_path / "rep"),
                 "--with-paper", "--format", "md"])
    out = capsys.readouterr().out
    assert code == 0
    assert "leaderboard not built: the leaderboard and its tests need results on at least 2 datasets" in out
    assert "| measured | rmlc | 0.070 ± 0.000 | 0.800 ± 0.000 |  |" in out
    # RMLC's own row is compared with our rmlc: 0.070 - 0.080
    assert "| published (RMLC Tab. III) | RMLC | 0.080 ± 0.007 (Δ -0.010) | 0.834 ± 0.016 (Δ -0.034) | rmlc |" in out
    assert main(["--results", str(tmp_path / "results"), "report", "--no-mlflow", "--out", str(tmp_path / "rep"),
                 "--with-paper", "--paper-reference", "nope"]) == 2
