"""``bench``: list plug-ins, run benchmark jobs, regenerate tables.

Every user error is printed as one line, ``bench: error: ...``, with exit status 2; a run in which
some jobs failed finishes the others, stores them, lists the failures and exits with status 1.
"""

from __future__ import annotations

import argparse
import inspect
import logging
import os
import sys
import tempfile
from pathlib import Path

from bench import image_features, plugins
from bench.errors import BenchError
from bench.fetch import fetchable, files_hint
from bench.folders import default_data_root, default_reports, default_results

DEFAULT_DATASET = "mnist-mosaic"
DISTRIBUTION = "bench-multilabel"  # the name pyproject.toml installs the package under
log = logging.getLogger("bench")


def _seeds(text: str) -> tuple[int, ...]:
    parts = [s.strip() for s in text.split(",")]
    if not all(p.lstrip("-").isdigit() for p in parts):
        raise argparse.ArgumentTypeError(f"expects comma-separated integers (e.g. 0,1,2), got {text!r}")
    seeds = tuple(int(p) for p in parts)
    if any(seed < 0 for seed in seeds):
        raise argparse.ArgumentTypeError(f"seeds must be >= 0, got {text!r}")
    if len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"a seed is given twice in {text!r} (it would run the same jobs twice)")
    return seeds


def _int_at_least(low: int, allowed: tuple[int, ...] = (), what: str = ""):
    """An argparse type: an integer >= ``low`` (or one of ``allowed``)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expects an integer, got {text!r}") from None
        if value < low and value not in allowed:
            raise argparse.ArgumentTypeError(f"expects {what or f'an integer >= {low}'}, got {value}")
        return value

    return parse


class Parser(argparse.ArgumentParser):
    """argparse, with a usage error printed as one line like every other error of ``bench``."""

    def error(self, message: str):
        raise BenchError(f"{message} (see `{self.prog} --help`)")


class VersionAction(argparse.Action):
    """``bench --version``: the installed package's version and the code version each result records
    (``environment["code"]``, ``git describe`` of the checkout), computed only when asked."""

    def __init__(self, option_strings, dest, **kwargs):
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        import importlib.metadata

        from bench.environment import code_version

        try:
            package = importlib.metadata.version(DISTRIBUTION)
        except importlib.metadata.PackageNotFoundError:
            package = "(not installed)"
        print(f"bench {package} ({DISTRIBUTION}); code {code_version()} (recorded in each result's "
              f"environment; checkout {plugins.project_root()})")
        parser.exit()


def _add_tracking_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tracking-uri", default=None,
                        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or sqlite:///<results>/mlflow.db)")
    parser.add_argument("--no-mlflow", action="store_true",
                        help="do not log to MLflow (also: BENCH_MLFLOW=0); the results store is unaffected")


def _tracker(args, store_root: Path):
    """The MLflow mirror of the results store, or None when tracking is switched off (and for smoke
    runs, which are checks, not results)."""
    from bench.tracking import Tracker, tracking_enabled

    if args.smoke or not tracking_enabled(args.no_mlflow):
        return None
    return Tracker.for_results(store_root, args.tracking_uri)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="bench", description="Benchmark multi-label learning methods on the papers' datasets and protocols.")
    parser.add_argument("--results", type=Path, default=None,
                        help="results store folder (default: $BENCH_RESULTS or ./results)")
    parser.add_argument("--data-root", type=Path, default=None,
                        help="where dataset files live (default: $BENCH_DATA_ROOT or ./data)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    parser.add_argument("--version", action=VersionAction,
                        help="print the package version and the code version results record, and exit")
    sub = parser.add_subparsers(dest="command", required=True)

    listing = sub.add_parser("list", help="show methods and datasets",
                             description="Show the method and dataset plug-ins, and which datasets' files are present.")
    _data_root_option(listing)

    run = sub.add_parser("run", help="train and evaluate methods on datasets",
                         description="Run every (method, dataset, fold/seed) job not already in the store.")
    run.add_argument("--method", default=None, help="method name(s), comma-separated, or 'all' (see `bench list`)")
    run.add_argument("--dataset", default=DEFAULT_DATASET,
                     help=f"dataset name(s), comma-separated, or 'all' (default: {DEFAULT_DATASET})")
    run.add_argument("--protocol", choices=["kfold", "official", "holdout"], default=None,
                     help="evaluation protocol (default: the one the papers used for the dataset)")
    run.add_argument("--folds", type=_int_at_least(2), default=10, help="folds for --protocol kfold (default: 10)")
    run.add_argument("--seeds", type=_seeds, default=None,
                     help="comma-separated seeds (default: 0 for kfold, 0,1,2 official, 0-4 holdout)")
    run.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="override a hyper-parameter (repeatable; 'method.key=value' scopes it)")
    run.add_argument("--tune", dest="tune", action="append", default=[], metavar="KEY=V1,V2,...",
                     help="choose a hyper-parameter inside each job on its training part's validation carve-out "
                          "(repeatable; 'method.key=...' scopes it; sets or overrides a method's own search, "
                          "e.g. RETDM's alpha; see docs/tuning.md)")
    run.add_argument("--paper-defaults", action="store_true",
                     help="leave out the settings a dataset declares for its scale (e.g. mnist-mosaic's small "
                          "CNN and short schedule): every method runs with its paper's defaults")
    run.add_argument("--feature-extractor", default=None, metavar="BACKBONE[@SIZE]",
                     help="frozen CNN whose per-stage features feature-only methods read on image-only datasets "
                          f"(default: {image_features.Extractor()}; e.g. resnet101@448)")
    run.add_argument("--smoke", action="store_true",
                     help="check that a set-up runs end to end in seconds: a tiny schedule (epochs=1, "
                          "steps_per_epoch=2 where a method has them) over --set and the dataset's settings; "
                          "smoke jobs are stored apart from real ones, shown by `bench report --smoke` only "
                          "(tables in <reports>/smoke), and not logged to MLflow")
    _add_execution_options(run)
    _add_tracking_options(run)
    _data_root_option(run)

    reproduce = sub.add_parser(
        "reproduce", help="remake a published table: run its jobs, set our numbers beside the paper's",
        description="Run the jobs a paper's table needs (the papers' settings; jobs already stored are skipped), "
                    "then write our mean ± std beside each published number, Δ and a verdict, to "
                    "<reports>/reproduce/. See docs/reproduce.md.")
    reproduce.add_argument("paper", nargs="?", help="the paper: rmlc, der, retdm, order-free-rnn or cmsg")
    reproduce.add_argument("table", nargs="?", help="its table as the paper numbers it (II, 2, text)")
    reproduce.add_argument("--list", action="store_true",
                           help="list every published table: datasets, the methods it runs, what is missing here")
    reproduce.add_argument("--plan", action="store_true",
                           help="print the jobs, what is missing and the estimated cost; run nothing")
    reproduce.add_argument("--dataset", default=None,
                           help="only these of the table's datasets, comma-separated (default: all it reports on)")
    reproduce.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                           help="change a setting from the paper's (repeatable; the table says so)")
    reproduce.add_argument("--smoke", action="store_true",
                           help="a tiny schedule, to check that the table's jobs run end to end (the table "
                                "says 'smoke'; its verdicts mean nothing)")
    reproduce.add_argument("--published", type=Path, default=None,
                           help="folder of published-number CSVs and tables.toml (default: reports/published)")
    reproduce.add_argument("--out", type=Path, default=None,
                           help="output folder (default: <reports>/reproduce, <reports>/smoke/reproduce with --smoke)")
    _add_execution_options(reproduce)
    _add_tracking_options(reproduce)
    _data_root_option(reproduce)

    fetch = sub.add_parser("fetch", help="download a dataset's public files and verify their checksums",
                           description="Download a dataset's public archives into the data root, check "
                                       "their MD5, extract them and check the images.")
    fetch.add_argument("dataset", help="dataset name (see `bench list`)")
    _data_root_option(fetch)

    report = sub.add_parser("report", help="regenerate tables from the results store",
                            description="Rebuild paper-style tables from the results store.")
    report.add_argument("--format", choices=["md", "latex", "both"], default="both")
    report.add_argument("--dataset", default=None, help="only these dataset(s), comma-separated")
    report.add_argument("--method", default=None, help="only these method(s), comma-separated")
    report.add_argument("--metrics", default=None,
                        help="only these metric columns, comma-separated, in this order (e.g. mAP,OF1,CF1; "
                             "default: each dataset's papers' set; names: docs/protocols-and-metrics.md)")
    report.add_argument("--out", type=Path, default=None, help="output folder (default: ./reports)")
    report.add_argument("--with-paper", action="store_true",
                        help="print each table's rows beside the numbers the papers publish for that dataset")
    report.add_argument("--published", type=Path, default=None,
                        help="folder of published-number CSVs (default: reports/published in the checkout)")
    report.add_argument("--paper-reference", default=None, metavar="ROW",
                        help="our row that published rows of other methods are compared with (--with-paper)")
    report.add_argument("--no-leaderboard", action="store_true",
                        help="skip the cross-dataset leaderboard, its tests and critical-difference diagrams")
    report.add_argument("--smoke", action="store_true",
                        help="the runs of `bench run --smoke` instead of the real ones (default --out: "
                             "<reports>/smoke; not logged to MLflow)")
    _add_tracking_options(report)
    return parser


def _add_execution_options(parser: argparse.ArgumentParser) -> None:
    """How the jobs of ``bench run`` and ``bench reproduce`` run."""
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
    parser.add_argument("--jobs", type=_int_at_least(1, (-1,), "a positive number of workers, or -1 (one per core)"),
                        default=1, help="parallel workers; -1 = one per CPU core (default: 1)")
    parser.add_argument("--threads", type=_int_at_least(1), default=None,
                        help="threads per job for BLAS, OpenMP and torch (default: $BENCH_THREADS, else the CPU "
                             "cores divided among the running jobs)")
    parser.add_argument("--stack-folds", choices=["auto", "on", "off"], default="auto",
                        help="train the folds of a method that supports it (RMLC) as one stacked model; auto: on "
                             "CUDA (default: auto)")
    parser.add_argument("--backend", choices=["local", "ray"], default="local",
                        help="where jobs run: this machine's processes, or Ray tasks (pip install -e '.[ray]')")
    parser.add_argument("--address", default=None,
                        help="--backend ray: the address of an existing Ray cluster (default: a local one)")
    parser.add_argument("--force", action="store_true", help="re-run jobs that are already in the store")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def _data_root_option(subparser: argparse.ArgumentParser) -> None:
    """``--data-root`` after the command too; SUPPRESS keeps a value given before the command."""
    subparser.add_argument("--data-root", type=Path, default=argparse.SUPPRESS,
                           help="where dataset files live (default: $BENCH_DATA_ROOT or ./data)")


def cmd_list(args) -> int:
    """Every plug-in, one line each; one whose file fails to import says so and hides no other."""
    methods, datasets = plugins.load("methods"), plugins.load("datasets")  # read from source: nothing imported
    width = max(map(len, [*methods, *datasets]), default=0)  # one name column for both lists
    print(f"Methods ({', '.join(map(str, plugins.plugin_dirs('methods')))}):")
    for name, method in methods.items():
        try:
            print(f"  {name:<{width}} {'+'.join(sorted(method.accepts)):<15} {method.citation}")
        except BenchError as exc:
            print(f"  {name:<{width}} {'broken':<15} {exc}")
    root = args.data_root or default_data_root()
    print(f"\nDatasets (data root: {root}):")
    for name in datasets:
        try:
            cls = plugins.get("datasets", name)
            kind, status = ("embedded" if cls.embedded else "on disk"), _dataset_status(name, cls, root)
        except BenchError as exc:
            print(f"  {name:<{width}} {'broken':<9} {exc}")
            continue
        print(f"  {name:<{width}} {kind:<9} {status}")
        if cls.description:
            print(f"  {'':<{width}} {cls.description.splitlines()[0]}")
    return 0


def _dataset_status(name: str, cls: type, root: Path) -> str:
    if cls.embedded:
        return plugins.load_dataset(name, str(root)).summary()
    if cls().is_available(root):  # not loaded here: reading COCO's annotations takes a while
        return "files present under the data root"
    return f"files not found under the data root (see {files_hint(name, cls)})"


def _threads(args) -> int | None:
    """``--threads``, else ``$BENCH_THREADS``, else None (the cores divided among the running jobs)."""
    if args.threads is not None or not os.environ.get("BENCH_THREADS"):
        return args.threads
    try:
        return _int_at_least(1)(os.environ["BENCH_THREADS"])
    except argparse.ArgumentTypeError as exc:
        raise BenchError(f"$BENCH_THREADS {exc}") from None


def writable_folder(path: Path, what: str, hint: str = "") -> Path:
    """``path``, created if needed, once a file could be written in it (before any job runs)."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=path, prefix=".bench-write-probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise BenchError(f"{what} folder {path} cannot be written ({exc.strerror or exc}); "
                         f"choose another with {hint or ('--results or $BENCH_RESULTS' if what == 'results' else '$BENCH_REPORTS')}"
                         ) from None
    return path


def _present(names: list[str], root: Path) -> list[str]:
    """``--dataset all``: the datasets that can be loaded here (embedded, or their plug-in finds its
    files under ``root``: a check of the files, nothing is read), the others named in one warning."""
    present, downloadable, by_hand, broken = [], [], [], []
    for name in names:
        try:
            cls = plugins.get("datasets", name)
            usable = cls.embedded or cls().is_available(root)
        except BenchError as exc:
            broken.append(f"{name} ({exc})")
            continue
        if usable:
            present.append(name)
        else:
            (downloadable if fetchable(cls) else by_hand).append(name)
    reasons = []
    if downloadable:
        reasons.append(f"{', '.join(downloadable)} (files absent: see `bench fetch NAME`)")
    if by_hand:
        reasons.append(f"{', '.join(by_hand)} (files absent: see docs/datasets.md, 'Datasets on disk')")
    if broken:
        reasons.append(f"broken: {'; '.join(broken)}")
    if reasons:
        log.warning("--dataset all: skipping %d of %d dataset(s) not usable under %s: %s",
                    len(names) - len(present), len(names), root, "; ".join(reasons))
    return present


def _check_backend(args) -> None:
    if args.address is not None and args.backend != "ray":
        raise BenchError(f"--address {args.address} names a Ray cluster: it needs --backend ray")
    if args.backend == "ray":
        from bench.backends import ray as ray_backend

        ray_backend._ray()  # installed?
        ray_backend.check_address(args.address)


def _execute(args, jobs, store_root: Path):
    """Run the jobs not yet stored (``bench run`` and ``bench reproduce``); (summary, tracker)."""
    from bench.runner import run_jobs

    tracker = _tracker(args, store_root)
    summary = run_jobs(jobs, device=args.device, n_jobs=args.jobs, threads=_threads(args), force=args.force,
                       progress=not args.no_progress, on_record=tracker.log_job if tracker else None,
                       stack_folds=args.stack_folds, backend=args.backend, address=args.address)
    print(f"{summary.ran} job(s) run, {summary.skipped} already in {store_root} (use --force to re-run)")
    return summary, tracker


def _report_failures(summary) -> int:
    for failure in summary.failures:
        print(f"bench: job failed: {failure['job']}: {failure['error']}", file=sys.stderr)
        log.debug(failure.get("traceback", ""))
    return 1 if summary.failures else 0


def cmd_run(args) -> int:
    from bench import results as results_layer
    from bench.jobs import build_jobs
    from bench.params import parse_overrides
    from bench.report import build_tables, write_reports
    from bench.store import ResultStore
    from bench.tables import to_markdown
    from bench.tuning import parse_tune

    if args.method is None:
        raise BenchError("bench run needs --method: a method name (`br`, the binary-relevance baseline, to start), "
                         "several comma-separated, or all; `bench list` shows them")
    _check_backend(args)
    data_root = args.data_root or default_data_root()
    methods = plugins.resolve_names("methods", args.method)
    datasets = plugins.resolve_names("datasets", args.dataset)
    if args.dataset.strip() == "all":
        datasets = _present(datasets, data_root)
    store_root = writable_folder(args.results or default_results(), "results")
    reports_root = writable_folder(_reports_folder(None, args.smoke), "reports")
    jobs = build_jobs(
        methods, datasets, protocol=args.protocol, n_folds=args.folds, seeds=args.seeds,
        overrides=parse_overrides(args.overrides), data_root=data_root,
        store_root=store_root, strict=args.method.strip() != "all", paper_defaults=args.paper_defaults,
        feature_extractor=args.feature_extractor, smoke=args.smoke, tune=parse_tune(args.tune),
    )
    if not jobs:
        raise BenchError("no job to run: no selected method accepts the selected datasets' views")
    summary, tracker = _execute(args, jobs, store_root)

    # Every stored run on these datasets, read once, on the data as this run saw it.
    results = results_layer.load(ResultStore(store_root), datasets,
                                 current={j.dataset: j.data_fingerprint for j in jobs}, smoke=args.smoke)
    job_ids = {j.job_id for j in jobs}
    for table in build_tables(results.only(job_ids)):
        print()
        print(to_markdown(table, transpose=True))
    _, written = write_reports(results, reports_root)
    if written:
        print(f"tables of all stored runs on {', '.join(datasets)} written to {written[0].parent}")
    if tracker:  # parents' mean/std over every stored fold, and jobs stored earlier without MLflow
        tracker.sync(results.touching(job_ids))
    return _report_failures(summary)


def cmd_reproduce(args) -> int:
    from bench import reproduce
    from bench.params import parse_overrides
    from bench.published import load_definitions, load_published

    published, definitions = load_published(args.published), load_definitions(args.published)
    data_root = args.data_root or default_data_root()
    if args.list:
        print("\n".join(reproduce.list_lines(reproduce.tables(published, definitions), data_root)))
        return 0
    if not (args.paper and args.table):
        raise BenchError("bench reproduce needs a paper and a table (e.g. `bench reproduce der II`), or --list")
    rep = reproduce.find(published, definitions, args.paper, args.table)
    if args.dataset:
        rep = rep.only([d.strip() for d in args.dataset.split(",") if d.strip()])
    overrides = parse_overrides(args.overrides)
    _check_backend(args)
    absent = reproduce.missing(rep, data_root, overrides, args.smoke)
    if args.plan:
        print("\n".join(reproduce.plan(rep, absent, data_root=data_root, store_root=args.results or default_results(),
                                       overrides=overrides, smoke=args.smoke)))
        return 0
    if absent:  # one line each, before any job
        for line in absent:
            print(f"bench: error: {line}", file=sys.stderr)
        return 2
    store_root = writable_folder(args.results or default_results(), "results")
    out_dir = writable_folder(args.out or _reports_folder(None, args.smoke) / "reproduce", "reports",
                              "--out or $BENCH_REPORTS")
    by_target = reproduce.build(rep, data_root=data_root, store_root=store_root, overrides=overrides,
                                smoke=args.smoke)
    summary, tracker = _execute(args, reproduce.distinct(by_target), store_root)
    markdown, written = reproduce.write(rep, by_target, store_root, out_dir, overrides, args.smoke)
    print(markdown)
    print(f"wrote {written[0]} and {written[1].name}")
    if tracker:
        tracker.log_report(written)
    return _report_failures(summary)


def cmd_report(args) -> int:
    from bench import results as results_layer
    from bench.report import write_reports
    from bench.store import ResultStore
    from bench.tables import to_markdown

    formats = ("md", "latex") if args.format == "both" else (args.format,)
    datasets = args.dataset.split(",") if args.dataset else None
    methods = args.method.split(",") if args.method else None
    metrics = _metric_names(args.metrics)
    store_root = args.results or default_results()
    results = results_layer.load(ResultStore(store_root), datasets, methods,
                                 data_root=args.data_root or default_data_root(), smoke=args.smoke)
    out_dir = writable_folder(_reports_folder(args.out, args.smoke), "reports", "--out or $BENCH_REPORTS")
    tables, written = write_reports(results, out_dir, formats, leaderboard=not args.no_leaderboard, metrics=metrics)
    if not tables:
        what = "smoke run" if args.smoke else "finished run"
        raise BenchError(f"no {what} in {store_root}; start with `bench run --method br{' --smoke' * args.smoke}`")
    for table in tables:
        print(to_markdown(table))
    _print_table_extras(args, tables)
    print(f"wrote {len(written)} file(s) to {written[0].parent}")
    _figures_and_tracking(args, store_root, out_dir, results, tables, written)
    return 0


def _metric_names(spec: str | None) -> list[str] | None:
    """``--metrics``: the names, checked against :data:`bench.metrics.METRICS` before any work."""
    if spec is None:
        return None
    from bench.metrics import METRICS

    names = [m.strip() for m in spec.split(",") if m.strip()]
    unknown = [m for m in names if m not in METRICS]
    if unknown or not names:
        raise BenchError(f"--metrics: unknown metric(s) {', '.join(unknown) or '(none given)'}; "
                         f"expected names among {', '.join(METRICS)}")
    return names


def _reports_folder(out: Path | None, smoke: bool) -> Path:
    """``--out``, else the reports folder; smoke runs' tables go to its ``smoke/`` so that they never
    replace the real ones."""
    if out is not None:
        return out
    return default_reports() / "smoke" if smoke else default_reports()


def _print_table_extras(args, tables) -> None:
    """Why no leaderboard was built, and with ``--with-paper`` the published numbers beside ours."""
    from bench.stats import not_run_reason

    main = [t for t in tables if t.kind == "main"]
    if not args.no_leaderboard and (reason := not_run_reason(main)):
        print(f"leaderboard not built: {reason}\n")
    if args.with_paper:
        from bench.published import load_definitions, load_published, paper_comparison

        published, definitions = load_published(args.published), load_definitions(args.published)
        ref = args.paper_reference
        if ref is not None and not any(ref in t.mean.index for t in main):
            raise BenchError(f"--paper-reference {ref!r} is not a row of any table; rows: "
                             f"{', '.join(sorted({r for t in main for r in t.mean.index}))}")
        for table in (t for t in tables if t.kind in ("main", "per_class")):
            print(paper_comparison(table, published, ref if ref in table.mean.index else None,
                                   definitions=definitions))


def cmd_fetch(args) -> int:
    from bench.fetch import fetch
    from bench.plugins import load_dataset

    root = args.data_root or default_data_root()
    for folder in fetch(args.dataset, root):
        print(f"verified and extracted into {folder}")
    dataset = plugins.get("datasets", args.dataset)
    if "verify_images" in inspect.signature(dataset).parameters:
        data = dataset(verify_images=True).load(root)  # every image file complete (JPEG markers)
    else:
        data = load_dataset(args.dataset, str(root))
    print(f"{args.dataset}: {data.summary()}")
    return 0


def _figures_and_tracking(args, store_root: Path, out_dir: Path, results, tables, written) -> None:
    """Figures under ``<reports>/figures``; then the rows, tables and figures to MLflow."""
    from bench import plots

    figures = plots.make_plots(results)
    try:
        paths = plots.save(figures, Path(out_dir) / "figures")
        if paths:
            print(f"wrote {len(paths)} figure file(s) to {paths[0].parent}")
        tracker = _tracker(args, store_root)
        if tracker:
            tracker.sync(results)
            tracker.log_report(written, figures, tables)
            if not tracker.disabled:
                print(f"logged to MLflow experiment {tracker.experiment!r} at {tracker.uri}")
    finally:
        plots.close(figures)


def main(argv: list[str] | None = None) -> int:
    commands = {"list": cmd_list, "run": cmd_run, "report": cmd_report, "fetch": cmd_fetch,
                "reproduce": cmd_reproduce}
    try:
        args = build_parser().parse_args(argv)
        logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                            format="bench: %(levelname)s: %(message)s")
        return commands[args.command](args)
    except BenchError as exc:
        print(f"bench: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("bench: interrupted; finished jobs are stored, re-run the command to resume", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `bench report | head`: the reader left; not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
