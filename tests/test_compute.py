import math
import sys

import pytest

from qcell_nb.compute import ExecutorSpec, map_items, parse_executor, slurm_cluster


@pytest.mark.parametrize("executor", ["serial", "local"])
def test_failures_are_recorded_and_the_rest_goes_on(executor):
    results, failures = {}, {}
    summary = map_items(math.sqrt, [4.0, -1.0, 9.0], ["a", "b", "c"], on_result=results.__setitem__,
                        on_failure=failures.__setitem__, executor=executor, n_workers=2, retries=0,
                        progress=False)
    assert results == {"a": 2.0, "c": 3.0}
    assert list(failures) == ["b"] and "math domain error" in failures["b"]
    assert summary.succeeded == 2 and summary.submitted == 3


def test_bad_executor_and_keys_are_named():
    with pytest.raises(ValueError, match="'nowhere'"):
        map_items(math.sqrt, [1.0], ["a"], on_result=print, on_failure=print, executor="nowhere",
                  progress=False)
    with pytest.raises(ValueError, match="not unique"):
        map_items(math.sqrt, [1.0, 2.0], ["a", "a"], on_result=print, on_failure=print, progress=False)


def test_executor_specs_parse_with_their_options():
    assert parse_executor("serial") == ExecutorSpec("serial")
    assert parse_executor("tcp://10.0.0.5:8786") == ExecutorSpec("address", "tcp://10.0.0.5:8786")
    assert parse_executor("local:memory_limit=4GB,n_workers=3").options == {"memory_limit": "4GB", "n_workers": 3}
    spec = parse_executor("slurm:cores=8,memory=16GB,queue=short,walltime=02:00:00,"
                          "job_extra_directives=['--gres=gpu:1', '--constraint=a100']")
    assert spec.kind == "slurm"
    assert spec.options == {"cores": 8, "memory": "16GB", "queue": "short", "walltime": "02:00:00",
                            "job_extra_directives": ["--gres=gpu:1", "--constraint=a100"]}
    assert parse_executor({"kind": "slurm", "cores": 4}) == ExecutorSpec("slurm", None, {"cores": 4})
    assert parse_executor({"kind": "address", "address": "tcp://h:1"}).address == "tcp://h:1"


@pytest.mark.parametrize("spec, problem", [
    ("pbs", "'pbs'"), ("slurm:cores", "'cores' is not name=value"), ("serial:n=1", "takes no options"),
    ({"cores": 8}, "needs a 'kind'"), ({"kind": "address"}, "needs an 'address'"), (8, "neither"),
])
def test_bad_executor_specs_are_named(spec, problem):
    with pytest.raises(ValueError, match=problem):
        parse_executor(spec)


def test_slurm_job_script_requests_the_resources_without_submitting():
    spec = parse_executor("slurm:cores=8,processes=2,memory=16GB,queue=short,account=qcell,walltime=02:00:00,"
                          "job_extra_directives=['--gres=gpu:1'],scheduler_options={'dashboard_address': ':0'}")
    cluster = slurm_cluster(spec.options)
    try:
        script = cluster.job_script()
        assert cluster.workers == {}  # nothing submitted
    finally:
        cluster.close()
    for line in ("#SBATCH -p short", "#SBATCH -A qcell", "#SBATCH --cpus-per-task=8", "#SBATCH --mem=15G",
                 "#SBATCH -t 02:00:00", "#SBATCH --gres=gpu:1"):
        assert line in script, line
    assert "--nworkers 2" in script and "--nthreads 4" in script and sys.executable in script


@pytest.mark.parametrize("options, lines", [
    ({}, ["#SBATCH --cpus-per-task=1", "#SBATCH --mem=4G", "--nthreads 1"]),
    # Given cores alone: one single-threaded worker per core, as on a local cluster.
    ({"cores": 8, "memory": "32GB"}, ["#SBATCH --cpus-per-task=8", "#SBATCH --mem=30G", "--nthreads 1",
                                      "--nworkers 8"]),
])
def test_slurm_defaults_fill_what_neither_call_nor_config_give(options, lines):
    cluster = slurm_cluster({**options, "scheduler_options": {"dashboard_address": ":0"}})
    try:
        script = cluster.job_script()
    finally:
        cluster.close()
    for line in lines:
        assert line in script, (line, script)


def test_serial_retries_a_transient_error():
    attempts = []

    def flaky(x):
        attempts.append(x)
        if attempts.count(x) == 1:
            raise OSError(f"transient failure for {x}")
        return x * 2

    results, failures = {}, {}
    map_items(flaky, [1, 2], ["a", "b"], on_result=results.__setitem__, on_failure=failures.__setitem__,
              executor="serial", retries=1, progress=False)
    assert results == {"a": 2, "b": 4} and failures == {}
    failures.clear()
    map_items(flaky, [3], ["c"], on_result=results.__setitem__, on_failure=failures.__setitem__,
              executor="serial", retries=0, progress=False)
    assert "OSError: transient failure for 3" in failures["c"]


def test_local_cluster_reports_its_dashboard(capsys):
    results = {}
    summary = map_items(math.sqrt, [4.0], ["a"], on_result=results.__setitem__, on_failure=print,
                        executor="local", n_workers=1, progress=False)
    assert results == {"a": 2.0}
    assert summary.dashboard and summary.dashboard.startswith("http")
    assert f"Dask dashboard: {summary.dashboard}" in capsys.readouterr().out
