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
from .parameters import RUN_PARAMETERS, declared_parameters, notebook_path, resolve_parameters
from .stages import STAGES, Stage, get_stage, runs_root

KERNEL = "python3"


def default_notebooks_dir() -> Path:
    """The repository's ``notebooks/`` (beside the package), or ``$QCELL_NB_NOTEBOOKS``."""
    env = os.environ.get("QCELL_NB_NOTEBOOKS")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2] / "notebooks"


@dataclass
class StageOutcome:
    stage: str
    action: str  # "up to date", "ran", "resumed", "failed"
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


def _supersede(stage_directory: Path, run_dir: Path) -> None:
    """Move an outdated stage directory aside instead of deleting it: nothing computed is lost."""
    if stage_directory.exists() and any(stage_directory.iterdir()):
        target = run_dir / ".superseded" / f"{stage_directory.name}-{time.strftime('%Y%m%d-%H%M%S')}"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(stage_directory), str(target))
        print(f"  outdated results moved to {target}", flush=True)


def run_stage(stage: Stage, run_dir: Path, parameters: dict[str, Any], notebooks_dir: Path,
              seed: int, force: bool = False, log_output: bool = False) -> StageOutcome:
    """Run one stage unless its manifest says it is complete for the same fingerprint."""
    start = time.time()
    source = notebook_path(stage, notebooks_dir)
    declared = declared_parameters(stage, notebooks_dir)
    injected = dict(parameters)
    run_values = {"run_dir": str(run_dir.resolve()), "seed": seed}
    injected.update({k: v for k, v in run_values.items() if k in declared})
    # run_dir is where, not what: it stays out of the fingerprint so a moved run stays up to date.
    identity = {k: v for k, v in injected.items() if k != "run_dir"}
    inputs = _input_digests(stage, run_dir)
    print_ = lambda text: print(text, flush=True)  # noqa: E731
    fp = mf.fingerprint(mf.notebook_digest(source), identity, inputs)
    stage_directory = run_dir / stage.name
    previous = mf.read_manifest(stage_directory)
    action = "ran"
    if previous is not None and previous.get("fingerprint") == fp and not force:
        if previous.get("status") == "complete":
            print_(f"[{stage.name}] up to date ({previous.get('seconds', 0):.1f} s when it ran)")
            return StageOutcome(stage.name, "up to date", time.time() - start)
        action = "resumed"  # interrupted or failed with the same inputs: keep what it computed
        print_(f"[{stage.name}] resuming an interrupted run (status was {previous.get('status')!r})")
    else:
        if previous is not None:
            reason = "forced" if force and previous.get("fingerprint") == fp else "inputs or parameters changed"
            print_(f"[{stage.name}] {reason}: recomputing")
            _supersede(stage_directory, run_dir)
        print_(f"[{stage.name}] running: {stage.title}")
    stage_directory.mkdir(parents=True, exist_ok=True)
    manifest = {
        "stage": stage.name, "title": stage.title, "notebook": stage.notebook,
        # Every parameter in effect (notebook defaults plus what was injected), for provenance.
        "status": "running", "fingerprint": fp, "parameters": {**declared, **injected},
        "input_digests": inputs, "packages": mf.package_versions(),
        "python": sys.version.split()[0], "started": mf.now(), "attempts": (previous or {}).get("attempts", 0) + 1
        if action == "resumed" else 1,
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
                            log_output=log_output)
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
