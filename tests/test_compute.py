import math

import pytest

from qcell_nb.compute import map_items


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
