"""The pipeline: ordered stages, run directories, manifests, papermill runner, command line."""

from .items import collect, collect_classes, record_failures
from .manifest import read_counts, read_manifest, record_counts
from .parameters import PROFILES, ParameterError, parse_overrides, resolve_parameters
from .runner import run_pipeline, run_stage, run_status
from .stages import STAGE_NAMES, STAGES, Stage, get_stage, stage_dir

__all__ = ["PROFILES", "ParameterError", "STAGES", "STAGE_NAMES", "Stage", "collect", "collect_classes", "get_stage", "parse_overrides",
           "read_counts", "read_manifest", "record_counts", "record_failures", "resolve_parameters", "run_pipeline",
           "run_stage", "run_status", "stage_dir"]
