"""Every kind of generated LaTeX table compiles with pdflatex (booktabs) and fits the page.

A store of hand-made records like a real benchmark's: three datasets that show all 22 metrics,
rows with long ``--set`` labels, a VOC-like dataset with a per-class table of 20 classes, and so a
leaderboard and its Wilcoxon table of 15 pairs x 22 metrics. ``bench report --format latex`` writes
the tables; each is compiled alone in an ``article`` and the log must report no error, no overfull
box (wider than ``\\textwidth``) and no float too large for the page. Skipped without pdflatex
(Debian: ``apt-get install texlive-latex-base texlive-latex-recommended``).
"""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest

from bench.cli import main
from bench.metrics import METRICS
from bench.store import ResultStore

VOC_CLASSES = ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
               "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
               "tvmonitor")
VOCISH = '''
from bench.api import Dataset


class VocIsh(Dataset):
    name = "vocish"
    protocol = "official"
    metric_set = "voc"
    per_class_table = True
'''
ROWS = [("br", {}), ("rmlc", {}), ("rmlc_ns", {}), ("der_disentangle", {"alpha": 0.1, "margin": 2.5}),
        ("order_free_rnn_noatt", {"beam_width": 5}), ("cmsg", {})]
DOCUMENT = "\\documentclass{article}\n\\usepackage{booktabs}\n\\begin{document}\n\\input{%s}\n\\end{document}\n"


def _record(dataset, method, overrides, fold, rng, protocol="kfold"):
    metrics = {m: float(rng.uniform(0.05, 0.95)) for m in METRICS}
    metrics["coverage"] = float(rng.uniform(1, 30))
    rec = {"job_id": f"{dataset}-{method}-{len(overrides)}-{fold}", "overrides": overrides, "timings": {},
           "undefined": {"macro_f1": 1}, "metrics": metrics,
           "config": {"dataset": dataset, "method": method, "protocol": protocol, "n_folds": 3, "fold": fold,
                      "seed": 0, "data_fingerprint": "f"}}
    if dataset == "vocish":
        rec["per_label_ap"], rec["label_names"] = rng.uniform(0.3, 0.99, len(VOC_CLASSES)).tolist(), list(VOC_CLASSES)
    return rec


@pytest.mark.skipif(shutil.which("pdflatex") is None, reason="needs pdflatex (Debian texlive-latex-base/-recommended)")
def test_every_generated_latex_table_compiles_within_the_page(tmp_path, isolated):
    (isolated / "datasets" / "vocish.py").write_text(VOCISH)
    store = ResultStore(tmp_path / "results")
    rng = np.random.default_rng(0)
    for dataset in ("wide-a", "wide-b", "wide-c", "vocish"):
        for method, overrides in ROWS:
            for fold in range(3 if dataset != "vocish" else 2):
                store.write(_record(dataset, method, overrides, fold, rng,
                                    "official" if dataset == "vocish" else "kfold"), {"scores": np.zeros(1)})
    out = tmp_path / "reports"
    assert main(["report", "--format", "latex", "--no-mlflow", "--out", str(out)]) == 0
    tex_files = sorted(out.glob("*.tex"))
    names = {p.stem for p in tex_files}
    assert {"wide-a__kfold3", "vocish__official__per_class_ap", "leaderboard", "leaderboard__wilcoxon"} <= names
    assert any(n.endswith("__ablation_br") or "__ablation_" in n for n in names)
    problems = {}
    for tex in tex_files:
        doc = tmp_path / f"doc_{tex.stem}.tex"
        doc.write_text(DOCUMENT % tex.as_posix())
        run = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", doc.name],
                             cwd=tmp_path, capture_output=True, text=True, timeout=120)
        log = (tmp_path / f"doc_{tex.stem}.log").read_text(errors="replace")
        found = [line for line in log.splitlines()
                 if line.startswith("!") or "Overfull \\hbox" in line or "Float too large" in line]
        if run.returncode or found:
            problems[tex.name] = found[:3] or [f"pdflatex exit {run.returncode}"]
    assert not problems, problems
