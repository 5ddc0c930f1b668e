"""Command line: ``qcell-nb run``, ``status``, ``failures``, ``retry``, ``report``, ``export``."""

from __future__ import annotations

import argparse
import functools
import sys
import time
from collections.abc import Callable

from .parameters import PROFILES, ParameterError, parse_overrides
from .runner import EXECUTION_PARAMETERS, find_run, retry_failures, run_pipeline, run_status, stage_failures

#: Errors that mean the user asked for something that cannot be done: one line, exit status 2.
_USER_ERRORS = (ParameterError, ValueError, RuntimeError, FileNotFoundError)

Command = Callable[[argparse.Namespace], int]


def _user_errors_exit_2(command: Command) -> Command:
    """Run a command; a user error prints ``qcell-nb: error: ...`` and returns 2, not a traceback."""
    @functools.wraps(command)
    def wrapped(args: argparse.Namespace) -> int:
        try:
            return command(args)
        except _USER_ERRORS as exc:
            print(f"qcell-nb: error: {exc}", file=sys.stderr)
            return 2
    return wrapped


@_user_errors_exit_2
def _cmd_run(args: argparse.Namespace) -> int:
    outcomes = run_pipeline(profile=args.profile, run=args.run, stages=args.stages,
                            overrides=parse_overrides(args.set or []), seed=args.seed, force=args.force,
                            runs_dir=args.runs_dir, notebooks_dir=args.notebooks, log_output=args.verbose)
    failed = [o for o in outcomes if o.action == "failed"]
    total = sum(o.seconds for o in outcomes)
    print(f"{len(outcomes) - len(failed)}/{len(outcomes)} stages done in {total:.1f} s"
          + (f"; failed: {', '.join(o.stage for o in failed)}" if failed else ""))
    return 1 if failed else 0


@_user_errors_exit_2
def _cmd_status(args: argparse.Namespace) -> int:
    run_dir = find_run(args.run, args.runs_dir)
    print(f"run {run_dir}")
    print(f"{'stage':<20} {'status':<10} {'seconds':>8}  counts")
    for row in run_status(run_dir):
        seconds = f"{row['seconds']:.1f}" if row["seconds"] is not None else "-"
        counts = ", ".join(f"{k}={v}" for k, v in row["counts"].items())
        print(f"{row['stage']:<20} {row['status']:<10} {seconds:>8}  {counts}")
    failed = stage_failures(run_dir)
    if failed:
        print(f"{len(failed)} failed item(s): 'qcell-nb failures {args.run}' lists them, "
              f"'qcell-nb retry {args.run} --stage STAGE' recomputes them")
    return 0


@_user_errors_exit_2
def _cmd_failures(args: argparse.Namespace) -> int:
    run_dir = find_run(args.run, args.runs_dir)
    failures = stage_failures(run_dir, [args.stage] if args.stage else None)
    print(f"run {run_dir}: {len(failures)} failed item(s)")
    for entry in failures:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(entry.get("time", 0)))
        print(f"{entry['stage']:<20} {entry.get('name') or '-':<24} {entry['sid']}  {when}")
        print(f"    {entry.get('error', '')}")
    if failures:
        stages = sorted({entry["stage"] for entry in failures})
        print("retry with: " + "; ".join(f"qcell-nb retry {args.run} --stage {name}" for name in stages))
    return 0


@_user_errors_exit_2
def _cmd_retry(args: argparse.Namespace) -> int:
    run_dir = find_run(args.run, args.runs_dir)
    # Execution settings apply to the one stage retried, with or without a stage prefix.
    execution = {k: v for values in parse_overrides(args.set or []).values() for k, v in values.items()}
    outcome = retry_failures(run_dir, args.stage, notebooks_dir=args.notebooks, execution=execution,
                             log_output=args.verbose)
    if outcome.action == "failed":
        return 1
    if outcome.action == "retried":
        print("later stages that read this one are recomputed by the next 'qcell-nb run'")
    return 0


@_user_errors_exit_2
def _cmd_report(args: argparse.Namespace) -> int:
    from ..validation.report import write_report

    report = write_report(find_run(args.run, args.runs_dir))
    print(f"report written: {report}")
    return 0


#: Export format -> (exporter name in qcell_nb.export, default file name).
EXPORT_FORMATS = {"mace": ("export_mace_extxyz", "dataset_mace.extxyz"),
                  "so3lr": ("export_so3lr_extxyz", "dataset_so3lr.extxyz"),
                  "spice": ("export_spice_hdf5", "dataset_spice.hdf5")}


@_user_errors_exit_2
def _cmd_export(args: argparse.Namespace) -> int:
    from .. import export

    run_dir = find_run(args.run, args.runs_dir)
    dataset = run_dir / "05_reference" / "dataset.db"
    if not dataset.exists():
        raise FileNotFoundError(f"{dataset} does not exist: run stage 05 first")
    function, default_name = EXPORT_FORMATS[args.format]
    target = args.out or str(run_dir / "05_reference" / default_name)
    getattr(export, function)(dataset, target)
    print(f"{args.format} export written: {target}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="qcell-nb", description="Run and inspect the QCell notebook pipeline.")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the pipeline (skips stages that are up to date)")
    run.add_argument("--profile", choices=sorted(PROFILES), default="smoke")
    run.add_argument("--run", help="run name (default: the profile name); results in runs/<run>/")
    run.add_argument("--stages", nargs="+", help="only these stages, e.g. 04 05 or 05_reference")
    run.add_argument("--set", action="append", metavar="[STAGE.]NAME=VALUE",
                     help="override a notebook parameter, e.g. --set 05.basis=def2-svp or --set seed=1")
    run.add_argument("--seed", type=int, default=0, help="run seed (all randomness derives from it)")
    run.add_argument("--force", action="store_true", help="re-run the chosen stages even if up to date")
    run.add_argument("--runs-dir", help="where runs live (default ./runs or $QCELL_NB_RUNS)")
    run.add_argument("--notebooks", help="notebook directory (default: the repository's notebooks/)")
    run.add_argument("-v", "--verbose", action="store_true", help="stream notebook output")
    run.set_defaults(func=_cmd_run)
    def on_a_run(name: str, summary: str) -> argparse.ArgumentParser:
        """A subcommand whose first argument names an existing run."""
        command = sub.add_parser(name, help=summary)
        command.add_argument("run", help="run name or path")
        command.add_argument("--runs-dir", help="where runs live (default ./runs or $QCELL_NB_RUNS)")
        return command

    status = on_a_run("status", "each stage's state, counts and time")
    status.set_defaults(func=_cmd_status)
    failures = on_a_run("failures", "list failed items with their error text")
    failures.add_argument("--stage", help="only this stage (default: all)")
    failures.set_defaults(func=_cmd_failures)
    retry = on_a_run("retry", "recompute the failed items of a stage in place")
    retry.add_argument("--stage", default="05_reference", help="stage whose failures to retry (default 05_reference)")
    retry.add_argument("--set", action="append", metavar="NAME=VALUE",
                       help=f"change how it runs: {', '.join(EXECUTION_PARAMETERS[1:4])} "
                            "(e.g. --set executor=tcp://host:8786)")
    retry.add_argument("--notebooks", help="notebook directory (default: the repository's notebooks/)")
    retry.add_argument("-v", "--verbose", action="store_true", help="stream notebook output")
    retry.set_defaults(func=_cmd_retry)
    report = on_a_run("report", "write report.md (tables, figures) and the validation notebook as HTML")
    report.set_defaults(func=_cmd_report)
    exporter = on_a_run("export", "export the labelled dataset for MACE, SO3LR or in SPICE's HDF5 layout")
    exporter.add_argument("--format", choices=sorted(EXPORT_FORMATS), required=True)
    exporter.add_argument("--out", help="output file (default: beside the dataset in 05_reference/)")
    exporter.set_defaults(func=_cmd_export)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
