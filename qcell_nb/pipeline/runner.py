"""Execute the stage notebooks of a run with papermill, skipping what is up to date."""

from __future__ import annotations

import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import papermill

from . import manifest as mf
from ..store import clear_failures, read_failures
from .parameters import RUN_PARAMETERS, declared_parameters, notebook_path, resolve_parameters
from .stages import STAGES, Stage, get_stage, runs_root

KERNEL = "python3"

#: Parameters that say where and how a stage runs, not what it computes: they stay out of the
#: fingerprint, so moving a run or switching from a local cluster to SLURM recomputes nothing.
#: ``reuse_from`` names an earlier directory of the stage whose results for unchanged items may be
#: copied; the stage checks they were made with the same settings, so it changes no result either.
EXECUTION_PARAMETERS = ("run_dir", "executor", "n_workers", "threads_per_worker", "retries", "progress",
                        "reuse_from")

#: Failure tables a stage leaves beside its datasets (see :class:`qcell_nb.store.Dataset`).
FAILURE_TABLES = "*.failures.jsonl"


def default_notebooks_dir() -> Path:
    """The repository's ``notebooks/`` (beside the package), or ``$QCELL_NB_NOTEBOOKS``."""
    env = os.environ.get("QCELL_NB_NOTEBOOKS")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2] / "notebooks"


@dataclass
class StageOutcome:
    stage: str
    action: str  # "up to date", "ran", "resumed", "retried", "failed", "nothing to retry"
    seconds: float
    message: str = ""


def _input_digests(stage: Stage, run_dir: Path) -> dict[str, str]:
    digests = {}
    for name in stage.inputs:
        upstream = get_stage(name)
        upstream_dir = run_dir / upstream.name
        manifest = mf.read_manifest(upstream_dir)
        if manifest is None or manifest.get("status") != "complete":
            raise RuntimeError(f"stage {stage.name} needs {upstream.name}, which is not complete in "
                               f"{run_dir}; run it first (or include it in --stages)")
        digests[name] = mf.outputs_digest(upstream_dir, upstream.outputs)
    return digests


def _supersede(stage_directory: Path, run_dir: Path) -> Path | None:
    """Move an outdated stage directory aside instead of deleting it: nothing computed is lost.

    Returns where it went (None if there was nothing to move).
    """
    if stage_directory.exists() and any(stage_directory.iterdir()):
        target = run_dir / ".superseded" / f"{stage_directory.name}-{time.strftime('%Y%m%d-%H%M%S')}"
        while target.exists():  # two supersessions within a second
            target = target.with_name(target.name + "+")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(stage_directory), str(target))
        print(f"  outdated results moved to {target}", flush=True)
        return target
    return None


def _stage_fingerprint(stage: Stage, run_dir: Path, parameters: dict[str, Any], notebooks_dir: Path,
                       seed: int) -> tuple[str, str, dict[str, Any], dict[str, Any], dict[str, str]]:
    """(fingerprint, settings fingerprint, injected parameters, declared defaults, input digests).

    The settings fingerprint covers what the stage computes apart from its inputs (its notebook
    and the parameters that matter); the fingerprint adds the input digests.
    """
    notebook = mf.notebook_digest(notebook_path(stage, notebooks_dir))
    declared = declared_parameters(stage, notebooks_dir)
    injected = dict(parameters)
    run_values = {"run_dir": str(run_dir.resolve()), "seed": seed}
    injected.update({k: v for k, v in run_values.items() if k in declared})
    identity = {k: v for k, v in injected.items() if k not in EXECUTION_PARAMETERS}
    inputs = _input_digests(stage, run_dir)
    return (mf.fingerprint(notebook, identity, inputs), mf.fingerprint(notebook, identity, {}), injected, declared,
            inputs)


def run_stage(stage: Stage, run_dir: Path, parameters: dict[str, Any], notebooks_dir: Path,
              seed: int, force: bool = False, log_output: bool = False, retry: bool = False,
              profile: str | None = None) -> StageOutcome:
    """Run one stage unless its manifest says it is complete for the same fingerprint.

    With ``retry`` a stage that ran with the same fingerprint runs again in
    place even if complete: its notebook computes only what is missing
    (the items that failed); nothing is superseded. A stage whose inputs or
    parameters changed cannot be retried (``RuntimeError``). ``profile`` (the
    profile the parameters came from) and ``seed`` are recorded in the manifest,
    so that the command that recomputes the stage can be written from it.
    """
    start = time.time()
    source = notebook_path(stage, notebooks_dir)
    fp, settings, injected, declared, inputs = _stage_fingerprint(stage, run_dir, parameters, notebooks_dir, seed)
    print_ = lambda text: print(text, flush=True)  # noqa: E731
    stage_directory = run_dir / stage.name
    previous = mf.read_manifest(stage_directory)
    action = "ran"
    if retry:
        if previous is None or previous.get("fingerprint") != fp:
            raise RuntimeError(f"stage {stage.name} in {run_dir} cannot be retried: "
                               + ("it has not run" if previous is None else
                                  "its notebook, parameters or inputs changed since it ran")
                               + "; use 'qcell-nb run' to (re)compute it")
        action = "retried"
        print_(f"[{stage.name}] retrying in place (status was {previous.get('status')!r})")
    elif previous is not None and previous.get("fingerprint") == fp and not force:
        if previous.get("status") == "complete":
            print_(f"[{stage.name}] up to date ({previous.get('seconds', 0):.1f} s when it ran)")
            return StageOutcome(stage.name, "up to date", time.time() - start)
        action = "resumed"  # interrupted or failed with the same inputs: keep what it computed
        print_(f"[{stage.name}] resuming an interrupted run (status was {previous.get('status')!r})")
    else:
        if previous is not None:
            reason = "forced" if force and previous.get("fingerprint") == fp else "inputs or parameters changed"
            print_(f"[{stage.name}] {reason}: recomputing")
            moved = _supersede(stage_directory, run_dir)
            # Only the inputs changed: a stage that can reuse results per item (04's relaxations,
            # 05's labels, keyed by structure id) copies those of the unchanged items.
            if (moved is not None and not force and "reuse_from" in declared and not injected.get("reuse_from")
                    and previous.get("settings_fingerprint") == settings):
                injected["reuse_from"] = str(moved.resolve())
                print_(f"[{stage.name}] same settings, new inputs: results of unchanged items are reused from {moved}")
        print_(f"[{stage.name}] running: {stage.title}")
    stage_directory.mkdir(parents=True, exist_ok=True)
    manifest = {
        "stage": stage.name, "title": stage.title, "notebook": stage.notebook,
        # Every parameter in effect (notebook defaults plus what was injected), for provenance.
        "status": "running", "fingerprint": fp, "settings_fingerprint": settings,
        "parameters": {**declared, **injected},
        # What was injected, so that a retry runs the notebook exactly as before.
        "injected": {k: v for k, v in injected.items() if k != "run_dir"},
        "profile": profile if profile is not None else (previous or {}).get("profile"), "seed": seed,
        "input_digests": inputs, "packages": mf.package_versions(),
        "python": sys.version.split()[0], "started": mf.now(), "attempts": (previous or {}).get("attempts", 0) + 1
        if action in ("resumed", "retried") else 1,
    }
    mf.write_manifest(stage_directory, manifest)
    executed = stage_directory / stage.notebook
    try:
        papermill.execute_notebook(str(source), str(executed), parameters=injected, kernel_name=KERNEL,
                                   cwd=str(stage_directory), progress_bar=False, log_output=log_output)
    except Exception as exc:  # noqa: BLE001 - record, then report to the caller
        seconds = time.time() - start
        manifest.update(status="failed", finished=mf.now(), seconds=seconds,
                        counts=mf.read_counts(stage_directory), error=f"{type(exc).__name__}: {exc}"[:4000])
        mf.write_manifest(stage_directory, manifest)
        print_(f"[{stage.name}] FAILED after {seconds:.1f} s; executed notebook: {executed}")
        return StageOutcome(stage.name, "failed", seconds, manifest["error"])
    seconds = time.time() - start
    manifest.update(status="complete", finished=mf.now(), seconds=seconds, counts=mf.read_counts(stage_directory),
                    output_digest=mf.outputs_digest(stage_directory, stage.outputs))
    mf.write_manifest(stage_directory, manifest)
    counts = ", ".join(f"{k}={v}" for k, v in manifest["counts"].items())
    print_(f"[{stage.name}] complete in {seconds:.1f} s{'; ' + counts if counts else ''}")
    return StageOutcome(stage.name, action, seconds)


def run_pipeline(profile: str = "smoke", run: str | None = None, stages: list[str] | None = None,
                 overrides: dict[str | None, dict[str, Any]] | None = None, seed: int = 0,
                 force: bool = False, notebooks_dir: str | os.PathLike | None = None,
                 runs_dir: str | os.PathLike | None = None, log_output: bool = False) -> list[StageOutcome]:
    """Run the pipeline (or the chosen stages, in pipeline order) for one run.

    Parameters are resolved and validated for every stage before any runs.
    Stops at the first failed stage, since later stages read its outputs.
    """
    notebooks = Path(notebooks_dir) if notebooks_dir else default_notebooks_dir()
    chosen = tuple(STAGES) if not stages else tuple(s for s in STAGES if s.name in
                                                    {get_stage(name).name for name in stages})
    resolved = resolve_parameters(profile, overrides or {}, notebooks, chosen)
    run_dir = Path(runs_dir or runs_root()) / (run or profile)
    run_dir.mkdir(parents=True, exist_ok=True)
    print(f"run {run_dir} (profile {profile}, seed {seed})", flush=True)
    outcomes = []
    for stage in chosen:
        outcome = run_stage(stage, run_dir, resolved[stage.name], notebooks, seed, force=force,
                            log_output=log_output, profile=profile)
        outcomes.append(outcome)
        if outcome.action == "failed":
            break
    return outcomes


def run_status(run_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """One entry per stage: name, status, counts, seconds, finished time."""
    rows = []
    for stage in STAGES:
        manifest = mf.read_manifest(Path(run_dir) / stage.name) or {}
        rows.append({"stage": stage.name, "status": manifest.get("status", "not run"),
                     "counts": manifest.get("counts", {}), "seconds": manifest.get("seconds"),
                     "finished": manifest.get("finished")})
    return rows


def find_run(run: str | os.PathLike, runs_dir: str | os.PathLike | None = None) -> Path:
    """A run directory given as a path or a name under ``runs_dir`` (default :func:`runs_root`)."""
    path = Path(run)
    if path.is_dir():
        return path
    named = Path(runs_dir or runs_root()) / str(run)
    if named.is_dir():
        return named
    raise FileNotFoundError(f"no run {str(run)!r} (looked in {path} and {named})")


def stage_failures(run_dir: str | os.PathLike, stages: list[str] | None = None) -> list[dict[str, Any]]:
    """Unresolved failed items of a run, in stage order.

    Each entry is a failure-table entry (``sid``, ``name``, ``stage``,
    ``error``, ``time``) plus ``table``, the failure file it came from.
    Nothing is opened for writing.
    """
    chosen = STAGES if not stages else tuple(get_stage(name) for name in stages)
    found = []
    for stage in chosen:
        for table in sorted((Path(run_dir) / stage.name).glob(FAILURE_TABLES)):
            found.extend({**entry, "stage": entry.get("stage", stage.name), "table": str(table)}
                         for entry in read_failures(table))
    return found


def retry_failures(run_dir: str | os.PathLike, stage: str = "05_reference",
                   notebooks_dir: str | os.PathLike | None = None,
                   execution: dict[str, Any] | None = None, log_output: bool = False) -> StageOutcome:
    """Recompute the failed items of one stage, in place.

    Clears the stage's recorded failures and runs its notebook again with
    the parameters it ran with (from its manifest), so that exactly the items
    missing from its dataset are computed; rows already there are not
    touched. ``execution`` may change how it runs (``executor``,
    ``n_workers``, ``retries``: see :data:`EXECUTION_PARAMETERS`), never what
    it computes. Items that fail again are recorded again. Later stages read
    the grown dataset and are recomputed by the next ``qcell-nb run``.

    Raises
    ------
    RuntimeError
        If the stage has not run, or its notebook, parameters or inputs
        changed since (then ``qcell-nb run`` is what recomputes it).
    ValueError
        For an ``execution`` parameter that is not one, or that the stage lacks.
    """
    run_dir = Path(run_dir)
    target = get_stage(stage)
    notebooks = Path(notebooks_dir) if notebooks_dir else default_notebooks_dir()
    manifest = mf.read_manifest(run_dir / target.name)
    if manifest is None:
        raise RuntimeError(f"stage {target.name} has not run in {run_dir}: nothing to retry")
    failed = stage_failures(run_dir, [target.name])
    if not failed:
        print(f"[{target.name}] no failed items recorded: nothing to retry", flush=True)
        return StageOutcome(target.name, "nothing to retry", 0.0)
    parameters = dict(manifest.get("injected", _injected_from(manifest, target, notebooks)))
    seed = int(parameters.pop("seed", manifest.get("parameters", {}).get("seed", 0)) or 0)
    for name, value in (execution or {}).items():
        if name not in EXECUTION_PARAMETERS or name == "run_dir":
            raise ValueError(f"retry can change how stage {target.name} runs ({', '.join(EXECUTION_PARAMETERS[1:])}), "
                             f"not {name!r}; change it with 'qcell-nb run --set'")
    if execution:
        resolve_parameters("smoke", {target.name: dict(execution)}, notebooks, (target,))  # names and types
        parameters.update(execution)
    # Check before clearing anything: a stage that changed is recomputed by run, not retried.
    fp = _stage_fingerprint(target, run_dir, parameters, notebooks, seed)[0]
    if manifest.get("fingerprint") != fp:
        raise RuntimeError(f"stage {target.name} in {run_dir} cannot be retried: its notebook, parameters or "
                           "inputs changed since it ran; use 'qcell-nb run' to recompute it")
    tables = sorted({entry["table"] for entry in failed})
    cleared = sum(len(clear_failures(table)) for table in tables)
    print(f"[{target.name}] {cleared} failed item(s) cleared for a retry", flush=True)
    outcome = run_stage(target, run_dir, parameters, notebooks, seed, log_output=log_output, retry=True)
    left = stage_failures(run_dir, [target.name])
    outcome.message = f"{cleared} retried, {len(left)} still failing"
    print(f"[{target.name}] {outcome.message}", flush=True)
    return outcome


def rerun_command(run_dir: str | os.PathLike, stage: str, notebooks_dir: str | os.PathLike | None = None) -> str:
    """The ``qcell-nb run`` command that recomputes ``stage`` of a run exactly as it last ran.

    Built from the stage's manifest: its profile and seed, and a ``--set`` for every parameter it
    ran with that differs from that profile's value (command-line overrides), execution settings
    excepted. A manifest without a profile (written before profiles were recorded) gives
    ``smoke``'s command with every injected parameter spelled out.
    """
    import shlex

    run_dir = Path(run_dir)
    target = get_stage(stage)
    manifest = mf.read_manifest(run_dir / target.name)
    if manifest is None:
        raise FileNotFoundError(f"stage {target.name} has not run in {run_dir}")
    notebooks = Path(notebooks_dir) if notebooks_dir else default_notebooks_dir()
    profile = manifest.get("profile") or "smoke"
    seed = int(manifest.get("seed", manifest.get("parameters", {}).get("seed", 0)) or 0)
    from_profile = resolve_parameters(profile, {}, notebooks, (target,))[target.name] if manifest.get("profile") else {}
    declared = declared_parameters(target, notebooks)
    sets = [f"{target.name}.{name}={value!r}" for name, value in sorted(manifest.get("injected", {}).items())
            if name not in EXECUTION_PARAMETERS and name != "seed"
            and value != from_profile.get(name, declared.get(name, object()))]
    words = ["qcell-nb", "run", "--profile", profile, "--run", run_dir.name, "--runs-dir", str(run_dir.parent),
             "--seed", str(seed), "--stages", target.name, "--force"]
    for item in sets:
        words += ["--set", item]
    return shlex.join(words)


def _injected_from(manifest: dict[str, Any], stage: Stage, notebooks: Path) -> dict[str, Any]:
    """For manifests written before ``injected`` was recorded: the values that differ from the defaults."""
    declared = declared_parameters(stage, notebooks)
    return {k: v for k, v in manifest.get("parameters", {}).items()
            if k != "run_dir" and (k in RUN_PARAMETERS or declared.get(k, object()) != v)}
