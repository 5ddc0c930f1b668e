"""Time each stage of a fresh smoke run; write bench/results/pipeline_smoke.json.

Machines here are noisy, so every stage time is also given as a ratio to a
calibration measured in the same run: a PBE0/sto-3g single point of water
through the same labelling code (its median over a few repeats).

    .venv/bin/python bench/pipeline_smoke.py [--runs-dir DIR] [--profile smoke]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

from ase.build import molecule

from qcell_nb.pipeline import STAGES, read_manifest, run_pipeline
from qcell_nb.pipeline.manifest import package_versions


def calibration_seconds(repeats: int = 3) -> float:
    from qcell_nb.calculators.pbe0 import label_structure

    water = molecule("H2O")
    label_structure(water, basis="sto-3g")  # warm-up: imports, JIT compilation, free-atom cache
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        label_structure(water, basis="sto-3g")
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs-dir", help="where the benchmark run goes (default: a temporary directory)")
    parser.add_argument("--profile", default="smoke")
    parser.add_argument("--output", default=str(Path(__file__).parent / "results" / "pipeline_smoke.json"))
    args = parser.parse_args()
    runs_dir = Path(args.runs_dir or tempfile.mkdtemp(prefix="qcell-bench-"))
    calibration = calibration_seconds()
    start = time.perf_counter()
    outcomes = run_pipeline(profile=args.profile, run="bench", runs_dir=runs_dir, force=True)
    total = time.perf_counter() - start
    stages = {}
    for stage in STAGES:
        manifest = read_manifest(runs_dir / "bench" / stage.name) or {}
        seconds = manifest.get("seconds")
        stages[stage.name] = {"status": manifest.get("status", "not run"), "seconds": seconds,
                              "per_calibration": seconds / calibration if seconds else None,
                              "counts": manifest.get("counts", {})}
    result = {"profile": args.profile, "total_seconds": total, "calibration_seconds": calibration,
              "calibration": "median PBE0+MBD/sto-3g label of water (same run)",
              "stages": stages, "failed": [o.stage for o in outcomes if o.action == "failed"],
              "machine": {"cpus": __import__("os").cpu_count(), "platform": platform.platform()},
              "packages": package_versions()}
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(result, indent=2))
    print(f"{'stage':<20} {'seconds':>8} {'x calib':>8}")
    for name, entry in stages.items():
        if entry["seconds"] is not None:
            print(f"{name:<20} {entry['seconds']:8.1f} {entry['per_calibration']:8.0f}")
    print(f"total {total:.1f} s; calibration {calibration:.2f} s; written {args.output}")


if __name__ == "__main__":
    main()
