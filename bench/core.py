"""(a) Trial events per second through the pure core, and through the processor's step.

Two loops over the same workload, in one process, no I/O:

* ``TrainingCore.handle`` on decoded events, the state kept as a Python object per mouse;
* ``ProcessorStep.process`` on the encoded bytes, the state kept decoded per mouse, as the
  faust processor keeps it live in memory (it writes each touched mouse's state once per
  batch). This is the processor's per-message work without Kafka and faust.

Two more loops: decoding alone, and the state round trip alone (``decode_state`` and
``encode_state`` of a typical state, once per message: the processor pays it once per mouse
per batch, so this is an upper bound of its share).
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable

from bench.kafka_env import BenchError
from bench.stats import Figure, Results, median
from bench.workload import Encoded, Workload, build_workload, encode
from shaping.schemas.codec import default_codec
from shaping.schemas.events import Event, StageTransitioned
from shaping.services.curricula.catalog import default_catalog
from shaping.services.domain import MouseState, TrainingCore, initial_state
from shaping.services.processor.state_store import decode_state, encode_state
from shaping.services.processor.step import ProcessorStep

TOPIC = "bench.events"


def run_handle(events: list[Event]) -> tuple[float, int]:
    """Runs the core over the events; returns (seconds, decisions made)."""
    core = TrainingCore(default_catalog())
    states: dict[str, MouseState] = {}
    decisions = 0
    start = time.perf_counter()
    for event in events:
        state = states.get(event.mouse_id) or initial_state(event.mouse_id)
        state, outputs = core.handle(state, event)
        states[event.mouse_id] = state
        for output in outputs:
            decisions += isinstance(output, StageTransitioned)
    return time.perf_counter() - start, decisions


def run_step(encoded: Encoded) -> tuple[float, int]:
    """Runs the processing step over encoded messages, each mouse's state kept in memory."""
    step = ProcessorStep(TrainingCore(default_catalog()), default_codec())
    live: dict[bytes, MouseState] = {}
    outputs = 0
    start = time.perf_counter()
    for offset, (key, value) in enumerate(zip(encoded.keys, encoded.values, strict=True)):
        result = step.process(live.get(key), key, value, TOPIC, 0, offset)
        if result.rejected:
            raise BenchError(f"the step rejected message {offset}: {result.outputs[0].event}")
        if result.state is not None:
            live[key] = result.state
        outputs += len(result.outputs)
    return time.perf_counter() - start, outputs


def run_decode(encoded: Encoded) -> float:
    codec = default_codec()
    start = time.perf_counter()
    for value in encoded.values:
        codec.decode(value)
    return time.perf_counter() - start


def run_state_round_trip(events: list[Event]) -> float:
    """Loads and stores a typical state once per message (the table's part of the step)."""
    core = TrainingCore(default_catalog())
    states: dict[str, MouseState] = {}
    for event in events:  # the states the mice have after the whole workload
        state = states.get(event.mouse_id) or initial_state(event.mouse_id)
        states[event.mouse_id], _ = core.handle(state, event)
    stored = {m: encode_state(s) for m, s in states.items()}
    start = time.perf_counter()
    for event in events:
        stored[event.mouse_id] = encode_state(decode_state(stored[event.mouse_id]))
    return time.perf_counter() - start


def _timed(repeats: int, run: Callable[[], float]) -> list[float]:
    seconds = []
    for _ in range(repeats):
        gc.collect()
        seconds.append(run())
    return seconds


def measure(
    results: Results,
    repeats: int,
    n_mice: int = 10,
    sessions_per_mouse: int = 10,
    trials_per_session: int = 500,
) -> None:
    print(f"(a) core: building {n_mice} mice x {sessions_per_mouse} sessions ...", flush=True)
    workload: Workload = build_workload(n_mice, sessions_per_mouse, trials_per_session)
    events = workload.events()
    encoded = encode(events)
    n_trials = workload.n_trials
    results.detail(
        f"(a) workload: {workload.describe()}; mean encoded event {encoded.mean_value_bytes:.0f} B."
    )

    decisions_seen: set[int] = set()

    def handle() -> float:
        seconds, decisions = run_handle(events)
        decisions_seen.add(decisions)
        return seconds

    outputs_seen: set[int] = set()

    def step() -> float:
        seconds, outputs = run_step(encoded)
        outputs_seen.add(outputs)
        return seconds

    handle_s = _timed(repeats, handle)
    if decisions_seen != {workload.n_sessions}:
        raise BenchError(f"expected {workload.n_sessions} decisions, got {decisions_seen}")
    results.add(
        Figure(
            "core",
            "TrainingCore.handle (decoded events, state in memory)",
            "trial events/s",
            tuple(n_trials / s for s in handle_s),
            f"{n_trials:,} trials, {n_mice} mice, sessions of {trials_per_session}",
        )
    )
    step_s = _timed(repeats, step)
    # Every session ends in a decision and an assignment; every enrolment in an assignment.
    # Each of those inputs (a session's start and end, an enrolment) is also republished once
    # on the accepted topic, for the projector.
    expected_outputs = 2 * (2 * workload.n_sessions + len(workload.mice))
    if outputs_seen != {expected_outputs}:
        raise BenchError(f"expected {expected_outputs} outputs, got {outputs_seen}")
    results.add(
        Figure(
            "core",
            "ProcessorStep.process (bytes in and out, state in memory)",
            "trial events/s",
            tuple(n_trials / s for s in step_s),
            "decode + core + encode outputs per message; each mouse's state kept decoded, as "
            "the processor keeps it",
        )
    )
    decode_s = _timed(repeats, lambda: run_decode(encoded))
    results.add(
        Figure(
            "core",
            "of which: decoding alone (EventCodec.decode)",
            "events/s",
            tuple(len(encoded) / s for s in decode_s),
            "Avro + pydantic validation of every input message",
        )
    )
    state_s = _timed(repeats, lambda: run_state_round_trip(events))
    results.add(
        Figure(
            "core",
            "beside: state round trip alone (from_bytes + to_bytes)",
            "events/s",
            tuple(len(events) / s for s in state_s),
            "a MouseState at the end of the workload, once per message (the processor writes "
            "each touched mouse once per batch)",
        )
    )
    results.detail(
        "(a) all events/s (trials, starts, ends, enrolments) through ProcessorStep: "
        f"{len(events) / median(step_s):,.0f}/s."
    )
