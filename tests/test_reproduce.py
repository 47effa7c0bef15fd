"""``bench reproduce``: a fake paper's table run on a fixture, its Δ and verdicts checked by hand;
``--plan`` against a by-hand ``bench run``; refusals before any job; the real tables' definitions."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from test_datasets_nus_mir_scene_mm import msrc_file, write_views_file
from test_datasets_voc_coco_custom import write_coco, write_voc

from bench import reproduce
from bench.cli import main
from bench.errors import BenchError
from bench.published import load_definitions, load_published

FAKE_CSV = """paper,table,dataset,method,metric,value,std
FAKE,1,mat-views,Binary relevance,hamming_loss,0.15,0.002
FAKE,1,mat-views,Binary relevance,micro_f1,0.30,
FAKE,1,mat-views,Binary relevance,subset_accuracy,0.9,
FAKE,1,mat-views,Another approach,micro_f1,0.40,
FAKE,1,mat-views,Someone's method,micro_f1,0.45,
"""
FAKE_TOML = """tolerance = 0.02
[methods.FAKE]
"Binary relevance" = "br"
[not_run.FAKE]
"Another approach" = "its code is not public"
"""


def learnable_views_file(root: Path, n: int = 120, n_labels: int = 3) -> None:
    """A two-view .mat in the multi-view layout whose first view carries the labels plus noise, from its
    own seed: binary relevance then scores above zero and differently per fold on every machine (pure
    noise, drawn from a generator other tests share, left BR predicting no label in every fold on CI)."""
    rng = np.random.default_rng(31)
    Y = (rng.random((n, n_labels)) < 0.3).astype(np.float64)
    views = [Y @ rng.normal(size=(n_labels, 6)) + rng.normal(scale=0.8, size=(n, 6)), rng.random((n, 4))]
    write_views_file(root, [v.astype(np.float32) for v in views], Y, "views.mat")


@pytest.fixture
def fake(tmp_path) -> dict[str, Path]:
    """A fake paper's table 1 on a multi-view .mat fixture (kfold: 10 folds), its definitions beside it."""
    published = tmp_path / "published"
    published.mkdir()
    (published / "fake_table1.csv").write_text(FAKE_CSV)
    (published / "tables.toml").write_text(FAKE_TOML)
    learnable_views_file(tmp_path / "data")
    return {"published": published, "data": tmp_path / "data", "results": tmp_path / "results",
            "out": tmp_path / "out"}


def _cli(paths: dict[str, Path], *args: str) -> int:
    return main(["--results", str(paths["results"]), "--data-root", str(paths["data"]), "reproduce", *args,
                 "--published", str(paths["published"]), "--no-mlflow", "--no-progress"])


def _stored_metric(results: Path, metric: str) -> list[float]:
    """Each stored br run's value, read from the record files themselves."""
    files = sorted((results / "mat-views" / "br").glob("*.json"))
    return [json.loads(f.read_text())["metrics"][metric] for f in files]


def _hand_verdict(delta: float, spread: float, tolerance: float, higher_is_better: bool) -> str:
    if abs(delta) <= spread:
        return "within spread"
    if abs(delta) <= tolerance:
        return "within tolerance"
    better = (delta > 0) == higher_is_better
    return f"{'above' if delta > 0 else 'below'} ({'better' if better else 'worse'})"


def test_fake_table_runs_and_its_delta_and_verdicts_match_a_hand_computation(fake, capsys):
    assert _cli(fake, "fake", "1", "--out", str(fake["out"])) == 0
    text = (fake["out"] / "fake_1.md").read_text()
    assert (fake["out"] / "fake_1.tex").read_text().count(r"\begin{table}") >= 1
    assert "SMOKE" not in text
    lines = {line.split(" | ")[3]: line.strip("| ").split(" | ") for line in text.splitlines()
             if line.startswith("| mat-views | Binary relevance")}
    published = {"hamming_loss": (0.15, 0.002, False), "micro_f1": (0.30, math.nan, True),
                 "subset_accuracy": (0.9, math.nan, True)}
    labels = {"hamming_loss": "Hamming loss", "micro_f1": "Micro-F1", "subset_accuracy": "Subset accuracy"}
    hits = 0
    for metric, (value, std, higher) in published.items():
        runs = _stored_metric(fake["results"], metric)
        assert len(runs) == 10
        mean, sd = float(np.mean(runs)), float(np.std(runs, ddof=1))
        delta = mean - value
        verdict = _hand_verdict(delta, max(sd, 0 if math.isnan(std) else std), 0.02, higher)
        hits += verdict.startswith("within")
        cells = lines[labels[metric]]
        assert cells[2] == "br"
        assert cells[5] == f"{mean:.3f} ± {sd:.3f} (10)"
        assert cells[6] == f"{100 * delta:+.1f} pp"
        assert cells[7] == verdict
    assert f"Summary: {hits} of 3 cells within tolerance" in text
    # the rows not run: the reason from tables.toml, or "not implemented here"
    assert "| mat-views | Another approach | its code is not public | Micro-F1 0.400 |" in text
    assert "| mat-views | Someone's method | not implemented here | Micro-F1 0.450 |" in text
    # a second call runs nothing and writes the same table
    capsys.readouterr()
    assert _cli(fake, "fake", "I", "--out", str(fake["out"])) == 0
    assert "0 job(s) run, 10 already in" in capsys.readouterr().out
    assert (fake["out"] / "fake_1.md").read_text() == text
    # our std over runs counts as spread too: a published value half a std away, no published std and
    # no tolerance, is "within spread" (it would be "below" if only the published std counted)
    runs = _stored_metric(fake["results"], "micro_f1")
    mean, sd = float(np.mean(runs)), float(np.std(runs, ddof=1))
    assert sd > 0
    (fake["published"] / "fake_table1.csv").write_text(
        f"paper,table,dataset,method,metric,value,std\nFAKE,1,mat-views,Binary relevance,micro_f1,{mean + sd / 2},\n")
    (fake["published"] / "tables.toml").write_text(FAKE_TOML.replace("tolerance = 0.02", "tolerance = 0"))
    assert _cli(fake, "fake", "1", "--out", str(fake["out"])) == 0
    line = next(x for x in (fake["out"] / "fake_1.md").read_text().splitlines() if x.startswith("| mat-views |"))
    assert line.rstrip(" |").endswith("within spread"), line


def test_plan_lists_the_jobs_a_by_hand_run_stores(fake, capsys):
    # by hand: the method of the table's row, its dataset, the papers' defaults
    assert main(["--results", str(fake["results"]), "--data-root", str(fake["data"]), "run", "--method", "br",
                 "--dataset", "mat-views", "--paper-defaults", "--no-mlflow", "--no-progress"]) == 0
    capsys.readouterr()
    assert _cli(fake, "fake", "1", "--plan") == 0
    out = capsys.readouterr().out
    assert out.startswith("FAKE Table 1: 10 job(s), 10 already stored")
    assert out.count("  stored  br on mat-views") == 10 and "to run" not in out
    assert "published only: Another approach (its code is not public)" in out


def test_estimate_reads_measured_throughput(tmp_path, fake):
    rep = reproduce.find(load_published(fake["published"]), load_definitions(fake["published"]), "fake", "1")
    jobs = reproduce.distinct(reproduce.build(rep, data_root=fake["data"], store_root=fake["results"], overrides={}))
    figures = tmp_path / "throughput.csv"
    figures.write_text("method,device,image_size,images_per_s,machine,date\n")
    assert reproduce.estimate(jobs, figures) == (0.0, ["br"])
    figures.write_text("method,device,image_size,images_per_s,machine,date\nbr,cuda,,12,H100,2026-12-07\n"
                       "der,cuda,448,150,H100,2026-12-07\nder,cpu,448,2,Xeon,2026-12-07\n")
    hours, unknown = reproduce.estimate(jobs, figures)
    # br has no epochs (one pass): 10 folds x 108 training images / 12 images/s
    assert unknown == [] and hours == pytest.approx(10 * 108 / 12 / 3600)
    # a deep method: epochs x training images / its figure at its image size, once per search candidate
    split = SimpleNamespace(train=range(5011))
    der = SimpleNamespace(method="der", params={"image_size": 448, "epochs": 60}, split=split, search={})
    searched = SimpleNamespace(method="der", params={"image_size": 448, "epochs": 60}, split=split,
                               search={"grid": {"lr": [0.1, 0.01, 0.001]}})
    other_size = SimpleNamespace(method="der", params={"image_size": 576, "epochs": 60}, split=split, search={})
    hours, unknown = reproduce.estimate([der, searched, other_size], figures)
    assert hours == pytest.approx((1 + 3) * 60 * 5011 / 150 / 3600) and unknown == ["der@576px"]


def test_missing_data_and_weights_are_one_line_each_and_exit_2_before_any_job(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    results = tmp_path / "results"
    code = main(["--results", str(results), "--data-root", str(tmp_path / "empty"), "reproduce", "der", "II",
                 "--no-mlflow"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and not results.exists()
    assert err[0].startswith("bench: error: voc2007: dataset files not found under")
    assert any("resnet101-63fe2227.pth: ImageNet weights (der_baseline, der) not in the torch cache" in e for e in err)
    assert any("vgg16-397923af.pth" in e for e in err) and len(err) == 3
    # --plan says the same, runs nothing, and gives no cost it has not measured
    assert main(["--data-root", str(tmp_path / "empty"), "reproduce", "der", "II", "--plan"]) == 0
    out = capsys.readouterr().out
    assert "missing: voc2007" in out and "published only: Our DER* (SSGRL's settings" in out
    # no job can be sized without the data, but the figures the cost needs can be named
    assert "cost: unknown: no measured GPU throughput for der_baseline@448px, der@448px in" in out


def test_der_table_ii_smoke_end_to_end_on_the_voc_fixture(tmp_path, monkeypatch, capsys, caplog):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    write_voc(tmp_path / "data")
    base = ["--results", str(tmp_path / "results"), "--data-root", str(tmp_path / "data"), "reproduce", "der", "2",
            "--set", "backbone=small-cnn", "--set", "pretrained=false", "--no-mlflow", "--no-progress"]
    assert main([*base, "--plan"]) == 0
    plan = capsys.readouterr().out
    # the plain and the VGG rows are built as two groups; the fixture's small test part is warned about once
    assert caplog.text.count("official test folds hold as few as 2 examples") == 1, caplog.text
    # official split, seeds 0, 1, 2; the VGG rows are the same jobs once --set changes their backbone
    assert plan.startswith("DER Table II: 6 job(s), 0 already stored")
    assert "cost: unknown: no measured GPU throughput for der_baseline@448px, der@448px" in plan
    assert main([*base, "--smoke", "--out", str(tmp_path / "out")]) == 0
    text = (tmp_path / "out" / "der_II.md").read_text()
    assert "SMOKE RUN" in text and "changed here: backbone=small-cnn, pretrained=False" in text
    our_der = [line for line in text.splitlines()
               if line.startswith("| voc2007 | Our DER | der (backbone=small-cnn, pretrained=False) | mAP")]
    assert len(our_der) == 1 and "(3) |" in our_der[0]
    # the VGG row ran as what --set made it: the same jobs as der's
    vgg = [line for line in text.splitlines() if line.startswith("| voc2007 | VGG-DER | der (backbone=small-cnn, "
                                                                  "pretrained=False) | mAP |")]
    assert len(vgg) == 1 and vgg[0].split(" | ")[5] == our_der[0].split(" | ")[5]


def _coco_images() -> dict:
    """A COCO 2014 tree with enough images for a validation carve-out (24 train, 8 val)."""
    names = ["person", "dog", "bowl", "zebra", "giraffe", "airplane"]
    return {"train": {i: [names[i % 6], names[(i * 7) % 6]] for i in range(1, 25)},
            "val": {100 + i: [names[i % 6]] for i in range(8)}}


@pytest.mark.parametrize("fixture, table, options", [
    ("coco", ["order-free-rnn", "2"], ["--set", "backbone=small-cnn", "--set", "pretrained=false"]),
    ("msrc", ["rmlc", "IV"], ["--dataset", "msrc", "--jobs", "2"]),
])
def test_smoke_end_to_end_on_the_other_fixtures(tmp_path, monkeypatch, capsys, fixture, table, options):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    if fixture == "coco":
        write_coco(tmp_path / "data", _coco_images())
    else:
        msrc_file(tmp_path / "data")
    assert main(["--results", str(tmp_path / "results"), "--data-root", str(tmp_path / "data"), "reproduce",
                 *table, *options, "--smoke", "--no-mlflow", "--no-progress", "--out", str(tmp_path / "out")]) == 0
    written = sorted(p.name for p in (tmp_path / "out").iterdir())
    slug = {"coco": "order_free_rnn_2", "msrc": "rmlc_IV"}[fixture]
    assert written == [f"{slug}.md", f"{slug}.tex"]
    text = (tmp_path / "out" / f"{slug}.md").read_text()
    measured = [line for line in text.splitlines() if any(f" ({runs}) | " in line for runs in (3, 10))]
    assert "SMOKE RUN" in text and measured and "not measured" not in text


def test_unknown_table_and_dataset_are_refused_in_one_line(fake):
    published, definitions = load_published(fake["published"]), load_definitions(fake["published"])
    with pytest.raises(BenchError, match=r"no published table fake 9; tables: fake 1 \(bench reproduce --list\)"):
        reproduce.find(published, definitions, "fake", "9")
    rep = reproduce.find(published, definitions, "FAKE", "i")
    with pytest.raises(BenchError, match="--dataset voc2007: FAKE Table 1 reports on mat-views only"):
        rep.only(["voc2007"])
    with pytest.raises(BenchError, match="epochs"):  # a --set key no method of the table has, even in --plan
        reproduce.missing(rep, fake["data"], {"epochs": 3})


@pytest.mark.parametrize("delta, spread, tolerance, metric, expected", [
    (0.004, 0.005, 0.01, "mAP", "within spread"),
    (-0.008, 0.005, 0.01, "mAP", "within tolerance"),
    (-0.031, 0.005, 0.01, "mAP", "below (worse)"),
    (0.02, 0.0, 0.01, "ap:cat", "above (better)"),
    (-0.02, 0.0, 0.01, "hamming_loss", "below (better)"),
    (float("nan"), 0.0, 0.01, "mAP", "not measured"),
])
def test_verdict(delta, spread, tolerance, metric, expected):
    assert reproduce.verdict(delta, spread, tolerance, metric) == expected


def test_summary_names_the_largest_gap():
    frame = pd.DataFrame({"dataset": ["voc2007"] * 3, "row": ["Our DER"] * 3, "ran_as": ["der", "der", ""],
                          "metric": ["mAP", "ap:cat", "mAP"], "delta": [-0.031, 0.004, np.nan],
                          "verdict": ["below (worse)", "within tolerance", "published only"]})
    assert reproduce.summary(frame) == "1 of 2 cells within tolerance; largest gap mAP -3.1 pp (Our DER, voc2007)"


def test_every_published_table_is_listed(capsys, tmp_path):
    assert main(["--data-root", str(tmp_path), "reproduce", "--list"]) == 0
    out = capsys.readouterr().out
    listed = [line.split("  ")[0] for line in out.splitlines() if not line.startswith(" ")]
    every = load_published().groupby(["paper", "table"], sort=False).ngroups
    assert len(listed) == every and "der II" in listed and "order-free-rnn 1" in listed
