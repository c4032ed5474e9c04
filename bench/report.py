"""Machine facts and bench/REPORT.md."""

from __future__ import annotations

import os
import platform
import subprocess
from dataclasses import dataclass
from datetime import datetime
from importlib import metadata
from pathlib import Path

from bench.kafka_env import REPO, kafka_version
from bench.stats import Figure, Results, format_value

SECTIONS = {
    "core": "(a) Trial events through the pure core (one process, no I/O)",
    "kafka": "(b) Trial events through Kafka and the processor",
    "latency": "(c) SessionEnded published -> AssignmentIssued received by the rig",
}


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def _run(args: list[str]) -> str:
    try:
        done = subprocess.run(args, capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return (done.stdout or done.stderr).strip()


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


@dataclass(frozen=True)
class Machine:
    cpus: int
    cpu_model: str
    ram_gib: float
    system: str
    python: str
    packages: dict[str, str]
    kafka: str
    java: str
    commit: str

    @classmethod
    def describe(cls) -> Machine:
        meminfo = _read("/proc/meminfo").split()
        ram_kib = int(meminfo[meminfo.index("MemTotal:") + 1]) if "MemTotal:" in meminfo else 0
        model = next(
            (
                line.split(":", 1)[1].strip()
                for line in _read("/proc/cpuinfo").splitlines()
                if line.startswith("model name")
            ),
            platform.processor() or "unknown",
        )
        commit = _run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"]) or "unknown"
        if _run(["git", "-C", str(REPO), "status", "--porcelain"]):
            commit += " with uncommitted changes"
        return cls(
            cpus=len(os.sched_getaffinity(0)),
            cpu_model=model,
            ram_gib=ram_kib / 2**20,
            system=f"{platform.system()} {platform.release()}",
            python=platform.python_version(),
            packages={
                p: _version(p)
                for p in ("kafka-python", "faust-streaming", "aiokafka", "pydantic", "fastavro")
            },
            kafka=kafka_version(),
            java=(_run(["java", "-version"]).splitlines() or ["unknown"])[0],
            commit=commit,
        )


@dataclass(frozen=True)
class RunInfo:
    command: str
    started: datetime
    seconds: float
    repeats: int
    quick: bool
    load_before: tuple[float, float, float]
    load_after: tuple[float, float, float]
    section_seconds: dict[str, float]


def _load(load: tuple[float, float, float]) -> str:
    return " / ".join(f"{x:.2f}" for x in load)


def _table(figures: list[Figure]) -> list[str]:
    lines = [
        "| Measurement | Median | Unit | All repeats | Notes |",
        "|---|---:|---|---|---|",
    ]
    for f in figures:
        name = f"raw Kafka: {f.name}" if f.baseline else f.name
        repeats = ", ".join(format_value(v, f.unit) for v in f.repeats)
        lines.append(
            f"| {name} | **{format_value(f.value, f.unit)}** | {f.unit} | {repeats} | {f.note} |"
        )
    return lines


def _find(results: Results, name: str) -> Figure | None:
    return next((f for f in results.figures if f.name == name), None)


def readings(results: Results) -> list[str]:
    """Comparisons computed from the figures of this run (only those that were measured)."""
    out = []
    handle = _find(results, "TrainingCore.handle (decoded events, state in memory)")
    step = _find(results, "ProcessorStep.process (bytes in and out, state in memory)")
    live = _find(results, "live: rig producer -> Kafka -> processor -> decisions topic")
    replay = _find(results, "replay: processor alone catching up on the stored log")
    cpu = _find(results, "replay: processor's CPU use meanwhile")
    broker = _find(results, "replay: broker's CPU use meanwhile")
    produce = _find(results, "raw kafka-python producer (acks=all, idempotent)")
    consume = _find(results, "raw kafka-python consumer (no group, from offset 0)")
    answer = _find(results, "SessionEnded published -> AssignmentIssued at the rig: median")
    answer99 = _find(results, "SessionEnded published -> AssignmentIssued at the rig: p99")
    hop = _find(results, "raw produce -> consume, one hop: median")
    relay = _find(results, "raw two hops through a kafka-python relay process: median")
    decode = _find(results, "of which: decoding alone (EventCodec.decode)")
    state = _find(results, "beside: state round trip alone (from_bytes + to_bytes)")
    if handle and step:
        text = (
            f"- The processing step runs at {step.value / handle.value:.0%} of the bare core's "
            f"rate: {1e6 / step.value:.0f} µs per trial event against "
            f"{1e6 / handle.value:.0f} µs for the decision logic."
        )
        if decode:
            text += f" Decoding an input alone takes {1e6 / decode.value:.0f} µs of it."
        if state:
            text += (
                f" A round trip of the stored state costs {1e6 / state.value:.0f} µs; the "
                "processor pays it once per touched mouse per batch, not per message."
            )
        out.append(text)
    if step and replay:
        text = (
            f"- On Kafka, the processor (replay, nothing else running) reaches "
            f"{replay.value / step.value:.0%} of the step's in-process rate."
        )
        if cpu:
            per_msg_us = cpu.value / 100 / replay.value * 1e6
            text += (
                f" It used {cpu.value:.0f}% of a core meanwhile, about {per_msg_us:.0f} µs of "
                f"CPU per trial event against {1e6 / step.value:.0f} µs for the step itself: "
                "most of the processor's time goes to faust, aiokafka and asyncio around the "
                "step, not to Shaping's code."
            )
        if cpu and broker:
            text += f" The broker used {broker.value:.0f}% of a core at the same time."
            if cpu.value >= 80:
                text += " The processor is mostly CPU-bound, on its one event-loop thread."
        out.append(text)
        out.append(
            '- The processor works in batches (services/processor/app.py, "Batches"): at '
            "most 500 messages or 20 ms, each mouse's state kept in memory, its outputs "
            "published and acknowledged per batch, and each touched mouse's state written once "
            "per batch (the changelog figures below), before the batch's inputs are "
            "acknowledged. What is left per message is faust's stream delivery and the step "
            "itself (decoding and the domain); bench/BATCHING.md has the profile and what "
            "would go further."
        )
    minimal = _find(results, "minimal faust app, no table (from offset 0)")
    reading = _find(
        results, "minimal faust app reading as the processor does, no step (from offset 0)"
    )
    if replay and minimal and reading:
        minimal_us, reading_us, replay_us = (1e6 / f.value for f in (minimal, reading, replay))
        needed_us = minimal_us / 0.7
        out.append(
            f"- The ceiling on faust: a faust app that reads as the processor does (manual "
            f"acks, the same batches) and does nothing else reads {reading.value:,.0f} msgs/s, "
            f"{reading.value / minimal.value:.0%} of the minimal app's {minimal.value:,.0f} "
            f"({reading_us:.0f} against {minimal_us:.0f} µs a message). The processor, at "
            f"{replay_us:.0f} µs a trial event, reaches {replay.value / reading.value:.0%} of "
            f"that ceiling and {replay.value / minimal.value:.0%} of the minimal app: its step "
            f"and state add {replay_us - reading_us:.0f} µs a message to the reading path. "
            f"0.7 of the minimal app means {needed_us:.0f} µs a message, so at most "
            f"{max(needed_us - reading_us, 0):.0f} µs for the step and state on this reading "
            "path (decoding alone is in the figures above)."
        )
    if live and replay:
        ratio = live.value / replay.value
        same = 0.85 <= ratio <= 1.15
        out.append(
            "- Live, with the producer publishing from the benchmark process on the same "
            f"cores, the processor ran at {ratio:.0%} of its replay rate"
            + (
                ", the same within this machine's noise: the producer is done long before the "
                "processor (see its rate), so the processor sets the pace either way."
                if same
                else "."
            )
        )
    if produce and consume and (live or replay):
        best = max(f.value for f in (live, replay) if f)
        ratio = min(produce.value, consume.value) / best
        verdict = (
            "Kafka itself is far from the limit; the per-message work in the processor is."
            if ratio >= 3
            else "here Kafka's own rate is of the same order as the processor's."
        )
        out.append(
            f"- Raw kafka-python moves {produce.value:,.0f} msgs/s in (producer, acks=all) and "
            f"{consume.value:,.0f} msgs/s out (consumer) on this machine, {ratio:.0f}x the "
            f"processor's best rate: {verdict}"
        )
        out.append(
            f"- For scale: a rig produces a trial every few seconds, so {best:,.0f} trial "
            "events/s would serve thousands of rigs running at once; the rate matters mostly "
            "for rebuilding state by replaying the whole log."
        )
    if answer and hop and relay:
        out.append(
            f"- A decision reaches the rig {answer.value:.0f} ms after it published "
            "SessionEnded (median"
            + (f", p99 {answer99.value:.0f} ms" if answer99 else "")
            + f"). The same two hops through a relay that does no work take "
            f"{relay.value:.1f} ms and one hop {hop.value:.1f} ms, so about "
            f"{max(0.0, answer.value - relay.value):.0f} ms are the processor's own work "
            "(faust, decoding, the core, the state write, two outputs sent and awaited "
            "with acks=all). Either way it is far below the minutes between two sessions of a "
            "mouse."
        )
    loaded = next((f for f in results.figures if f.name.startswith("the same under a load")), None)
    loaded99 = next(
        (
            f
            for f in results.figures
            if f.name.startswith("the same under a load") and "p99" in f.name
        ),
        None,
    )
    if loaded and loaded99 and answer99:
        verdict = "met" if loaded99.value <= 50 else "not met"
        out.append(
            f"- Under load ({loaded.name.removeprefix('the same under a load of ').split(':')[0]}"
            " from other mice, sent from another process on the same two cores) the decision "
            f"reaches the rig {loaded.value:.0f} ms after SessionEnded (median), p99 "
            f"{loaded99.value:.0f} ms against {answer99.value:.0f} ms unloaded; issue 14's "
            f"target of p99 <= 50 ms under load: {verdict} (the repeats' p99s: "
            f"{', '.join(f'{v:.0f}' for v in loaded99.repeats)} ms). "
            + UNDER_LOAD.format(
                relay99=_value(results, "the same two hops while a processor", "p99"),
                relay=_value(results, "raw two hops through", "p99"),
            )
        )
    return out


def _value(results: Results, name: str, statistic: str) -> str:
    """The median over repeats of the latency figure named ``name...: statistic``, or "?"."""
    found = next(
        (f for f in results.figures if f.name.startswith(name) and f.name.endswith(statistic)),
        None,
    )
    return "?" if found is None else f"{found.value:.0f}"


UNDER_LOAD = (
    "Under load a SessionEnded waits for the batch in flight, then for its own. On 2026-12-07 "
    "two changes shortened that (services/processor/app.py): a mouse that only gained trials "
    'is written about once a second, not after every batch ("Deferred writes"), and a batch '
    "closes as soon as it holds anything but a trial; in scratch runs the loaded median went "
    "from 32-44 ms to 21-33 ms. That day about one loaded run in three took about 200 s "
    "instead of 35 s. On 2026-12-08 the cause was found and removed: faust starts its "
    "consumer with a fetch wait of 1.5 s, and aiokafka leaves a partition whose fetched "
    "records are not consumed yet out of its next fetch request, so under load a request "
    "could name only the quiet commands partitions and be held by the broker for the whole "
    "1.5 s while a SessionEnded waited (timed in a slow run: about 1.5 s from SessionEnded "
    "to the assignment's broker timestamp, 5-10 ms from there to the rig). The processor "
    "now fetches with a 20 ms wait (SHAPING_PROCESSOR_FETCH_WAIT_MS, "
    "services/processor/fetching.py); none of 13 loaded scratch runs after that was slow. "
    "Timing the first seconds of a run then showed its slowest samples right behind the "
    "load's first messages, 100 enrolments and then 100 SessionStarted in a tenth of a "
    "second: 314-647 ms behind the enrolments, and 172-306 ms behind the session starts once "
    "the enrolments came before the clocks. So the load's mice are now enrolled before the "
    "clocks start and its rigs' sessions are staggered (one starts about every 0.9 s), as a "
    "lab's rigs run; a cohort that starts in the same second costs those few hundred "
    "milliseconds once. What is left is spread through the run, and part of it is the "
    "machine's: the relay's two hops, which do no work, have a p99 of {relay99} ms while a "
    "processor takes the same load on other topics ({relay} ms unloaded), on two shared "
    "cores that also run the broker, the load's sender and the rig."
)


METHOD = """\
- **Noise.** The machine has 2 cores and is shared with other sessions' test runs, so every
  figure is noisy: each measurement ran {repeats} and the table shows the median, with every
  repeat listed. The load average before and after the run is above. Compare figures within
  one report rather than across machines or runs. Over 200 samples (the default), a p99 is
  about the second-slowest sample, so it moves a lot from run to run.
- **Workload.** Sessions are simulated by the rig's own simulator (`shaping.rig.task.scripted`,
  `shaping.rig.sim.mouse`), each from the assignment the core issued after the previous
  session, with `max_trials` set to the session length and no time limit; mice progress through the
  stages as they would. Events are generated and encoded before any clock starts.
- **(a)** `TrainingCore.handle` folds decoded events with per-mouse state in a dict.
  `ProcessorStep.process` takes the encoded bytes and each mouse's state kept decoded in
  memory, as the processor keeps it (it writes each touched mouse's state once per batch);
  it also encodes the outputs. Trial events/s = trials / time for the whole
  stream (enrolments, session starts and ends included in the time).
- **(b)** Each repeat uses fresh topics (4 partitions) and starts the processor as its own
  process (`python -m shaping.services.processor`, SHAPING_* settings). After the mice are enrolled
  and their first assignments are out (start-up excluded), every session's events are
  published with a kafka-python producer configured like a rig (acks=all, idempotent,
  linger 5 ms) from this process; *live* is timed from the first send to the broker
  timestamp of the decision on the last session of every mouse. *Replay* then starts a new
  processor (new consumer group, empty table) on the same topics and times it from its
  first to its last decision, by broker timestamps. Every run checks that the dead-letter
  topic stayed empty. The raw producer sends the same keys and values to a plain topic
  with the same settings; the raw consumer (no group) reads them back from offset 0. The raw
  baselines and the minimal faust apps run right after the processor in each repeat, and
  every topic is dropped after each run (`KafkaEnv.drop_topics`).
- **(c)** The rig is the real `KafkaRigTransport`: `publish` (waits for the broker's
  acknowledgement) then `latest_assignment` (polls the assignments topic) until the
  assignment with the next session number arrives. Sessions run one at a time, round
  robin over the mice; a first round per mouse is a warm-up. Percentiles per repeat, then
  the median over repeats. The raw round trips send one SessionEnded-sized message at a
  time with the same producer settings to a consumer that is already polling, directly
  (one hop) or through `bench.relay`, a kafka-python process that copies each record to
  a second topic and waits for its acknowledgement (two hops, like rig -> processor -> rig).
  The loaded runs repeat the same sessions while another process sends other mice's
  sessions at a fixed rate (`bench.latency.LOAD_RATE`) to the same topic: their rigs'
  events interleaved, their sessions staggered so that one starts about every 0.9 s, and
  those mice enrolled before the clocks start. The loaded baseline times the relay's two
  hops while a processor takes the same load on other topics.
- The broker is a single-node KRaft Kafka started by `infra/kafka/kafka.sh` on
  127.0.0.1:45092 with its data in a temporary directory, stopped at the end.
"""


COMPANIONS = {
    "BATCHING.md": "the processor in batches with each mouse's state in memory, beside a "
    "minimal faust app and a raw consumer; changelog records per trial (issue 14, items 1, 7)",
    "REPLAY.md": "`shaping replay` at scale, from Kafka and from an events log, streamed by "
    "partition across processes, beside the raw readers (item 2)",
    "profiles/ibl-speed.md": "IBL recompute and `shaping evaluate --trials` beside ibllib on "
    "the same trials, with profiles (item 3; `make bench-ibl`)",
    "STATE.md": "a mouse's state at rest and in memory, before beside after "
    "(item 4; `python -m bench.state_size`)",
    "MIDSESSION.md": "decisions during a session: trial published to the new assignment "
    "applied at the rig, under 100 simulated rigs (item 5; `python -m bench.midsession`)",
    "SCALEOUT.md": "two processor workers in one group beside one "
    "(item 6; `python -m bench.scaleout`)",
}
"""The benchmarks with reports of their own (each run beside its baseline), listed at the end."""


def _companions() -> list[str]:
    here = Path(__file__).resolve().parent
    found = [(name, what) for name, what in COMPANIONS.items() if (here / name).is_file()]
    if not found:
        return []
    return [
        "## The other benchmarks",
        "",
        "Each of these runs on its own and writes its figures, beside their baselines, to its "
        "own report:",
        "",
        *(f"- [{name}]({name}): {what}" for name, what in found),
        "",
    ]


def render(machine: Machine, run: RunInfo, results: Results) -> str:
    lines = [
        "# Shaping benchmarks",
        "",
        f"Written by `{run.command}` on {run.started:%Y-%m-%d %H:%M %Z}"
        f"{' (quick mode: small workloads)' if run.quick else ''}. The run took "
        f"{run.seconds:.0f} s ("
        + ", ".join(f"{name} {s:.0f} s" for name, s in run.section_seconds.items())
        + "). Regenerate with `make bench` or the command above.",
        "",
        "## Machine",
        "",
        f"- {machine.cpus} CPUs ({machine.cpu_model}), {machine.ram_gib:.0f} GiB RAM, "
        f"{machine.system}",
        f"- Load average (1/5/15 min) before the run {_load(run.load_before)}, after "
        f"{_load(run.load_after)}",
        f"- Python {machine.python}; " + "; ".join(f"{p} {v}" for p, v in machine.packages.items()),
        f"- Apache Kafka {machine.kafka} (single node, KRaft, via infra/kafka/kafka.sh); "
        f"{machine.java}",
        f"- Shaping commit {machine.commit}",
        "",
        "## Results",
        "",
        f"Median of {run.repeats} repeat{'s' if run.repeats != 1 else ''}; rows marked "
        "*raw Kafka* are the comparison on the same broker and machine.",
    ]
    for section, title in SECTIONS.items():
        figures = [f for f in results.figures if f.section == section]
        if not figures:
            continue
        lines += ["", f"### {title}", "", *_table(figures)]
    found = readings(results)
    if found:
        lines += ["", "## What the numbers mean", "", *found]
    times = "once" if run.repeats == 1 else f"{run.repeats} times"
    lines += ["", "## Method", "", METHOD.format(repeats=times).rstrip(), ""]
    if results.details:
        lines += ["Sizes of this run:", "", *(f"- {d}" for d in results.details), ""]
    lines += _companions()
    return "\n".join(lines)
