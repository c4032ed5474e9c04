"""A batch's observations go into the processor's histograms at once
(``ServiceMetrics.observe_processing`` and ``observe_age`` take all of a batch's values): the
scrape must read as if each value had been observed one by one (every bucket and count exactly,
the sum up to the rounding of the additions' order), bucket edges, negative and infinite values
included."""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import generate_latest

from shaping.services.adapters.metrics import ServiceMetrics

EDGES = [0.0, 0.001, 0.0025, 0.005, 0.05, 0.1, 1.0, 60.0, 3600.0]


def scrape(metrics: ServiceMetrics) -> list[str]:
    lines = generate_latest(metrics.registry).decode().splitlines()
    return [line for line in lines if line.startswith("shaping_") and "_created" not in line]


def same(got: list[str], expected: list[str]) -> bool:
    if len(got) != len(expected):
        return False
    for line, want in zip(got, expected, strict=True):
        name, value = line.rsplit(" ", 1)
        want_name, want_value = want.rsplit(" ", 1)
        if name != want_name:
            return False
        if "_sum" in name.split("{")[0]:
            if not math.isclose(float(value), float(want_value), rel_tol=1e-9, abs_tol=1e-12):
                return False
        elif value != want_value:
            return False
    return True


def one_by_one(values: list[float], processing: bool = True) -> list[str]:
    metrics = ServiceMetrics("processor")
    for value in values:
        if processing:
            metrics.observe_processing("message", value)
        metrics.observe_age(value)
    return scrape(metrics)


@given(
    st.lists(
        st.one_of(
            st.sampled_from(EDGES),
            st.floats(min_value=-5, max_value=1e5, allow_nan=False),
            st.just(math.inf),
        ),
        min_size=1,
        max_size=60,
    )
)
def test_a_batch_observed_at_once_reads_as_its_values_observed_one_by_one(
    values: list[float],
) -> None:
    metrics = ServiceMetrics("processor")
    metrics.observe_processing("message", *values)
    metrics.observe_age(*values)
    assert same(scrape(metrics), one_by_one(values))


def test_every_bucket_edge_counts_in_its_own_bucket() -> None:
    metrics = ServiceMetrics("processor")
    metrics.observe_age(*EDGES, *EDGES)
    assert same(scrape(metrics), one_by_one(EDGES + EDGES, processing=False))
    assert any(
        'le="+Inf"' in line and line.endswith(f" {2 * len(EDGES)}.0") for line in scrape(metrics)
    )
