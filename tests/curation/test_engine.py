import os

import pytest

from lvdm.curation.engine import Failure, LocalEngine, RayEngine, failed, make_engine


def square_or_fail(x):
    if x == 3:
        raise ValueError("three is bad\nsecond line")
    return {"x": x, "square": x * x}


def die_on_five(x):
    if x == 5:
        os._exit(1)  # a worker killed mid-item (a segfaulting decoder, the OOM killer)
    return x + 100


class Counter:
    """A stateful callable: state built on a worker survives between that worker's items."""

    def __init__(self):
        self.calls = 0

    def __call__(self, x):
        self.calls += 1
        return (x, self.calls)


def expected(items):
    return [square_or_fail(x) if x != 3 else None for x in items]


def check(results, items):
    assert len(results) == len(items)
    for x, r in zip(items, results):
        if x == 3:
            assert failed(r) and r.error == "ValueError: three is bad" and "Traceback" in r.details
        else:
            assert r == {"x": x, "square": x * x}


@pytest.mark.parametrize("workers", [0, 2])
def test_local_engine_in_order_with_per_item_failures(workers):
    items = list(range(10))
    check(LocalEngine(workers=workers, progress=False).map(square_or_fail, items), items)


def test_local_engine_survives_a_dying_worker():
    items = list(range(8))
    results = LocalEngine(workers=2, progress=False).map(die_on_five, items)
    assert results[:5] == [100, 101, 102, 103, 104] and results[6:] == [106, 107]
    assert isinstance(results[5], Failure) and results[5].error.startswith("WorkerDied")


def test_local_engine_keeps_callable_state_per_worker():
    results = LocalEngine(workers=0, progress=False).map(Counter(), [7, 8, 9])
    assert results == [(7, 1), (8, 2), (9, 3)]


def test_make_engine_rejects_bad_options():
    with pytest.raises(ValueError, match="unknown engine"):
        make_engine("spark")
    with pytest.raises(ValueError, match="ray_address"):
        make_engine("local", ray_address="auto")
    assert make_engine("local", workers=3).workers == 3
    assert make_engine("local").map(square_or_fail, []) == []


def test_ray_engine_matches_local(local_ray):
    items = list(range(13))
    ray_results = RayEngine(progress=False, batch_size=4).map(square_or_fail, items)
    check(ray_results, items)
    assert ray_results == LocalEngine(workers=2, progress=False).map(square_or_fail, items)
    assert RayEngine(progress=False).map(square_or_fail, []) == []
