"""The log-bucket latency histogram against numpy's exact quantiles."""

from __future__ import annotations

import math
from collections.abc import Callable

import msgspec
import numpy as np
import numpy.typing as npt
import pytest

from edgeops.core.latency import LogHistogram, merge_wire
from edgeops.core.wire import LatencyHistogram

QS = (0.0, 0.001, 0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 0.999, 1.0)
Draw = Callable[[np.random.Generator, int], npt.NDArray[np.float64]]
DISTRIBUTIONS: dict[str, Draw] = {
    "lognormal": lambda rng, n: rng.lognormal(mean=1.0, sigma=1.2, size=n),
    "uniform": lambda rng, n: rng.uniform(0.05, 250.0, size=n),
    # a fast path and a slow one (a cache miss, a cold start), 100x apart
    "bimodal": lambda rng, n: np.where(
        rng.random(n) < 0.9, rng.normal(2.0, 0.2, n), rng.normal(200.0, 30.0, n)
    ).clip(0.01),
}


def assert_within(h: LogHistogram, data: npt.NDArray[np.float64], slack: float = 1e-9) -> None:
    """Every quantile within the relative accuracy of the exact one of the same rank."""
    for q in QS:
        exact = float(np.quantile(data, q, method="lower"))
        got = h.quantile(q)
        assert got is not None
        assert abs(got - exact) <= h.relative_accuracy * exact * (1 + slack), (q, got, exact)


@pytest.mark.parametrize("accuracy", [0.01, 0.02, 0.05])
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("kind", sorted(DISTRIBUTIONS))
def test_quantiles_within_relative_accuracy(kind: str, seed: int, accuracy: float) -> None:
    data = DISTRIBUTIONS[kind](np.random.default_rng(seed), 20_000)
    h = LogHistogram(accuracy)
    h.add(data)
    assert_within(h, data)
    assert h.count == data.size and h.sum == pytest.approx(data.sum(), rel=1e-12)
    assert h.min == data.min() and h.max == data.max()
    assert h.mean == pytest.approx(data.mean(), rel=1e-12)
    assert h.quantile(0) == data.min() and h.quantile(1) == data.max()


def test_small_samples_and_the_rank_convention() -> None:
    h = LogHistogram()
    for v in (5.0, 1.0, 3.0, 2.0):
        h.add(v)
    # rank floor(q * (n - 1)) of the sorted values [1, 2, 3, 5]
    for q, exact in [(0.0, 1.0), (0.33, 1.0), (0.34, 2.0), (0.5, 2.0), (0.99, 3.0), (1.0, 5.0)]:
        got = h.quantile(q)
        assert got is not None and abs(got - exact) <= 0.01 * exact, (q, got)


def test_scalar_path_matches_the_vector_path() -> None:
    data = DISTRIBUTIONS["lognormal"](np.random.default_rng(3), 5_000)
    one, many = LogHistogram(), LogHistogram()
    for v in data.tolist():
        one.add(v)
    many.add(data)
    assert one.count == many.count and one.min == many.min and one.max == many.max
    assert one.sum == pytest.approx(many.sum, rel=1e-12)
    # math.log and np.log may round a value on a bucket boundary into either neighbour
    moved = sum(abs(one.buckets.get(k, 0) - c) for k, c in many.buckets.items())
    assert moved <= 2
    assert_within(one, data)


def test_ints_numpy_scalars_and_lists() -> None:
    h = LogHistogram()
    h.add(3)
    h.add(np.float64(4.5))
    h.add(np.float32(2.0))
    h.add([1.0, 7.25])
    h.add(np.array([[8.0], [9.0]]))
    h.add([])
    assert h.count == 7 and h.sum == pytest.approx(34.75)
    assert (h.min, h.max) == (1.0, 9.0)


def test_zero_bucket_holds_values_at_or_below_min_value() -> None:
    h = LogHistogram(min_value=1e-3)
    h.add([0.0, 1e-4, 1e-3, 5.0, 6.0])
    wire = h.to_wire()
    assert wire.zero == 3 and sum(wire.buckets.values()) == 2
    assert h.quantile(0.0) == 0.0 and h.quantile(0.5) == 0.0  # the exact min: within min_value
    got = h.quantile(1.0)
    assert got == 6.0


@pytest.mark.parametrize("bad", [-1.0, math.nan, math.inf, [1.0, math.nan], [2.0, -0.5]])
def test_bad_values_are_refused_and_not_counted(bad: float | list[float]) -> None:
    h = LogHistogram()
    h.add(1.0)
    with pytest.raises(ValueError):
        h.add(bad)
    assert h.count == 1 and h.to_wire().buckets == LogHistogram.from_wire(h.to_wire()).buckets


def test_empty_histogram_and_bad_arguments() -> None:
    h = LogHistogram()
    assert h.count == 0 and h.quantile(0.5) is None
    assert h.min is None and h.max is None and h.mean is None
    with pytest.raises(ValueError):
        h.quantile(1.5)
    for accuracy in (0.0, 1.0, -0.1):
        with pytest.raises(ValueError):
            LogHistogram(accuracy)
    with pytest.raises(ValueError):
        LogHistogram(min_value=0.0)


def test_merge_equals_adding_everything() -> None:
    rng = np.random.default_rng(4)
    parts = [
        DISTRIBUTIONS[k](rng, n)
        for k, n in [("bimodal", 3000), ("lognormal", 10), ("uniform", 700)]
    ]
    whole = LogHistogram()
    whole.add(np.concatenate(parts))
    merged = LogHistogram()
    for p in parts:
        one = LogHistogram()
        one.add(p)
        merged.merge(one)
    assert merged.buckets == whole.buckets
    assert merged.to_wire().zero == whole.to_wire().zero
    assert (merged.count, merged.min, merged.max) == (whole.count, whole.min, whole.max)
    assert merged.sum == pytest.approx(whole.sum, rel=1e-12)
    assert all(merged.quantile(q) == whole.quantile(q) for q in QS)
    merged.merge(LogHistogram())  # an empty one changes nothing
    assert merged.count == whole.count and merged.min == whole.min


def test_merge_refuses_other_settings() -> None:
    with pytest.raises(ValueError, match="relative_accuracy"):
        LogHistogram(0.01).merge(LogHistogram(0.02))
    with pytest.raises(ValueError, match="min_value"):
        LogHistogram(0.01, 1e-6).merge(LogHistogram(0.01, 1e-3))


def test_wire_round_trip_through_json() -> None:
    data = DISTRIBUTIONS["lognormal"](np.random.default_rng(5), 2_000)
    h = LogHistogram(0.02)
    h.add(data)
    h.add([0.0, 0.0])
    payload = msgspec.json.encode(h.to_wire())
    wire = msgspec.json.decode(payload, type=LatencyHistogram)
    back = LogHistogram.from_wire(wire)
    assert back.buckets == h.buckets and back.to_wire() == h.to_wire()
    assert all(back.quantile(q) == h.quantile(q) for q in QS)
    empty = msgspec.json.decode(
        msgspec.json.encode(LogHistogram().to_wire()), type=LatencyHistogram
    )
    assert LogHistogram.from_wire(empty).count == 0 and empty.min is None


def test_merge_wire_computes_percentiles_from_merged_counts() -> None:
    rng = np.random.default_rng(6)
    # windows of different sizes with different shares of slow calls
    windows = [
        np.where(rng.random(n) < slow, rng.normal(200.0, 30.0, n), rng.normal(2.0, 0.2, n)).clip(
            0.01
        )
        for n, slow in [(4000, 0.0), (3000, 0.01), (200, 0.5), (50, 0.3), (5000, 0.08)]
    ]
    wires = []
    for w in windows:
        h = LogHistogram()
        h.add(w)
        wires.append(h.to_wire())
    merged = merge_wire(wires)
    everything = np.concatenate(windows)
    assert merged.count == everything.size
    assert_within(merged, everything)
    # averaging the windows' p95 is not the p95 of the span
    mean_of_p95 = float(np.mean([np.quantile(w, 0.95, method="lower") for w in windows]))
    exact = float(np.quantile(everything, 0.95, method="lower"))
    got = merged.quantile(0.95)
    assert got is not None and abs(got - exact) <= 0.01 * exact < abs(mean_of_p95 - exact)
    with pytest.raises(ValueError):
        merge_wire([])
    # another accuracy (a device configured otherwise, or a hostile window) is left out: the
    # parameters that hold the most values win, whatever the order
    other = LogHistogram(0.05)
    other.add([1.0] * 10)
    for mixed in ([wires[0], other.to_wire()], [other.to_wire(), wires[0]]):
        assert merge_wire(mixed).count == wires[0].count


def test_from_wire_refuses_inconsistent_counts() -> None:
    with pytest.raises(ValueError, match="count"):  # the wire refuses it too
        LatencyHistogram(relative_accuracy=0.01, buckets={3: 2}, count=5, min=1.0, max=2.0)
    with pytest.raises(ValueError, match="min and max"):
        LogHistogram.from_wire(LatencyHistogram(relative_accuracy=0.01, buckets={3: 2}, count=2))


def test_bucket_count_stays_small() -> None:
    h = LogHistogram(0.01)
    h.add(np.geomspace(1e-3, 1e6, 100_000))  # 1 microsecond to 1000 seconds
    gamma = (1 + 0.01) / (1 - 0.01)
    assert len(h.buckets) <= math.ceil(math.log(1e9) / math.log(gamma)) + 1
