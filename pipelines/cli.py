"""`eebench`: the command-line entry point; one subcommand per workflow stage.

Every stage checks its inputs (config keys, registry names, files) before any
long computation, and prints one clear line when something is wrong.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger("eebench")


def _setup_logging(log_file: Path | None = None) -> None:
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_file))
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        handlers=handlers,
        force=True,
    )


def _study_paths(
    args: argparse.Namespace, *, study_checks: bool = True
) -> tuple[dict[str, Any], Path]:
    from eebench.pipelines.workflow.config import load_study

    study = load_study(args.study, study_checks=study_checks)
    root = Path(args.results) if args.results else Path("results") / study["study"]
    return study, root


def _split_dir(root: Path) -> Path:
    return root / "splits"


# --------------------------------------------------------------------------- commands


def cmd_data(args: argparse.Namespace) -> None:
    from eebench.pipelines.data.datasets import prepare_dataset

    print(prepare_dataset(args.name, args.root, args.download))


def cmd_flops(args: argparse.Namespace) -> None:
    from eebench.backbones.flops import flops_table
    from eebench.pipelines.services.io import write_csv

    table = flops_table(tuple(args.classes), configs=args.configs or None)
    if args.out:
        write_csv(args.out, table.round({"mflops": 3}))
        print(f"wrote {len(table)} rows to {args.out}")
    else:
        print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))


def cmd_split(args: argparse.Namespace) -> None:
    from eebench.pipelines.data.datasets import get_dataset_info
    from eebench.pipelines.data.splits import get_split

    study, root = _study_paths(args)
    info = get_dataset_info(args.dataset)
    split = get_split(args.dataset, _split_dir(root), seed=study["split_seed"])
    print(f"{info.name}: {len(split.train_idx)} train / {len(split.val_idx)} val indices")


def _run_config(args: argparse.Namespace, timed: bool = False) -> tuple[dict[str, Any], Path, Path]:
    """(resolved run config, run directory, split directory) from --study/--run or --config;
    the threads of the reproducible mode, or the job's (--threads) for `timed` commands,
    whose timings are not its numbers."""
    from eebench.pipelines.workflow.config import RunSpec, load_run_config, resolve_run

    if args.config:
        run = load_run_config(args.config)
        run_dir = Path(args.run_dir or Path(args.config).parent)
        split_dir = Path(args.split_dir or run_dir / "splits")
    elif not (args.study and args.run):
        raise SystemExit("give --study CONFIG --run RUNPATH, or --config RUN.yaml")
    else:
        study, root = _study_paths(args, study_checks=False)
        spec = RunSpec.from_path(args.run)
        run = resolve_run(study, spec, results_root=root)
        run_dir, split_dir = root / spec.path, _split_dir(root)
    _configure_threads(run, args.threads, timed)
    return run, run_dir, split_dir


def _configure_threads(run: dict[str, Any], threads: int | None, timed: bool) -> None:
    """The reproducible mode's threads on a CPU (pipelines/services/repro.py), else the job's."""
    import torch

    from eebench.pipelines.services.repro import configure_torch
    from eebench.pipelines.workflow.runs import resolve_device

    if timed:
        if threads:
            torch.set_num_threads(threads)
        return
    configure_torch(resolve_device(run["device"]).type, threads)


def cmd_train(args: argparse.Namespace) -> None:
    from eebench.pipelines.training.train import train_run

    run, run_dir, split_dir = _run_config(args)
    _setup_logging(run_dir / "train.log")
    path = train_run(
        run,
        run_dir,
        split_dir,
        restart=args.restart,
        wait=args.wait,
        replace_stale=args.replace_stale,
    )
    print(f"trained: {path}")


def cmd_evaluate(args: argparse.Namespace) -> None:
    from eebench.pipelines.evaluation.evaluate import evaluate_run

    run, run_dir, split_dir = _run_config(args)
    _setup_logging(run_dir / "evaluate.log")
    evaluate_run(run, run_dir, split_dir, with_features=not args.no_features)
    print(f"evaluated: {run_dir / 'outputs.npz'}")


def cmd_calibrate(args: argparse.Namespace) -> None:
    from eebench.pipelines.evaluation.calibrate import calibrate_run

    run, run_dir, _ = _run_config(args)
    _setup_logging(run_dir / "calibrate.log")
    calibrate_run(run, run_dir)
    print(f"calibrated: {run_dir / 'outputs.npz'}")


def cmd_infer(args: argparse.Namespace) -> None:
    from eebench.pipelines.evaluation.infer import (
        choose_decision,
        deploy,
        infer_summary,
        split_batches,
    )

    _, run_dir, split_dir = _run_config(args, timed=True)
    deployed = deploy(run_dir, args.device)
    decision = choose_decision(deployed, args.rule, point=args.p, budget=args.budget)
    batches = split_batches(deployed.run, split_dir, args.split)
    print(infer_summary(deployed, batches, decision, args.mode, args.max_samples, args.out))


def cmd_latency(args: argparse.Namespace) -> None:
    from eebench.pipelines.evaluation.infer import LATENCY_FILE, measure_run_latency

    _, run_dir, split_dir = _run_config(args, timed=True)
    if not args.study:
        raise SystemExit("give --study: the study's `latency` section says what to time")
    study, _ = _study_paths(args)
    if "latency" not in study:
        raise SystemExit(f"{args.study} has no `latency` section (see config/default.yaml)")
    _setup_logging(run_dir / "latency.log")
    measure_run_latency(study, run_dir, split_dir, args.device)
    print(f"timed: {run_dir / LATENCY_FILE}")


def cmd_tables(args: argparse.Namespace) -> None:
    from eebench.pipelines.analysis.tables import build_tables

    study, root = _study_paths(args)
    for path in build_tables(study, root):
        print(f"wrote {path}")


def cmd_figures(args: argparse.Namespace) -> None:
    from eebench.pipelines.analysis.figures import build_figures

    study, root = _study_paths(args)
    for path in build_figures(study, root):
        print(f"wrote {path}")


def cmd_explorer(args: argparse.Namespace) -> None:
    from eebench.pipelines.analysis.explorer import build_explorer, screenshot

    study, root = _study_paths(args)
    path = build_explorer(study, root)
    print(f"wrote {path}")
    if args.screenshot:
        print(f"wrote {screenshot(path, Path(args.screenshot))}")
    if args.open:
        import webbrowser

        webbrowser.open(path.resolve().as_uri())


def cmd_verify(args: argparse.Namespace) -> int:
    """Exit status 0 when every committed table agrees, 1 when one does not, 2 when there is
    nothing to compare or the regeneration failed."""
    from subprocess import CalledProcessError

    from eebench.pipelines.analysis.verify import NothingToCompareError, verify

    study, root = _study_paths(args)
    tables_from = Path(args.tables_from) if args.tables_from else None
    workdir = Path(args.workdir) if args.workdir else None
    try:
        result = verify(Path(args.study), study, root, tables_from, workdir, args.cores)
    except NothingToCompareError as error:
        print(f"eebench verify: {error}", file=sys.stderr)
        return 2
    except CalledProcessError as error:
        print(f"eebench verify: the regeneration failed (snakemake exit {error.returncode})")
        return 2
    reports = result.reports
    for report in reports:
        print("\n".join(report.lines()))
    failed = [report.name for report in reports if report.problems]
    agree = sum(report.agree for report in reports)
    same = "identical" if result.comparison == "identity" else "agree"
    verdict = f"{len(failed)} disagree ({', '.join(failed)})" if failed else f"all {same}"
    print(
        f"verify {study['study']} ({result.comparison} comparison: {result.reason}): "
        f"{len(reports)} tables, {agree} values {same}; {verdict}"
    )
    return 1 if failed else 0


def cmd_repro_check(args: argparse.Namespace) -> int:
    """Exit status 0 when this machine reproduces the committed hashes, 1 otherwise."""
    from eebench.pipelines.analysis.repro_check import run_check, write_expected
    from eebench.pipelines.services.repro import SWITCH, configure_torch, enabled

    if args.write and not enabled():
        print(
            f"eebench repro-check: error: --write needs the mode on: unset {SWITCH}",
            file=sys.stderr,
        )
        return 2
    logging.getLogger().setLevel(logging.WARNING)  # one line, not the stages' logs
    configure_torch("cpu")
    result = run_check()
    if args.write:
        print(f"wrote {write_expected(result)}")
        return 0
    print(result.line())
    return 0 if result.identical else 1


def cmd_check(args: argparse.Namespace) -> None:
    from eebench.methods import method_kind
    from eebench.pipelines.workflow.config import check_upstream, expand_runs, resolve_run
    from eebench.pipelines.workflow.fingerprint import fingerprint

    study, root = _study_paths(args)
    check_upstream(study)
    runs = expand_runs(study)
    for spec in runs:
        run = resolve_run(study, spec, results_root=root)
        print(f"{spec.path}  {method_kind(spec.method)}  config {fingerprint(run)}")
    print(f"{args.study}: valid; {len(runs)} runs, results in {root}")
    print(reproducible_mode_line(study["device"]))


def reproducible_mode_line(device: str) -> str:
    """Whether the reproducible CPU mode applies to a study on `device`, and how to turn it
    off."""
    from eebench.pipelines.services.repro import MODE, SWITCH, enabled

    if not enabled():
        return f"reproducible CPU mode: off ({SWITCH}=0): numbers depend on this machine's CPU"
    if device == "cuda":
        return "reproducible CPU mode: not on a GPU (device cuda: numbers are not bit-identical)"
    return (
        f"reproducible CPU mode: on ({MODE}); turn it off for speed with "
        f"{SWITCH}=0 (then numbers depend on the CPU; `verify` compares them statistically)"
    )


def cmd_list(args: argparse.Namespace) -> None:
    from eebench.backbones import list_models
    from eebench.methods import EXIT_RULES, POSTHOC_METHODS, TRAIN_METHODS
    from eebench.pipelines.data.datasets import DATASETS
    from eebench.recipes import RECIPES

    for title, names in [
        ("datasets", DATASETS.names()),
        ("backbones", list_models()),
        ("train-time methods", TRAIN_METHODS.names()),
        ("post-hoc methods", POSTHOC_METHODS.names()),
        ("exit rules", EXIT_RULES.names()),
        ("recipes", RECIPES.names()),
    ]:
        print(f"{title}: {', '.join(names) or '(none)'}")
    for name in RECIPES.names():
        recipe = RECIPES.get(name)
        print(f"  {name}: {recipe.summary()}\n      source: {recipe.source}")


# --------------------------------------------------------------------------- parser


def _add_study(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--study", help="study config, e.g. config/default.yaml")
    parser.add_argument("--results", help="results folder (default: results/<study name>)")


def _add_run(parser: argparse.ArgumentParser) -> None:
    _add_study(parser)
    parser.add_argument(
        "--run",
        help="run path inside the study: runs/<dataset>/<backbone>/<method>[-<variant>]/seed<k>",
    )
    parser.add_argument("--config", help="a resolved run config (instead of --study/--run)")
    parser.add_argument("--run-dir", help="with --config: the run directory (default: its folder)")
    parser.add_argument("--split-dir", help="with --config: where split files live")
    parser.add_argument(
        "--threads",
        type=int,
        help="CPU threads for torch (default: torch's choice); Snakemake passes its job's "
        "threads; train, evaluate and calibrate on a CPU take 1 under the reproducible mode",
    )


def _add_infer_options(infer: argparse.ArgumentParser, latency: argparse.ArgumentParser) -> None:
    for parser in (infer, latency):
        _add_run(parser)
        parser.add_argument("--device", default="cpu", help="cpu, cuda or auto (default: cpu)")
    infer.add_argument(
        "--rule", default="max_softmax", help="exit rule whose saved decision to use"
    )
    point = infer.add_mutually_exclusive_group(required=True)
    point.add_argument("--p", type=int, help="budget index p of the rule (1-39 for q-rules)")
    point.add_argument(
        "--budget", type=float, help="MFLOPs: the costliest saved decision within it (on val)"
    )
    infer.add_argument(
        "--mode",
        choices=("batch", "pooled", "stream"),
        default="batch",
        help="batch: eval batches, each on its own; pooled: throughput, the samples that go "
        "on wait for the next batches' so that every exit runs on full batches; stream: one "
        "sample at a time, latency percentiles (default: batch)",
    )
    infer.add_argument("--split", choices=("test", "val"), default="test")
    infer.add_argument("--max-samples", type=int, help="stop after this many samples")
    infer.add_argument("--out", help="write predictions and exits to this .npz file")


COMMANDS: dict[str, tuple[Callable[[argparse.Namespace], int | None], str]] = {
    "data": (cmd_data, "check that a dataset is present, or download it"),
    "flops": (cmd_flops, "per-exit cumulative MFLOPs and parameters of every backbone config"),
    "split": (cmd_split, "write the seeded train/val split of a dataset, once"),
    "train": (cmd_train, "train one run (resumes an interrupted run; skips a finished one)"),
    "evaluate": (cmd_evaluate, "logits, features, anytime and budgeted curves of a trained run"),
    "calibrate": (cmd_calibrate, "fit a post-hoc method on a trained run's val outputs"),
    "infer": (cmd_infer, "real early exit of a run with one of its saved exit decisions, timed"),
    "latency": (cmd_latency, "time a run's real early exit at the study's budgets (latency.csv)"),
    "tables": (cmd_tables, "collect every run of a study into tidy CSV tables"),
    "figures": (cmd_figures, "draw the paper's figures and Table 1 from a study's tables"),
    "explorer": (cmd_explorer, "write the study's explorer: one offline HTML page to browse it"),
    "check": (cmd_check, "validate a study config and list its runs, each with its config hash"),
    "repro-check": (cmd_repro_check, "whether this machine reproduces the suite bit for bit"),
    "verify": (cmd_verify, "regenerate a study and compare its committed tables with new ones"),
    "list": (cmd_list, "list registered datasets, backbones, methods, exit rules and recipes"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="eebench",
        description="Early-exit benchmark: train and compare early-exit methods under one "
        "protocol (anytime and budgeted-batch), and regenerate the paper's figures.",
        epilog="The full workflow is run by Snakemake: `snakemake --profile profiles/default`.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    parsers = {
        name: sub.add_parser(name, help=text, description=text)
        for name, (_, text) in COMMANDS.items()
    }
    data = parsers["data"]
    data.add_argument("name", help="dataset name (see `eebench list`)")
    data.add_argument("--root", default="data", help="data root (default: data)")
    data.add_argument(
        "--download", action="store_true", help="download it if missing (needs network)"
    )
    flops = parsers["flops"]
    flops.add_argument("--out", help="CSV file to write (default: print a table)")
    flops.add_argument(
        "--classes", type=int, nargs="+", default=[10, 100, 1000], help="class counts"
    )
    flops.add_argument("--configs", nargs="+", help="only these backbone configs")
    split = parsers["split"]
    _add_study(split)
    split.add_argument("--dataset", required=True)
    for name in ("train", "evaluate", "calibrate"):
        _add_run(parsers[name])
    parsers["train"].add_argument(
        "--restart",
        action="store_true",
        help="delete the run's checkpoints and model.pt first and train it from the start "
        "(after a NaN stop, or to train under a changed config)",
    )
    parsers["train"].add_argument(
        "--wait",
        action="store_true",
        help="when another trainer holds the run, wait for it and use its model "
        "instead of stopping (what the Snakefile asks)",
    )
    parsers["train"].add_argument(
        "--replace-stale",
        action="store_true",
        help="retrain a model.pt made under another config instead of stopping "
        "(what the Snakefile asks: it reruns a run when its config hash changed)",
    )
    parsers["evaluate"].add_argument(
        "--no-features", action="store_true", help="skip the per-exit features (post-hoc inputs)"
    )
    _add_infer_options(parsers["infer"], parsers["latency"])
    for name in ("tables", "figures", "explorer", "check", "verify"):
        _add_study(parsers[name])
    explorer = parsers["explorer"]
    explorer.add_argument("--open", action="store_true", help="then open it in the web browser")
    explorer.add_argument(
        "--screenshot", metavar="PNG", help="then save a screenshot of it here (headless Chromium)"
    )
    verify = parsers["verify"]
    verify.add_argument(
        "--tables-from",
        metavar="DIR",
        help="compare with this results folder of the study (holding tables/) instead of "
        "regenerating it",
    )
    verify.add_argument(
        "--workdir",
        metavar="DIR",
        help="regenerate here and keep it (default: a temporary folder, removed afterwards)",
    )
    verify.add_argument("--cores", type=int, default=2, help="cores for Snakemake (default: 2)")
    parsers["repro-check"].add_argument(
        "--write",
        action="store_true",
        help="commit this machine's hashes as the expected ones (reference/repro_check.yaml)",
    )
    for command in parsers.values():
        command.add_argument(
            "--debug", action="store_true", help="show the traceback of user errors too"
        )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from eebench.pipelines.services.repro import apply_env

    apply_env()  # before torch or NumPy loads (pipelines/services/repro.py)
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command not in {"train", "evaluate", "calibrate", "latency"}:
        _setup_logging()
    from eebench.pipelines.services.errors import user_errors

    try:
        return COMMANDS[args.command][0](args) or 0
    except user_errors() as error:
        if args.debug:
            raise
        print(f"eebench {args.command}: error: {describe(error)}", file=sys.stderr)
        return 2


def describe(error: BaseException) -> str:
    """One line for a user error; a file system error names its file and the fix."""
    if isinstance(error, PermissionError) and error.filename:
        return (
            f"cannot write {error.filename} ({error.strerror}): make its folder writable, "
            "or choose another results folder (--results)"
        )
    return str(error)


if __name__ == "__main__":
    sys.exit(main())
