"""The run report: ``report.md`` with the tables and figure paths of a run, beside the validation notebook as HTML.

Everything in the report is read from the run directory (stage manifests, ``counts.json``, the
validation stage's ``metrics.json``, figures), so re-running the commands written at its top
regenerates every number.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..pipeline.manifest import read_manifest
from ..pipeline.stages import STAGES

REPORT_NAME = "report.md"
VALIDATION_STAGE = "07_validation"


def _markdown_table(rows: list[dict]) -> str:
    keys = list(dict.fromkeys(key for row in rows for key in row))
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row.get(key)) for key in keys) + " |")
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    return str(value).replace("|", "\\|")


def _section(name: str, value: Any) -> list[str]:
    """Markdown for one entry of metrics.json: a table for a list of records, a list for a mapping."""
    title = name.replace("_", " ")
    if isinstance(value, list) and value and all(isinstance(item, dict) for item in value):
        return [f"### {title}", "", _markdown_table(value), ""]
    if isinstance(value, dict):
        if value and all(isinstance(item, dict) for item in value.values()):
            rows = [{"": key, **item} for key, item in value.items()]
            return [f"### {title}", "", _markdown_table(rows), ""]
        return [f"### {title}", ""] + [f"- {key}: {_cell(item)}" for key, item in value.items()] + [""]
    if isinstance(value, list) and not value:
        return [f"### {title}", "", "(none)", ""]
    return [f"- {title}: {_cell(value)}", ""]


def _render_html(notebook: Path) -> Path | None:
    try:
        import nbformat
        from nbconvert import HTMLExporter
    except ImportError as exc:
        print(f"HTML rendering skipped: nbconvert is not installed ({exc})")
        return None
    body, _ = HTMLExporter().from_notebook_node(nbformat.read(notebook, as_version=4))
    target = notebook.with_suffix(".html")
    target.write_text(body, encoding="utf-8")
    return target


def _mlmm_section(run_dir: Path) -> list[str]:
    """Markdown for stage 06's ML/MM test errors (``mlmm_metrics.json``), if that part ran."""
    path = run_dir / "06_training" / "mlmm_metrics.json"
    if not path.exists():
        return []
    metrics = json.loads(path.read_text())
    lines = ["## ML/MM", "", f"From `{path.relative_to(run_dir)}`: {metrics.get('n_train', 0)} training and "
             f"{metrics.get('n_test', 0)} test structures (whole frames held out).", ""]
    if "note" in metrics:
        return lines + [metrics["note"], ""]
    rows = [{"predictor": name, **metrics[name]} for name in ("model", "mean_predictor") if name in metrics]
    return lines + [_markdown_table(rows), ""]


def _validation_command(run_dir: Path) -> str:
    """The command that recomputes stage 07 with the profile, seed and overrides it ran with."""
    from ..pipeline.runner import rerun_command

    if read_manifest(run_dir / VALIDATION_STAGE) is None:
        return f"qcell-nb run --run {run_dir.name} --runs-dir {run_dir.parent} --stages {VALIDATION_STAGE}"
    return rerun_command(run_dir, VALIDATION_STAGE)


def write_report(run_dir: str | os.PathLike) -> Path:
    """Write ``<run_dir>/report.md`` (and the validation notebook as HTML) and return the report's path.

    Raises:
        FileNotFoundError: when ``run_dir`` holds no stage that has run.
    """
    run_dir = Path(run_dir)
    manifests = {stage.name: read_manifest(run_dir / stage.name) for stage in STAGES}
    if not any(manifests.values()):
        raise FileNotFoundError(f"run directory {run_dir}: no stage has run there (no manifest.json found)")
    lines = [f"# QCell-nb run report: {run_dir.name}", "",
             "Every number below is read from this run directory. To recompute the validation and this report:", "",
             "```",
             _validation_command(run_dir),
             f"qcell-nb report {run_dir.name} --runs-dir {run_dir.parent}",
             "```", "", "## Stages", ""]
    rows = []
    for stage in STAGES:
        manifest = manifests[stage.name]
        if manifest is None:
            rows.append({"stage": stage.name, "status": "not run"})
            continue
        rows.append({"stage": stage.name, "status": manifest.get("status"),
                     "seconds": round(float(manifest.get("seconds") or 0.0), 1),
                     "counts": manifest.get("counts", {})})
    lines += [_markdown_table(rows), ""]

    metrics_path = run_dir / VALIDATION_STAGE / "metrics.json"
    if metrics_path.exists():
        lines += ["## Validation", "", f"From `{metrics_path.relative_to(run_dir)}`.", ""]
        for name, value in json.loads(metrics_path.read_text()).items():
            lines += _section(name, value)

    lines += _mlmm_section(run_dir)

    figures = sorted(p for stage in STAGES for p in (run_dir / stage.name).glob("*.png"))
    if figures:
        lines += ["## Figures", ""]
        for figure in figures:
            relative = figure.relative_to(run_dir)
            lines += [f"![{relative}]({relative})", ""]

    executed = run_dir / VALIDATION_STAGE / f"{VALIDATION_STAGE}.ipynb"
    if executed.exists():
        html = _render_html(executed)
        if html is not None:
            lines += ["## Executed notebook", "", f"[{html.relative_to(run_dir)}]({html.relative_to(run_dir)})", ""]
    report = run_dir / REPORT_NAME
    report.write_text("\n".join(lines), encoding="utf-8")
    return report
