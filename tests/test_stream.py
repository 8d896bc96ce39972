"""``raymmi.run.stream``: the one bounded wait / cancel / re-raise loop over Ray tasks."""

from __future__ import annotations

import pytest

from raymmi.run import gather, stream
from raymmi.schema import RaymmiError


@pytest.fixture(scope="module")
def square(ray_session):
    @ray_session.remote(num_cpus=0.1)
    def square(x: int) -> int:
        if x < 0:
            raise RaymmiError(f"x={x} must be >= 0")
        return x * x

    return square


def test_stream_bounds_the_tasks_in_flight_and_yields_every_result(square):
    submitted, received, most = [], {}, 0

    def submit(x: int):
        nonlocal most
        # outstanding before this submission: the one just finished is not yielded yet
        most = max(most, len(submitted) - len(received))
        submitted.append(x)
        return square.remote(x)

    for item, value in stream(submit, range(10), max_in_flight=3, desc="test"):
        received[item] = value
    assert received == {x: x * x for x in range(10)} and most == 3


def test_stream_raises_the_tasks_own_error_and_submits_no_more(square):
    submitted = []

    def submit(x: int):
        submitted.append(x)
        return square.remote(x)

    with pytest.raises(RaymmiError, match="x=-1 must be >= 0"):
        list(stream(submit, [-1, 2, 3, 4, 5, 6], max_in_flight=1, desc="test"))
    assert submitted == [-1]


def test_gather_keeps_the_order(square):
    assert gather([square.remote(x) for x in (3, 1, 2)], desc="test") == [9, 1, 4]
