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
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from shaping.rig.config import RigConfig
    from shaping.rig.faults import FaultPlan
    from shaping.rig.sim.lab import LabRun
    from shaping.rig.task.adaptation import TaskState
    from shaping.rig.task.parameters import ReachParameters
    from shaping.rig.task.recording import TrialProgress
    from shaping.schemas.events import (
        AssignmentIssued,
        SessionEnded,
        SessionStarted,
        StageTransitioned,
    )

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
FaultPlanText = Annotated[
    str | None,
    typer.Option(
        "--fault-plan",
        hidden=True,
        help="For crash tests only: faults this process injects into itself, e.g. "
        "kill-after-event:60 (docs/rig.md, Testing hooks).",
    ),
]
DEFAULT_CONFIG = Path("rig.toml")


def _echo(message: object = "", **kwargs: Any) -> None:
    """typer.echo of text that may hold data (ids, stages, reasons, evidence): control
    characters and escape sequences are shown escaped (``\\x1b``), line breaks kept."""
    from shaping.schemas.text import printable_lines

    typer.echo(printable_lines(message), **kwargs)


def _secho(message: object = "", **kwargs: Any) -> None:
    """typer.secho, escaped like :func:`_echo`."""
    from shaping.schemas.text import printable_lines

    typer.secho(printable_lines(message), **kwargs)


@contextmanager
def _rig_errors() -> Iterator[None]:
    """Turns rig errors into one red line and an exit code (2: config, 1: anything else)."""
    from shaping.rig.errors import ConfigError, ParameterError, RigError

    try:
        yield
    except (ConfigError, ParameterError) as exc:
        _secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(code=2) from None
    except RigError as exc:
        _secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(code=1) from None


def _load(path: Path, bootstrap: str | None = None) -> RigConfig:
    from shaping.rig.config import load_config

    config = load_config(path)
    if bootstrap:
        config = replace(config, bootstrap=bootstrap)
    return config


def _fault_plan(text: str | None) -> FaultPlan | None:
    """The plan of ``--fault-plan`` (None without it); a plan that does not parse is a usage
    error."""
    if text is None:
        return None
    from shaping.rig.faults import FaultPlan, FaultPlanError

    try:
        plan = FaultPlan.parse(text)
    except FaultPlanError as exc:
        raise typer.BadParameter(str(exc), param_hint="'--fault-plan'") from None
    if not plan.is_empty:
        _secho(f"crash test: fault plan {plan}", fg=typer.colors.YELLOW, err=True)
    return plan


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
        """Prints a line, escaped (data in it cannot reach the terminal as control codes)."""
        from shaping.schemas.text import printable_lines

        self._close_line()
        self.echo(printable_lines(text))

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
        from shaping.schemas.text import printable

        line = printable(line)
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
        from shaping.rig.evidence import evidence_lines, next_session_line

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
        float | None,
        typer.Option(
            min=0,
            help="Seconds to wait for the previous session's decision before the stale "
            "assignment policy applies (default: stale_assignment.max_wait_s of the config).",
        ),
    ] = None,
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
            help="Serve the rig's metrics (shaping_rig_outbox_depth, ...) on this port "
            "(/metrics) while running.",
        ),
    ] = None,
    metrics_host: Annotated[
        str, typer.Option(envvar="SHAPING_METRICS_HOST", help="Address the metrics bind to.")
    ] = "0.0.0.0",
    fault_plan: FaultPlanText = None,
) -> None:
    """Train a mouse: run its assigned session, live, then show the decision on it.

    Uses the latest assignment for the mouse (the cached one when Kafka is unreachable, and
    says so); resumes the mouse's session if the rig stopped in the middle of one.
    """
    from shaping.rig.agent import RunOptions
    from shaping.rig.bootstrap import open_store, rig_agent, rig_codec
    from shaping.rig.reach import reach_results

    if not simulate and (start is not None or speed is not None):
        raise typer.BadParameter("--start and --speed need --simulate", param_hint="--start")
    faults = _fault_plan(fault_plan)
    with _rig_errors():
        rig_config = _load(config, bootstrap)
        display = ConsoleDisplay(typer.echo, live=sys.stdout.isatty(), every=every)
        store = open_store(rig_config, rig_codec())
        agent = rig_agent(rig_config, display, store, store.codec, faults)
        exporter = None
        if metrics_port is not None:
            from shaping.rig.metrics import OutboxDepthExporter

            try:
                exporter = OutboxDepthExporter(
                    rig_config.store_path, rig_config.rig_id, metrics_port, metrics_host
                ).start()
            except OSError as exc:
                _secho(
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
        results = reach_results(store.events(report.session_id))
        _echo(
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
    from shaping.rig.agent import clock_skew_warning
    from shaping.rig.bootstrap import open_store, rig_codec
    from shaping.rig.errors import BrokerUnreachableError
    from shaping.rig.evidence import EJECTED, evidence_lines
    from shaping.rig.link.follow import AssignmentFollower, unreadable_hint
    from shaping.schemas.topics import TopicNames

    with _rig_errors():
        rig_config = _load(config, bootstrap)
        store = open_store(rig_config, rig_codec())
        topics = TopicNames.with_prefix(rig_config.topic_prefix)
        follower = AssignmentFollower(
            store,
            rig_config.link,
            topics.assignments,
            topics.decisions,
            rig_config.mice,
            client_id=f"shaping-rig-{rig_config.rig_id}-status",
            codec=store.codec,
            timeout_ms=int(timeout * 1000),
        )
        try:
            follower.catch_up(timeout)
            broker = "reachable (assignment cache refreshed)"
        except BrokerUnreachableError as exc:
            broker = f"UNREACHABLE ({exc}); the cache below is what the rig last received"
        finally:
            follower.close()
        _echo(f"rig {rig_config.rig_id} (config {rig_config.path})")
        _echo(f"store: {rig_config.store_path}")
        _echo(f"broker {rig_config.bootstrap}: {broker}")
        unsent = store.unsent_count()
        oldest = store.oldest_unsent()
        since = f" (oldest from {oldest:%Y-%m-%d %H:%M:%S} UTC)" if oldest else ""
        _echo(f"outbox: {unsent} event{'s' if unsent != 1 else ''} waiting{since}")
        skew = store.clock_skew()
        if skew is None:
            _echo(
                "clock: skew not measured yet (measured when the rig sends to a topic with "
                "LogAppendTime)"
            )
        else:
            ahead = "ahead of" if skew.smoothed_s >= 0 else "behind"
            _echo(
                f"clock: {abs(skew.smoothed_s):.2f} s {ahead} the broker's (smoothed over "
                f"{skew.samples} sends; latest {skew.latest_s:+.2f} s ± {skew.uncertainty_s:.2f} s "
                f"at {skew.measured_at:%Y-%m-%d %H:%M:%S} UTC)"
            )
        warning = clock_skew_warning(skew)
        if warning is not None:
            _secho(warning, fg=typer.colors.RED)
        _echo(f"stale assignments: {rig_config.stale_assignment.describe()}")
        _echo(f"safety limits: {rig_config.safety.describe()}")
        _echo("mice:")
        for mouse in rig_config.mice:
            _echo(f"  {mouse}:")
            cached = store.cached_assignment(mouse)
            if cached is None:
                _echo("    assignment: none cached (enroll the mouse; run with the broker up)")
            elif cached.assignment.reason == EJECTED:
                _echo(
                    f"    EJECTED: {cached.assignment.reason_detail}; `shaping rig run` refuses it"
                )
            else:
                a = cached.assignment
                _echo(
                    f"    assignment: session {a.session_number}, stage {a.stage} "
                    f"({a.curriculum_name} {a.curriculum_version}; {a.reason}), received "
                    f"{cached.received_at:%Y-%m-%d %H:%M} UTC"
                )
            if cached is not None and cached.assignment.reason != EJECTED:
                _show_unsafe(rig_config, store, cached.assignment)
            unsafe = store.last_unsafe_assignment(mouse)
            if unsafe is not None:
                did = (
                    f"ran the last safe assignment {unsafe.ran_assignment_id}"
                    if unsafe.ran_assignment_id
                    else "refused, nothing ran"
                )
                _echo(
                    f"    last unsafe assignment: {unsafe.at:%Y-%m-%d %H:%M} UTC, "
                    f"{unsafe.assignment_id}: {did} ({unsafe.violations})"
                )
            unreadable = store.undecodable(mouse)
            if unreadable is not None:
                _secho(
                    f"    UNREADABLE: the newest assignment on the broker ({unreadable.describe()}"
                    f"); {unreadable_hint(unreadable.error)}. `shaping rig run` treats the "
                    "cached one as stale",
                    fg=typer.colors.RED,
                )
            stale = store.last_stale_run(mouse)
            if stale is not None:
                did = "ran the cached assignment" if stale.action == "ran_cached" else "refused"
                _echo(
                    f"    last stale assignment: {stale.at:%Y-%m-%d %H:%M} UTC, {did} "
                    f"({stale.reason})"
                )
            waiting = store.unsent_count(mouse)
            if waiting:
                _echo(f"    outbox: {waiting} events waiting")
            open_session = store.open_session(mouse)
            if open_session is not None:
                trials = sum(1 for e in open_session.events if e.event_type == "TrialCompleted")
                _echo(
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
                _echo(f"    last session {last.session_id}: {verdict}")
            followed = store.last_evidence(mouse)
            if followed is not None:
                evidence = followed.assignment
                _echo(
                    f"    evidence of the last decision (received "
                    f"{followed.received_at:%Y-%m-%d %H:%M} UTC):"
                )
                judged = store.decision_with_id(mouse, evidence.causation_id or "")
                for line in evidence_lines(judged, evidence):
                    _echo(f"      {line}")
        agent_calibrations = {**rig_config.valves, **store.calibrations()}
        _echo("valves:")
        for valve in ("left", "right"):
            calibration = agent_calibrations.get(valve)
            if calibration is None:
                _echo(f"  {valve}: not calibrated (rewards only by duration)")
            else:
                _echo(f"  {valve}: {calibration.ml_per_ms:.6g} ml/ms ({calibration.source})")


def _show_unsafe(rig_config: RigConfig, store: Any, cached: AssignmentIssued) -> None:
    """``rig status``: says when the cached assignment lies outside the safety limits, and
    what ``rig run`` will do with it."""
    from shaping.rig.agent import screen_on_rig
    from shaping.rig.errors import RigError

    try:
        screening = screen_on_rig(rig_config, store, cached)
    except RigError:
        return  # `rig run` names what is wrong with it
    if screening.safe:
        return
    violations = "; ".join(v.describe() for v in screening.violations)
    then = (
        f"runs the last safe assignment {screening.run.event_id} instead"
        if screening.run is not None
        else "refuses it, nothing runs"
    )
    _secho(
        f"    UNSAFE: the cached assignment is outside the safety limits ({violations}); "
        f"`shaping rig run` {then} (safety.on_violation = {rig_config.safety.on_violation})",
        fg=typer.colors.RED,
    )


# -- calibrate ----------------------------------------------------------------------------------


@app.command("calibrate")
def rig_calibrate(
    valve: Annotated[
        str | None,
        typer.Argument(help="The valve: left or right (with --history: only that valve)."),
    ] = None,
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
    yes: Annotated[
        bool, typer.Option("--yes", help="Save a plausible calibration without asking.")
    ] = False,
    by: Annotated[
        str | None,
        typer.Option(help="Who calibrates (default: $SHAPING_OPERATOR, else your user name)."),
    ] = None,
    history: Annotated[
        bool, typer.Option("--history", help="Show every calibration kept, oldest first.")
    ] = False,
) -> None:
    """Calibrate a valve: dispense, weigh, and store millilitres per millisecond.

    For each opening time the valve opens PULSES times; weigh the water and type the grams.
    The slope through the origin of volume per opening against opening time is stored and used
    for every reward given by volume. Each measurement's µL per opening and the slope are
    checked against the valve's bounds (config \\[valves.VALVE]; defaults 0.5-20 µL per opening
    and 0.01-0.5 µL/ms plausible, 0.1-50 µL and 0.002-2 µL/ms possible): outside the possible
    range the calibration is refused; outside the plausible range (or with measurements that
    disagree, or openings under 5 ms) a warning is shown and the answer defaults to No, and
    --yes does not save it. Every calibration is kept with its time, who, the rig and the
    values, saved or not (--history shows them).
    """
    import getpass
    import os

    from shaping.rig.bootstrap import open_store, rig_codec
    from shaping.rig.config import SIDES
    from shaping.rig.hardware.calibration import (
        CalibrationPoint,
        check_calibration,
        dispense,
        fit_ml_per_ms,
        parse_grams,
    )
    from shaping.rig.hardware.gpio import GpiozeroValve
    from shaping.rig.task.clock import SystemClock, VirtualClock

    if valve is not None and valve not in SIDES:
        close = difflib.get_close_matches(valve, SIDES, n=1)
        hint = f"; did you mean {close[0]}?" if close else ""
        _secho(
            f"error: no valve {valve!r}{hint} (valves: left, right)", fg=typer.colors.RED, err=True
        )
        raise typer.Exit(code=2)
    if history:
        with _rig_errors():
            _show_calibrations(_load(config), valve)
        return
    if valve is None:
        _secho(
            "error: name the valve to calibrate (left or right), or ask for --history",
            fg=typer.colors.RED,
            err=True,
        )
        raise typer.Exit(code=2)
    durations = ms or [70.0]
    who = by or os.environ.get("SHAPING_OPERATOR") or getpass.getuser()
    with _rig_errors():
        rig_config = _load(config)
        factory: Any = None
        clock: Any = SystemClock()
        if simulate:
            from shaping.rig.sim.reach_box import mock_factory

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
                _echo(
                    f"  {point.ml_per_pulse * 1000:.3f} µL per opening "
                    f"({point.ml_per_pulse / open_ms:.6g} ml/ms)"
                )
        finally:
            device.device.close()
        rate = fit_ml_per_ms(points)
        _echo(
            f"{valve} valve: {rate:.6g} ml/ms: 70 ms gives {rate * 70 * 1000:.2f} µL; "
            f"a 3 µL reward opens it for {0.003 / rate:.1f} ms"
        )
        check = check_calibration(points, rate, rig_config.valve_bounds(valve))
        store = open_store(rig_config, rig_codec())
        values = [p.as_dict() for p in points]
        kept = {"by": who, "rig_id": rig_config.rig_id}
        if check.refused:
            for reason in check.refused:
                _secho(f"REFUSED: {reason}", fg=typer.colors.RED, bold=True, err=True)
            store.record_calibration(
                valve, rate, values, "refused", warnings=check.refused + check.warnings, **kept
            )
            _secho(
                "not saved: impossible for a valve; check the tube, the scale and the grams typed "
                "(kept in `shaping rig calibrate --history`)",
                fg=typer.colors.RED,
                err=True,
            )
            raise typer.Exit(code=1)
        if check.warnings:
            for warning in check.warnings:
                _secho(f"WARNING: {warning}", fg=typer.colors.YELLOW, bold=True, err=True)
            if yes:
                _secho(
                    "not saved: --yes saves only plausible calibrations; run without --yes "
                    "to confirm this one",
                    fg=typer.colors.RED,
                    err=True,
                )
                save = False
            else:
                save = _confirm("Save this implausible calibration anyway?", default=False)
        else:
            save = yes or _confirm("Save this calibration?", default=True)
        if not save:
            store.record_calibration(
                valve, rate, values, "declined", warnings=check.warnings, **kept
            )
            _echo("not saved")
            raise typer.Exit(code=1)
        saved = store.save_calibration(valve, rate, values, warnings=check.warnings, **kept)
        _echo(f"saved in {rig_config.store_path} ({saved.source}); rewards by volume use it")


def _confirm(text: str, default: bool) -> bool:
    try:
        return typer.confirm(text, default=default)
    except (EOFError, typer.Abort):
        return False


def _show_calibrations(rig_config: RigConfig, valve: str | None) -> None:
    """Every calibration kept on this rig (of ``valve`` or of both), oldest first."""
    from shaping.rig.bootstrap import open_store, rig_codec

    records = open_store(rig_config, rig_codec()).calibration_history(valve)
    which = f"the {valve} valve" if valve else "both valves"
    _echo(f"calibrations of {which} on rig {rig_config.rig_id} ({rig_config.store_path}):")
    if not records:
        _echo("  none yet")
    for record in records:
        who = (
            f"by {record.by} on {record.rig_id}"
            if record.by is not None
            else "by ? (kept before the history was)"
        )
        outcome = record.outcome + (", in force" if record.in_force else "")
        _echo(
            f"{record.calibrated_at:%Y-%m-%d %H:%M} UTC  {record.valve:5s}  "
            f"{record.ml_per_ms:.6g} ml/ms ({record.ml_per_ms * 1000:.3g} µL/ms)  {outcome}  {who}"
        )
        measured = "; ".join(
            f"{p['pulses']:g} x {p['open_ms']:g} ms: {p['grams']:g} g" for p in record.points
        )
        _echo(f"    measured: {measured}")
        for warning in record.warnings:
            _echo(f"    {warning}")


def _ask(text: str) -> None:
    try:
        typer.prompt(text, default="", show_default=False, prompt_suffix="\n> ")
    except (EOFError, typer.Abort):
        _secho("error: calibration cancelled (no answer)", fg=typer.colors.RED, err=True)
        raise typer.Exit(code=1) from None


def _ask_grams(text: str, parse: Callable[[str], float]) -> float:
    while True:
        try:
            answer = typer.prompt(text, prompt_suffix="\n> ")
        except (EOFError, typer.Abort):
            _secho("error: calibration cancelled (no weight)", fg=typer.colors.RED, err=True)
            raise typer.Exit(code=1) from None
        try:
            return parse(answer)
        except ValueError as exc:
            _echo(f"  {exc}")


# -- sync ---------------------------------------------------------------------------------------


@app.command("sync")
def rig_sync(
    config: ConfigPath = DEFAULT_CONFIG,
    bootstrap: Bootstrap = None,
    timeout: Annotated[float, typer.Option(min=1, help="Seconds to keep trying.")] = 60.0,
    fault_plan: FaultPlanText = None,
) -> None:
    """Send every event waiting in the outbox and refresh the assignment cache."""
    from shaping.rig.bootstrap import open_store, rig_codec
    from shaping.rig.errors import BrokerUnreachableError
    from shaping.rig.link.drain import OutboxDrainer
    from shaping.rig.link.follow import AssignmentFollower
    from shaping.schemas.topics import TopicNames

    faults = _fault_plan(fault_plan)
    with _rig_errors():
        rig_config = _load(config, bootstrap)
        store = open_store(rig_config, rig_codec())
        before = store.unsent_count()
        drainer = OutboxDrainer(
            store,
            rig_config.link,
            client_id=f"shaping-rig-{rig_config.rig_id}",
            codec=store.codec,
            faults=faults,
        )
        try:
            done = drainer.drain(timeout)
        finally:
            drainer.close()
        left = store.unsent_count()
        _echo(
            f"outbox: sent {before - left} of {before} events"
            + (f" ({drainer.status.reconciled} were already on the broker)" if done else "")
        )
        topics = TopicNames.with_prefix(rig_config.topic_prefix)
        follower = AssignmentFollower(
            store,
            rig_config.link,
            topics.assignments,
            topics.decisions,
            rig_config.mice,
            client_id=f"shaping-rig-{rig_config.rig_id}",
            codec=store.codec,
        )
        try:
            follower.catch_up(min(timeout, 15))
            _echo("assignment cache refreshed")
        except BrokerUnreachableError as exc:
            _echo(f"assignment cache not refreshed: {exc}")
        finally:
            follower.close()
        if not done:
            _secho(
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
    from shaping.rig.reach import import_reach_sessions, load_reach_file, reach_results

    try:
        sessions = load_reach_file(file)
        mouse_id = mouse or file.stem
        imported = import_reach_sessions(sessions, mouse_id, utc_offset)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        _secho(
            f"error: cannot read {file} as reach training data: {type(exc).__name__}: {exc}",
            fg=typer.colors.RED,
            err=True,
        )
        raise typer.Exit(code=2) from None
    _echo("day  date        trials  corr L/R  incorr L/R  missed L/R  resets  spont  d'")
    for day, events in enumerate(imported, start=1):
        r = reach_results(events)
        _echo(
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
        _echo(f"wrote {count} events of {len(imported)} sessions to {out}")


# -- simulate (a whole lab) ---------------------------------------------------------------------


@app.command("simulate")
def rig_simulate(
    bootstrap: Bootstrap = None,
    prefix: Prefix = None,
    mice: Annotated[int, typer.Option(min=1, help="Number of simulated mice.")] = 3,
    rigs: Annotated[int, typer.Option(min=1, help="Number of rigs.")] = 3,
    days: Annotated[int, typer.Option(min=1, help="Sessions per mouse.")] = 5,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 7,
    start: Annotated[
        str | None,
        typer.Option(
            help="First day (YYYY-MM-DD, UTC; sessions from 09:00). Default: the day after the "
            "last day the lab knows for these mice (2026-01-05 for a new lab).",
            show_default=False,
        ),
    ] = None,
    wait: Annotated[
        float, typer.Option(help="Seconds to wait for each new assignment before a session.")
    ] = 60.0,
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            help="A rig config whose [safety] limits every simulated rig applies (default: "
            "the default limits).",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Run simulated rigs with simulated mice against Kafka, continuing the lab.

    Before each session a rig reads the mouse's latest assignment from the compacted
    assignments topic and runs exactly those parameters. A mouse the topic already knows is
    continued, not enrolled again: its newest assignment gives its next session number, and
    the days go on after the last day the lab knows for these mice (the newest assignment's
    date), so session ids never repeat. Every day must lie before today. At the end the run
    waits for the decision on each mouse's last session, so the next run goes on from there.
    Each rig holds an assignment against its safety limits first (--config's [safety]): one
    outside them is refused and printed, and nothing or the last safe assignment runs.
    """
    from shaping.rig.bootstrap import rig_codec
    from shaping.rig.errors import RigError
    from shaping.rig.link.kafka import KafkaRigTransport
    from shaping.rig.sim.lab import LabPlan, continue_lab
    from shaping.schemas.topics import TopicNames

    first_day = _date(start) if start is not None else None
    bootstrap = bootstrap or os.environ.get("SHAPING_BOOTSTRAP", "127.0.0.1:9092")
    topics = TopicNames.with_prefix(prefix or os.environ.get("SHAPING_TOPIC_PREFIX", "shaping"))
    plan = LabPlan(n_mice=mice, n_rigs=rigs, n_days=days, seed=seed)
    with _rig_errors():
        safety = _load(config).safety if config is not None else None
        try:
            transport = KafkaRigTransport(
                bootstrap,
                topics.events,
                topics.assignments,
                client_id="sim-rigs",
                codec=rig_codec(),
            )
        except RigError:
            raise
        except Exception as exc:  # kafka-python: no broker there
            raise RigError(f"cannot reach Kafka at {bootstrap}: {exc}") from exc
        try:
            _read_to_end(transport, timeout_s=max(wait, 10.0))
            run = continue_lab(plan, transport, wait, start=first_day, safety=safety)
        finally:
            transport.close()
    _print_lab_run(run)


def _date(value: str) -> date:
    try:
        return datetime.fromisoformat(value).date()
    except ValueError:
        raise typer.BadParameter(
            f"{value!r} is not a date (YYYY-MM-DD)", param_hint="--start"
        ) from None


def _read_to_end(transport: Any, timeout_s: float) -> None:
    """Reads the assignments topic up to the end it has now into the transport's cache, so the
    lab continues from every assignment already written."""
    import time

    from shaping.rig.errors import RigError

    consumer = transport.consumer
    partitions = list(consumer.assignment())
    ends = consumer.end_offsets(partitions)
    deadline = time.monotonic() + timeout_s
    while any(consumer.position(tp) < ends[tp] for tp in partitions):
        if time.monotonic() > deadline:
            raise RigError(
                f"could not read the assignments topic to its end within {timeout_s:g} s"
            )
        transport.poll(0.2)


def _lab_order(
    run: LabRun, day: int, rig_id: str, mouse_id: str, kind: int
) -> tuple[int, int, int, int]:
    """Where a line of the lab's output goes: by day, rig (``rig-N``), slot (the plan's order
    of the mice), a refusal before the session that ran instead."""
    number = rig_id.rpartition("-")[2]
    slots = [mouse for mouse, _ in run.plan.mice()]
    slot = slots.index(mouse_id) if mouse_id in slots else len(slots)
    return (day, int(number) if number.isdigit() else 0, slot, kind)


def _print_lab_run(run: LabRun) -> None:
    """What ``shaping rig simulate`` did: where it continued, every session, what is pending."""
    plan = run.plan
    last = plan.start + timedelta(days=plan.n_days - 1)
    _echo(f"days {plan.start:%Y-%m-%d} to {last:%Y-%m-%d}")
    for mouse, number in sorted(run.continued.items()):
        _echo(f"{mouse}: continued from session {number}")
    for mouse, why in sorted(run.skipped.items()):
        _echo(f"{mouse}: not run, {why}")
    lines: list[tuple[tuple[int, int, int, int], str, bool]] = []
    for record in run.sessions:
        flag = " (stale assignment)" if record.stale_assignment else ""
        lines.append(
            (
                _lab_order(run, record.day, record.rig_id, record.mouse_id, 1),
                f"day {record.day + 1} {record.rig_id} {record.mouse_id} "
                f"session {record.assignment.session_number}: {record.started.stage}{flag}",
                False,
            )
        )
    for unsafe in run.unsafe:  # before the session that ran instead, if one did
        lines.append(
            (
                _lab_order(run, unsafe.day, unsafe.rig_id, unsafe.mouse_id, 0),
                f"day {unsafe.day + 1} {unsafe.rig_id} {unsafe.mouse_id}: {unsafe.message}",
                True,
            )
        )
    for held in run.held:  # a rig refused the session at the welfare gate
        lines.append(
            (
                _lab_order(run, held.day, held.rig_id, held.mouse_id, 0),
                f"day {held.day + 1} {held.rig_id} {held.mouse_id}: NOT STARTED: {held.message}",
                True,
            )
        )
    for _, line, alarm in sorted(lines, key=lambda entry: entry[0]):
        if alarm:
            _secho(line, fg=typer.colors.RED)
        else:
            _echo(line)
    for mouse, number in sorted(run.pending.items()):
        _echo(
            f"{mouse}: no decision on session {number - 1} yet; the next run continues from "
            "the newest assignment it finds"
        )
