"""``shaping rig ...``: commands for the person at a behaviour rig.

``run`` trains a mouse (live display, then the decision on the session), ``status`` shows the
assignment cache, the outbox and whether Kafka answers, ``calibrate`` measures a valve,
``sync`` sends what the outbox holds, ``import-reach`` reads reach's training files and
``simulate`` runs a simulated lab against Kafka.

Only light dependencies here (no faust, SQLAlchemy or pandas), so they work on a Raspberry Pi.
Every mistake a person can make (a typo in a mouse or valve name, a bad config file, a weight
that is not a number) ends in a one-line message, never a traceback.
"""

from __future__ import annotations

import difflib
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from services.common.settings import Settings

if TYPE_CHECKING:
    from rig.config import RigConfig
    from rig.task import ReachParameters, TaskState, TrialProgress
    from schemas.events import AssignmentIssued, SessionEnded, SessionStarted, StageTransitioned

app = typer.Typer(help="Commands for a behaviour rig.", no_args_is_help=True)

Bootstrap = Annotated[
    str | None,
    typer.Option("--bootstrap", help="Kafka bootstrap servers (default: $SHAPING_BOOTSTRAP)."),
]
Prefix = Annotated[
    str | None,
    typer.Option("--prefix", help="Topic name prefix (default: $SHAPING_TOPIC_PREFIX)."),
]
ConfigPath = Annotated[
    Path,
    typer.Option(
        "--config",
        envvar="SHAPING_RIG_CONFIG",
        help="The rig's config file (TOML; docs/rig.md shows one).",
    ),
]
DEFAULT_CONFIG = Path("rig.toml")


@contextmanager
def _rig_errors() -> Iterator[None]:
    """Turns rig errors into one red line and an exit code (2: config, 1: anything else)."""
    from rig.errors import ConfigError, ParameterError, RigError

    try:
        yield
    except (ConfigError, ParameterError) as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(code=2) from None
    except RigError as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(code=1) from None


def _load(path: Path, bootstrap: str | None = None) -> RigConfig:
    from rig.config import load_config

    config = load_config(path)
    if bootstrap:
        config = replace(config, bootstrap=bootstrap)
    return config


def _utc(value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise typer.BadParameter(f"{value!r} is not an ISO date and time") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


# -- run ----------------------------------------------------------------------------------------


class ConsoleDisplay:
    """The live display of ``shaping rig run``.

    On a terminal the trial line is rewritten in place; otherwise (a log, a test) every
    ``every``-th trial gets a line of its own.
    """

    def __init__(self, echo: Callable[[str], None], live: bool, every: int = 1) -> None:
        self.echo = echo
        self.live = live
        self.every = max(1, every)
        self._line_open = False

    def _close_line(self) -> None:
        if self._line_open:
            sys.stdout.write("\n")
            self._line_open = False

    def message(self, text: str) -> None:
        """Prints a line."""
        self._close_line()
        self.echo(text)

    def session_started(
        self, started: SessionStarted, params: ReachParameters, resumed_at: int | None
    ) -> None:
        """Prints what the session runs."""
        what = "resumed" if resumed_at is not None else "started"
        self.message(
            f"session {started.session_id} {what}: stage {started.stage} "
            f"({started.curriculum_name} {started.curriculum_version})"
        )
        shown = ", ".join(
            f"{name}={_fmt(value)}"
            for name, value in sorted(started.parameters.items())
            if value is not None
        )
        self.message(f"parameters: {shown}")

    def trial(self, progress: TrialProgress, stage: str) -> None:
        """Prints the running counts after a trial."""
        state, trial = progress.state, progress.trial
        if not self.live and trial.trial_index % self.every:
            return
        accuracy = "-" if state.accuracy is None else f"{state.accuracy:.0%}"
        minutes, seconds = divmod(int(progress.time_left_s), 60)
        p = trial.trial_parameters
        line = (
            f"trial {trial.trial_index + 1:4d} {trial.outcome:9s} {trial.target_side or '':5s} | "
            f"correct {state.n_correct} incorrect {state.n_incorrect} miss {state.n_miss} | "
            f"accuracy {accuracy:>4s} | {minutes:02d}:{seconds:02d} left | {stage} | "
            f"cue {_fmt(p.get('cue_duration_s'))} s, spouts L{p.get('spout_position_left')} "
            f"R{p.get('spout_position_right')}"
        )
        if self.live:
            sys.stdout.write("\r" + line.ljust(120))
            sys.stdout.flush()
            self._line_open = True
        else:
            self.echo(line)

    def session_ended(self, ended: SessionEnded, state: TaskState) -> None:
        """Prints the session's totals."""
        accuracy = "-" if state.accuracy is None else f"{state.accuracy:.0%}"
        self.message(
            f"session ended ({ended.end_reason}) after {ended.duration_s / 60:.1f} min: "
            f"{ended.n_trials} trials, {state.n_correct} correct, {state.n_incorrect} "
            f"incorrect, {state.n_miss} missed, accuracy {accuracy}"
        )

    def decision(self, decision: StageTransitioned, assignment: AssignmentIssued | None) -> None:
        """Prints the decision, the status reached, every rule's evidence, the reported
        metrics, the warnings, and the next assignment."""
        from rig.evidence import evidence_lines, next_session_line

        for line in evidence_lines(decision, assignment):
            self.message(line)
        if assignment is not None:
            self.message(next_session_line(assignment))


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "-" if value is None else str(value)


@app.command("run")
def rig_run(
    mouse: Annotated[str, typer.Option("--mouse", help="The mouse to train.")],
    config: ConfigPath = DEFAULT_CONFIG,
    bootstrap: Bootstrap = None,
    simulate: Annotated[
        bool,
        typer.Option(
            "--simulate", help="gpiozero mock pins, a simulated mouse and a virtual clock."
        ),
    ] = False,
    seed: Annotated[int, typer.Option(help="Simulated mouse's seed.")] = 1,
    start: Annotated[
        str | None,
        typer.Option(help="Simulation: when the virtual clock starts (ISO, UTC by default)."),
    ] = None,
    speed: Annotated[
        float | None,
        typer.Option(min=1, help="Simulation: at most this many times real time."),
    ] = None,
    offline: Annotated[
        bool, typer.Option("--offline", help="Do not contact Kafka (cache and outbox only).")
    ] = False,
    abandon: Annotated[
        bool,
        typer.Option("--abandon", help="Close an interrupted session instead of resuming it."),
    ] = False,
    assignment_timeout: Annotated[
        float, typer.Option(min=0, help="Seconds to wait for the previous session's decision.")
    ] = 10.0,
    decision_timeout: Annotated[
        float, typer.Option(min=0, help="Seconds to wait for this session's decision.")
    ] = 60.0,
    every: Annotated[
        int, typer.Option(min=1, help="Without a terminal, print every N-th trial.")
    ] = 1,
    metrics_port: Annotated[
        int | None,
        typer.Option(
            envvar="SHAPING_RIG_METRICS_PORT",
            help="Serve shaping_rig_outbox_depth on this port (/metrics) while running.",
        ),
    ] = None,
    metrics_host: Annotated[
        str, typer.Option(envvar="SHAPING_METRICS_HOST", help="Address the metrics bind to.")
    ] = "0.0.0.0",
) -> None:
    """Train a mouse: run its assigned session, live, then show the decision on it.

    Uses the latest assignment for the mouse (the cached one when Kafka is unreachable, and
    says so); resumes the mouse's session if the rig stopped in the middle of one.
    """
    from rig.agent import RigAgent, RunOptions
    from rig.reach import reach_results

    if not simulate and (start is not None or speed is not None):
        raise typer.BadParameter("--start and --speed need --simulate", param_hint="--start")
    with _rig_errors():
        rig_config = _load(config, bootstrap)
        display = ConsoleDisplay(typer.echo, live=sys.stdout.isatty(), every=every)
        agent = RigAgent(rig_config, display)
        exporter = None
        if metrics_port is not None:
            from rig.metrics import OutboxDepthExporter

            try:
                exporter = OutboxDepthExporter(
                    rig_config.store_path, rig_config.rig_id, metrics_port, metrics_host
                ).start()
            except OSError as exc:
                typer.secho(
                    f"error: cannot serve metrics on {metrics_host}:{metrics_port}: {exc}",
                    fg=typer.colors.RED,
                    err=True,
                )
                raise typer.Exit(code=2) from None
        try:
            report = agent.run(
                RunOptions(
                    mouse_id=mouse,
                    simulate=simulate,
                    seed=seed,
                    start=_utc(start),
                    pace=speed,
                    offline=offline,
                    assignment_timeout_s=assignment_timeout,
                    decision_timeout_s=decision_timeout,
                    abandon_open=abandon,
                )
            )
        finally:
            if exporter is not None:
                exporter.stop()
        results = reach_results(agent.store.events(report.session_id))
        typer.echo(
            f"reach results: d' {results.d_prime:.2f} (correction trials excluded), resets "
            f"{results.resets}, spontaneous reaches {results.spontaneous_reaches}"
        )


# -- status -------------------------------------------------------------------------------------


@app.command("status")
def rig_status(
    config: ConfigPath = DEFAULT_CONFIG,
    bootstrap: Bootstrap = None,
    timeout: Annotated[float, typer.Option(min=0.5, help="Seconds to wait for Kafka.")] = 5.0,
) -> None:
    """Show the assignment cache, the outbox and whether Kafka answers."""
    from rig.errors import BrokerUnreachableError
    from rig.evidence import EJECTED, evidence_lines
    from rig.follow import AssignmentFollower
    from rig.store import RigStore
    from services.common.topics import TopicNames

    with _rig_errors():
        rig_config = _load(config, bootstrap)
        store = RigStore(rig_config.store_path)
        topics = TopicNames.with_prefix(rig_config.topic_prefix)
        follower = AssignmentFollower(
            store,
            rig_config.bootstrap,
            topics.assignments,
            topics.decisions,
            rig_config.mice,
            client_id=f"shaping-rig-{rig_config.rig_id}-status",
            timeout_ms=int(timeout * 1000),
        )
        try:
            follower.catch_up(timeout)
            broker = "reachable (assignment cache refreshed)"
        except BrokerUnreachableError as exc:
            broker = f"UNREACHABLE ({exc}); the cache below is what the rig last received"
        finally:
            follower.close()
        typer.echo(f"rig {rig_config.rig_id} (config {rig_config.path})")
        typer.echo(f"store: {rig_config.store_path}")
        typer.echo(f"broker {rig_config.bootstrap}: {broker}")
        unsent = store.unsent_count()
        oldest = store.oldest_unsent()
        since = f" (oldest from {oldest:%Y-%m-%d %H:%M:%S} UTC)" if oldest else ""
        typer.echo(f"outbox: {unsent} event{'s' if unsent != 1 else ''} waiting{since}")
        typer.echo("mice:")
        for mouse in rig_config.mice:
            typer.echo(f"  {mouse}:")
            cached = store.cached_assignment(mouse)
            if cached is None:
                typer.echo("    assignment: none cached (enroll the mouse; run with the broker up)")
            elif cached.assignment.reason == EJECTED:
                typer.echo(
                    f"    EJECTED: {cached.assignment.reason_detail}; `shaping rig run` refuses it"
                )
            else:
                a = cached.assignment
                typer.echo(
                    f"    assignment: session {a.session_number}, stage {a.stage} "
                    f"({a.curriculum_name} {a.curriculum_version}; {a.reason}), received "
                    f"{cached.received_at:%Y-%m-%d %H:%M} UTC"
                )
            waiting = store.unsent_count(mouse)
            if waiting:
                typer.echo(f"    outbox: {waiting} events waiting")
            open_session = store.open_session(mouse)
            if open_session is not None:
                trials = sum(1 for e in open_session.events if e.event_type == "TrialCompleted")
                typer.echo(
                    f"    interrupted session {open_session.started.session_id} ({trials} "
                    "trials): `shaping rig run` resumes it, --abandon closes it"
                )
            last = store.last_session(mouse)
            if last is not None:
                decision = store.decision(mouse, last.session_id or "")
                verdict = (
                    f"{decision.decision} {decision.from_stage} -> {decision.to_stage}"
                    if decision
                    else "no decision received yet"
                )
                typer.echo(f"    last session {last.session_id}: {verdict}")
            followed = store.last_evidence(mouse)
            if followed is not None:
                evidence = followed.assignment
                typer.echo(
                    f"    evidence of the last decision (received "
                    f"{followed.received_at:%Y-%m-%d %H:%M} UTC):"
                )
                judged = store.decision_with_id(mouse, evidence.causation_id or "")
                for line in evidence_lines(judged, evidence):
                    typer.echo(f"      {line}")
        agent_calibrations = {**rig_config.valves, **store.calibrations()}
        typer.echo("valves:")
        for valve in ("left", "right"):
            calibration = agent_calibrations.get(valve)
            if calibration is None:
                typer.echo(f"  {valve}: not calibrated (rewards only by duration)")
            else:
                typer.echo(f"  {valve}: {calibration.ml_per_ms:.6g} ml/ms ({calibration.source})")


# -- calibrate ----------------------------------------------------------------------------------


@app.command("calibrate")
def rig_calibrate(
    valve: Annotated[str, typer.Argument(help="The valve: left or right.")],
    config: ConfigPath = DEFAULT_CONFIG,
    pulses: Annotated[int, typer.Option(min=1, help="Openings per measurement.")] = 100,
    ms: Annotated[
        list[float] | None,
        typer.Option(
            "--ms", min=1, max=1000, help="Opening time(s) to measure, ms (repeat the option)."
        ),
    ] = None,
    gap_ms: Annotated[float, typer.Option(min=0, help="Pause between openings, ms.")] = 200.0,
    simulate: Annotated[
        bool, typer.Option("--simulate", help="Open the valve on gpiozero mock pins.")
    ] = False,
    yes: Annotated[bool, typer.Option("--yes", help="Save without asking.")] = False,
) -> None:
    """Calibrate a valve: dispense, weigh, and store millilitres per millisecond.

    For each opening time the valve opens PULSES times; weigh the water and type the grams.
    The slope through the origin of volume per opening against opening time is stored and used
    for every reward given by volume.
    """
    from rig.calibration import CalibrationPoint, dispense, fit_ml_per_ms, parse_grams
    from rig.clock import SystemClock, VirtualClock
    from rig.config import SIDES
    from rig.gpio import GpiozeroValve
    from rig.store import RigStore

    if valve not in SIDES:
        close = difflib.get_close_matches(valve, SIDES, n=1)
        hint = f"; did you mean {close[0]}?" if close else ""
        typer.secho(
            f"error: no valve {valve!r}{hint} (valves: left, right)", fg=typer.colors.RED, err=True
        )
        raise typer.Exit(code=2)
    durations = ms or [70.0]
    with _rig_errors():
        rig_config = _load(config)
        factory: Any = None
        clock: Any = SystemClock()
        if simulate:
            from rig.simulation import mock_factory

            factory = mock_factory()
            clock = VirtualClock(datetime.now(UTC).timestamp())
        device = GpiozeroValve(rig_config.pins[f"valve_{valve}"], pin_factory=factory)
        points = []
        try:
            for open_ms in durations:
                _ask(
                    f"Put an empty, weighed tube under the {valve} spout and press Enter to open "
                    f"the valve {pulses} times for {open_ms:g} ms"
                )
                dispense(device, clock, open_ms, pulses, gap_ms)
                grams = _ask_grams(f"Grams of water after {pulses} x {open_ms:g} ms", parse_grams)
                point = CalibrationPoint(open_ms, pulses, grams)
                points.append(point)
                typer.echo(
                    f"  {point.ml_per_pulse * 1000:.3f} µL per opening "
                    f"({point.ml_per_pulse / open_ms:.6g} ml/ms)"
                )
        finally:
            device.device.close()
        rate = fit_ml_per_ms(points)
        typer.echo(
            f"{valve} valve: {rate:.6g} ml/ms: 70 ms gives {rate * 70 * 1000:.2f} µL; "
            f"a 3 µL reward opens it for {0.003 / rate:.1f} ms"
        )
        if not yes and not typer.confirm("Save this calibration?", default=True):
            typer.echo("not saved")
            raise typer.Exit(code=1)
        store = RigStore(rig_config.store_path)
        saved = store.save_calibration(valve, rate, [p.as_dict() for p in points])
        typer.echo(f"saved in {rig_config.store_path} ({saved.source}); rewards by volume use it")


def _ask(text: str) -> None:
    try:
        typer.prompt(text, default="", show_default=False, prompt_suffix="\n> ")
    except (EOFError, typer.Abort):
        typer.secho("error: calibration cancelled (no answer)", fg=typer.colors.RED, err=True)
        raise typer.Exit(code=1) from None


def _ask_grams(text: str, parse: Callable[[str], float]) -> float:
    while True:
        try:
            answer = typer.prompt(text, prompt_suffix="\n> ")
        except (EOFError, typer.Abort):
            typer.secho("error: calibration cancelled (no weight)", fg=typer.colors.RED, err=True)
            raise typer.Exit(code=1) from None
        try:
            return parse(answer)
        except ValueError as exc:
            typer.echo(f"  {exc}")


# -- sync ---------------------------------------------------------------------------------------


@app.command("sync")
def rig_sync(
    config: ConfigPath = DEFAULT_CONFIG,
    bootstrap: Bootstrap = None,
    timeout: Annotated[float, typer.Option(min=1, help="Seconds to keep trying.")] = 60.0,
) -> None:
    """Send every event waiting in the outbox and refresh the assignment cache."""
    from rig.drain import OutboxDrainer
    from rig.errors import BrokerUnreachableError
    from rig.follow import AssignmentFollower
    from rig.store import RigStore
    from services.common.topics import TopicNames

    with _rig_errors():
        rig_config = _load(config, bootstrap)
        store = RigStore(rig_config.store_path)
        before = store.unsent_count()
        drainer = OutboxDrainer(
            store, rig_config.bootstrap, client_id=f"shaping-rig-{rig_config.rig_id}"
        )
        try:
            done = drainer.drain(timeout)
        finally:
            drainer.close()
        left = store.unsent_count()
        typer.echo(
            f"outbox: sent {before - left} of {before} events"
            + (f" ({drainer.status.reconciled} were already on the broker)" if done else "")
        )
        topics = TopicNames.with_prefix(rig_config.topic_prefix)
        follower = AssignmentFollower(
            store,
            rig_config.bootstrap,
            topics.assignments,
            topics.decisions,
            rig_config.mice,
            client_id=f"shaping-rig-{rig_config.rig_id}",
        )
        try:
            follower.catch_up(min(timeout, 15))
            typer.echo("assignment cache refreshed")
        except BrokerUnreachableError as exc:
            typer.echo(f"assignment cache not refreshed: {exc}")
        finally:
            follower.close()
        if not done:
            typer.secho(
                f"error: {left} events still wait ({drainer.status.last_error})",
                fg=typer.colors.RED,
                err=True,
            )
            raise typer.Exit(code=1)


# -- import-reach -------------------------------------------------------------------------------


@app.command("import-reach")
def rig_import_reach(
    file: Annotated[Path, typer.Argument(help="reach's training JSON of one mouse.")],
    mouse: Annotated[
        str | None, typer.Option("--mouse", help="Mouse id (default: the file name).")
    ] = None,
    out: Annotated[Path | None, typer.Option(help="Write the events here as JSON Lines.")] = None,
    utc_offset: Annotated[
        float, typer.Option(help="Hours the rig's local time was ahead of UTC.")
    ] = 0.0,
) -> None:
    """Import reach's per-mouse training file as events and print reach's per-session results."""
    from rig.reach import import_reach_sessions, load_reach_file, reach_results

    try:
        sessions = load_reach_file(file)
        mouse_id = mouse or file.stem
        imported = import_reach_sessions(sessions, mouse_id, utc_offset)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        typer.secho(
            f"error: cannot read {file} as reach training data: {type(exc).__name__}: {exc}",
            fg=typer.colors.RED,
            err=True,
        )
        raise typer.Exit(code=2) from None
    typer.echo("day  date        trials  corr L/R  incorr L/R  missed L/R  resets  spont  d'")
    for day, events in enumerate(imported, start=1):
        r = reach_results(events)
        typer.echo(
            f"{day:3d}  {r.date}  {r.trials:6d}  {r.correct_l:4d}/{r.correct_r:<3d} "
            f"{r.incorrect_l:6d}/{r.incorrect_r:<3d} {r.missed_l:6d}/{r.missed_r:<3d} "
            f"{r.resets:7d} {r.spontaneous_reaches:6d}  {r.d_prime:.3f}"
        )
    if out is not None:
        with out.open("w", encoding="utf-8") as handle:
            for events in imported:
                for event in events:
                    handle.write(event.model_dump_json() + "\n")
        count = sum(len(events) for events in imported)
        typer.echo(f"wrote {count} events of {len(imported)} sessions to {out}")


# -- simulate (a whole lab) ---------------------------------------------------------------------


@app.command("simulate")
def rig_simulate(
    bootstrap: Bootstrap = None,
    prefix: Prefix = None,
    mice: Annotated[int, typer.Option(min=1, help="Number of simulated mice.")] = 3,
    rigs: Annotated[int, typer.Option(min=1, help="Number of rigs.")] = 3,
    days: Annotated[int, typer.Option(min=1, help="Sessions per mouse.")] = 5,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 7,
    wait: Annotated[
        float, typer.Option(help="Seconds to wait for each new assignment before a session.")
    ] = 60.0,
) -> None:
    """Run simulated rigs with simulated mice against Kafka.

    Before each session a rig reads the mouse's latest assignment from the compacted
    assignments topic and runs exactly those parameters.
    """
    from rig.kafka_transport import KafkaRigTransport
    from rig.lab import LabPlan, run_lab

    settings = Settings()
    if bootstrap:
        settings = replace(settings, bootstrap=bootstrap)
    if prefix:
        settings = replace(settings, topic_prefix=prefix)
    transport = KafkaRigTransport(
        settings.bootstrap,
        settings.topics.events,
        settings.topics.assignments,
        client_id="sim-rigs",
    )
    try:
        run = run_lab(LabPlan(n_mice=mice, n_rigs=rigs, n_days=days, seed=seed), transport, wait)
    finally:
        transport.close()
    for record in run.sessions:
        flag = " (stale assignment)" if record.stale_assignment else ""
        typer.echo(
            f"day {record.day + 1} {record.rig_id} {record.mouse_id} "
            f"session {record.assignment.session_number}: {record.started.stage}{flag}"
        )
