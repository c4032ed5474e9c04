"""``python -m bench.ibl [--quick] [--no-ibllib] [--no-report]``: the IBL ladder's numbers.

Measures, on one synthetic IBL mouse (60 dates of 600 trials by default, ``training`` then
``biased``, the last dates on an ephys rig and with a start delay):

1. metric updates: TrialCompleted events folded per second through ``TrainingCore.handle`` for
   a mouse on the shipped ``ibl`` curriculum (its trial metrics: contrast and block counts,
   reaction times), beside the same events for a mouse on ``basic-shaping`` (a rolling
   accuracy only);
2. recompute: the whole history of the mouse folded from scratch (a fresh state, every event
   from the enrolment on), through ``TrainingCore.handle`` on decoded events, and as
   ``shaping evaluate --trials`` runs it (fits batched ahead, events built from the table and
   folded by the core);
3. ibllib: the same trials judged by ibllib's own ``brainbox.behavior.training``
   (``get_training_status`` per date on the 3-date window, then
   ``pass_through_training_hierachy``) in a separate venv (``.cache/bench-ibllib-venv``,
   created and filled by ``pip install ibllib==4.1.0`` the first time), in the same run; the
   statuses of both are compared date by date.

Prints the figures and rewrites the IBL section of bench/REPORT.md (between its markers;
``python -m bench.run`` keeps that section when it rewrites the rest).
"""

from __future__ import annotations

import argparse
import csv
import gc
import json
import math
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from importlib import metadata
from pathlib import Path

from bench.kafka_env import REPO
from bench.report import Machine
from bench.stats import Figure, Results, format_value

REPORT = Path(__file__).resolve().parent / "REPORT.md"
BEGIN = "<!-- bench.ibl: begin (written by python -m bench.ibl; kept by python -m bench.run) -->"
END = "<!-- bench.ibl: end -->"
VENV = REPO / ".cache" / "bench-ibllib-venv"
IBLLIB = "ibllib==4.1.0"
"""The ibllib the comparisons run (tests/data/ibl_generated was made with it)."""
UPSTREAM = Path(__file__).resolve().parent / "ibl_upstream.py"
CURRICULUM = "ibl"
BASELINE = "basic-shaping"


class BenchError(RuntimeError):
    """The benchmark could not run."""


# --------------------------------------------------------------------------- the workload


@dataclass(frozen=True)
class MousePlan:
    """How the synthetic mouse learns: dates, protocol switch, ephys rig and delay dates."""

    dates: int = 60
    trials: int = 600
    biased_from: int = 25
    ephys_from: int = 50
    delay_from: int = 55
    seed: int = 7


def _phi(x: float) -> float:
    return 0.5 * (1.0 + math.erf(x / math.sqrt(2.0)))


def synthetic_table(path: Path, plan: MousePlan) -> int:
    """Writes one synthetic mouse's trials as an IBL trial table; returns the trial count.

    A psychometric observer (erf with two lapses, like psychofit's model) whose threshold,
    lapses, bias and reaction times improve over the dates; on ``biased`` dates after 90
    trials at probabilityLeft 0.5, blocks of 0.2 and 0.8 alternate and shift its bias by 6
    contrast points either way. A few no-go trials (choice 0). IBL's sign conventions: choice
    -1 is rightward, contrastLeft/contrastRight empty (NaN) on the side without the stimulus.
    """
    rng = random.Random(plan.seed)
    tau = max(plan.biased_from, 1) / 5.0  # learning time constant, in dates
    day = date(2024, 1, 8)
    rows = 0
    columns = [
        "session_date",
        "task_protocol",
        "trial_index",
        "choice",
        "contrastLeft",
        "contrastRight",
        "feedbackType",
        "probabilityLeft",
        "response_times",
        "stimOn_times",
        "ephys_rig",
        "session_start_delay_s",
    ]
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        for s in range(plan.dates):
            while day.weekday() >= 5:
                day += timedelta(days=1)
            biased = s >= plan.biased_from
            protocol = "biased" if biased else "training"
            contrasts = [100.0, 50.0]
            if s >= 0.6 * tau:
                contrasts += [25.0, 12.5]
            if s >= 1.2 * tau:
                contrasts += [6.25, 0.0]
            threshold = 8.0 + 55.0 * math.exp(-s / tau)
            lapse = 0.03 + 0.25 * math.exp(-s / tau)
            bias = 1.0 + 12.0 * math.exp(-s / (0.8 * tau))
            rt_scale = 0.35 + 1.8 * math.exp(-s / (1.2 * tau))
            no_go = 0.01 + 0.05 * math.exp(-s / tau)
            block, left_in_block = 0.5, 90
            t = 2.0
            for i in range(plan.trials):
                if biased:
                    left_in_block -= 1
                    if left_in_block <= 0:
                        block = 0.8 if block != 0.8 else 0.2
                        left_in_block = rng.randint(20, 100)
                c = rng.choice(contrasts)
                left = rng.random() < block  # the block's prior on the stimulus side
                signed = -c if left else c
                shift = {0.8: 6.0, 0.2: -6.0}.get(block, 0.0) if biased else 0.0
                p_right = lapse + (1 - 2 * lapse) * _phi((signed - bias - shift) / threshold)
                stim_on = t + rng.uniform(0.5, 1.5)
                if rng.random() < no_go:
                    choice, response = 0, stim_on + 60.0
                else:
                    choice = -1 if rng.random() < p_right else 1
                    slow = 1.0 + (1.0 - c / 100.0)
                    response = stim_on + rng.lognormvariate(math.log(rt_scale * slow), 0.5)
                correct = (choice == -1 and not left) or (choice == 1 and left)
                writer.writerow(
                    [
                        day.isoformat(),
                        protocol,
                        i,
                        choice,
                        f"{c / 100:g}" if left else "",
                        "" if left else f"{c / 100:g}",
                        1 if correct else -1,
                        block,
                        f"{response:.4f}",
                        f"{stim_on:.4f}",
                        "true" if s >= plan.ephys_from else "false",
                        1000.0 if s >= plan.delay_from else 0.0,
                    ]
                )
                t = response + 1.0
                rows += 1
            day += timedelta(days=1)
    return rows


# --------------------------------------------------------------------------- our side


def _events_for(table: Path, curriculum: str):  # type: ignore[no-untyped-def]
    """The mouse's events as a rig would send them (built before any clock starts): the
    enrolment, then per session its events, each session run at the stage the core assigned
    after the previous one (found by folding once, untimed)."""
    from shaping.schemas.events import MouseEnrolled
    from shaping.services.curricula.catalog import default_catalog
    from shaping.services.domain import TrainingCore, initial_state
    from shaping.services.operator.ibl_trials import read_trials, session_events

    catalog = default_catalog()
    engine = catalog.get(curriculum)
    sessions = read_trials(table)
    mouse = f"bench-{curriculum}"
    core = TrainingCore(catalog)
    state = initial_state(mouse)
    enrol = MouseEnrolled(
        event_id=f"{mouse}-enrol",
        mouse_id=mouse,
        occurred_at=datetime.fromisoformat(sessions[0].session_date + "T07:00:00+00:00"),
        curriculum_name=engine.name,
        curriculum_version=engine.version,
    )
    state, _ = core.handle(state, enrol)
    per_session = []
    for number, session in enumerate(sessions):
        assignment = state.last_assignment
        assert assignment is not None
        events = session_events(
            session,
            mouse_id=mouse,
            session_id=f"{mouse}-{number}",
            stage=assignment.stage,
            curriculum_name=assignment.curriculum_name,
            curriculum_version=assignment.curriculum_version,
            start=datetime.fromisoformat(session.session_date + "T08:00:00+00:00"),
        )
        for event in events:
            state, _ = core.handle(state, event)
        per_session.append(events)
    return catalog, enrol, per_session, sessions


def fold_trials(catalog, enrol, per_session) -> tuple[float, int]:  # type: ignore[no-untyped-def]
    """Seconds spent folding the TrialCompleted events alone (session starts and ends are
    folded too, off the clock); returns (seconds, trials)."""
    from shaping.schemas.events import TrialCompleted
    from shaping.services.domain import TrainingCore, initial_state

    core = TrainingCore(catalog)
    state, _ = core.handle(initial_state(enrol.mouse_id), enrol)
    spent, trials = 0.0, 0
    for events in per_session:
        state, _ = core.handle(state, events[0])
        body = [e for e in events if isinstance(e, TrialCompleted)]
        start = time.perf_counter()
        for event in body:
            state, _ = core.handle(state, event)
        spent += time.perf_counter() - start
        trials += len(body)
        state, _ = core.handle(state, events[-1])
    return spent, trials


def recompute(catalog, enrol, per_session) -> tuple[float, float, list[str]]:  # type: ignore[no-untyped-def]
    """Folds the whole history into a fresh state, as a replay of a stored history can: each
    session's start, its trials as one run (``TrainingCore.handle_trials``), its end; returns
    (seconds in all, seconds deciding at session ends, the status after each session)."""
    from shaping.schemas.events import SessionEnded, StageTransitioned
    from shaping.services.domain import TrainingCore, initial_state

    core = TrainingCore(catalog)
    statuses: list[str] = []
    deciding = 0.0
    start = time.perf_counter()
    state, _ = core.handle(initial_state(enrol.mouse_id), enrol)
    for events in per_session:
        opening, *body, ending = events
        assert isinstance(ending, SessionEnded)
        state, _ = core.handle(state, opening)
        state, _ = core.handle_trials(state, body)
        mark = time.perf_counter()
        state, outputs = core.handle(state, ending)
        deciding += time.perf_counter() - mark
        statuses.extend(o.to_stage for o in outputs if isinstance(o, StageTransitioned))
    return time.perf_counter() - start, deciding, statuses


def recompute_batched(catalog, enrol, per_session) -> tuple[float, float, list[str]]:  # type: ignore[no-untyped-def]
    """As :func:`recompute`, with the fits of the whole history first fitted together, in one
    lockstep run, from the events (``prefetch_history_fits``, what a replay of a stored history
    can do); returns (seconds in all, seconds of that prefetch, the statuses)."""
    from shaping.services.operator.ibl_trials import prefetch_history_fits

    events = [enrol, *(e for session in per_session for e in session)]
    start = time.perf_counter()
    prefetch_history_fits(events, catalog.get(CURRICULUM))
    fitted = time.perf_counter() - start
    seconds, _, statuses = recompute(catalog, enrol, per_session)
    return fitted + seconds, fitted, statuses


def through_runtime(sessions, curriculum: str) -> tuple[float, list[str]]:  # type: ignore[no-untyped-def]
    """``shaping evaluate --trials``'s path: fits batched ahead, events built from the table
    and folded by the core."""
    from shaping.services.curricula.catalog import default_catalog
    from shaping.services.operator.ibl_trials import evaluate_sessions

    catalog = default_catalog()
    start = time.perf_counter()
    statuses = evaluate_sessions(sessions, catalog.get(curriculum), catalog)
    return time.perf_counter() - start, [s.status for s in statuses]


# --------------------------------------------------------------------------- ibllib's side


def venv_python(venv: Path = VENV, log: Callable[[str], None] = print) -> Path:
    """The python of a venv that has ibllib, creating and filling it the first time.

    ``pip install ibllib==4.1.0`` (:data:`IBLLIB`; it brings ONE, iblutil, psychofit,
    matplotlib, seaborn, boto3...);
    when that fails, ibllib without its dependencies plus what ``brainbox.behavior.training``
    and ``ibllib.pipes.training_status`` import.
    """
    python = venv / "bin" / "python"
    probe = [
        str(python),
        "-c",
        "import brainbox.behavior.training, ibllib.pipes.training_status",
    ]
    if python.exists() and subprocess.run(probe, capture_output=True).returncode == 0:
        return python
    log(f"  creating {venv} with ibllib (once; several minutes) ...")
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(python), "-m", "pip", "install", "--quiet"]
    done = subprocess.run([*pip, IBLLIB], capture_output=True, text=True)
    if done.returncode != 0:
        log("  pip install ibllib failed; trying ibllib without its dependencies ...")
        minimal = [
            "numpy",
            "scipy",
            "pandas",
            "matplotlib",
            "seaborn",
            "psychofit",
            "iblutil",
            "ONE-api",
            "boto3",
        ]
        subprocess.run([*pip, "--no-deps", IBLLIB], check=True)
        subprocess.run([*pip, *minimal], check=True)
    result = subprocess.run(probe, capture_output=True, text=True)
    if result.returncode != 0:
        tail = (result.stderr or "").strip().splitlines()[-1:]
        raise BenchError(f"ibllib is not importable in {venv}: {' '.join(tail)}")
    return python


def run_ibllib(python: Path, table: Path, repeats: int) -> dict[str, object]:
    """ibllib's statuses and timings for the table (its own process and venv)."""
    done = subprocess.run(
        [str(python), str(UPSTREAM), str(table), str(repeats)],
        capture_output=True,
        text=True,
        env={**os.environ, "MPLBACKEND": "Agg"},
    )
    if done.returncode != 0:
        raise BenchError(f"ibllib run failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


# --------------------------------------------------------------------------- many mice


def many_mice(folder: Path, count: int, plan: MousePlan) -> tuple[Path, list[Path], int]:
    """``count`` synthetic mice (the plan, seeds plan.seed + 101...): one table per mouse (for
    ibllib) and one table of them all with a ``subject`` column (for ``evaluate --trials``);
    returns (that table, the per-mouse tables, the trials in all)."""
    paths: list[Path] = []
    total = 0
    combined = folder / "mice.csv"
    with combined.open("w", newline="", encoding="utf-8") as out:
        writer = csv.writer(out)
        for number in range(1, count + 1):
            path = folder / f"mouse-{number:02d}.csv"
            mouse = MousePlan(
                dates=plan.dates,
                trials=plan.trials,
                biased_from=plan.biased_from,
                ephys_from=plan.ephys_from,
                delay_from=plan.delay_from,
                seed=plan.seed + 100 + number,
            )
            total += synthetic_table(path, mouse)
            paths.append(path)
            with path.open(newline="", encoding="utf-8") as handle:
                reader = csv.reader(handle)
                header = next(reader)
                if number == 1:
                    writer.writerow(["subject", *header])
                for row in reader:
                    writer.writerow([path.stem, *row])
    return combined, paths, total


# --------------------------------------------------------------------------- the run


def forget_fits() -> None:
    """Empties the psychometric fit cache, so a timed run fits every window itself."""
    from shaping.services.domain import psychometric

    clear = getattr(getattr(psychometric, "_fit", None), "cache_clear", None)
    if clear is not None:
        clear()


def fits_made() -> int | None:
    """Psychometric fits computed since :func:`forget_fits` (None: not known)."""
    from shaping.services.domain import psychometric

    info = getattr(getattr(psychometric, "_fit", None), "cache_info", None)
    return None if info is None else int(info().misses)


def _timed(repeats: int, run: Callable[[], float]) -> list[float]:
    seconds = []
    for _ in range(repeats):
        forget_fits()
        gc.collect()
        seconds.append(run())
    return seconds


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


@dataclass
class Outcome:
    """Everything the report needs."""

    results: Results
    plan: MousePlan
    n_trials: int
    ours: list[str]
    theirs: list[str] | None
    dates: list[str]
    ibllib_versions: dict[str, str]
    seconds: float
    our_fits: int | None = None
    their_fits: int | None = None
    mice: int = 0
    mice_trials: int = 0
    mice_agree: tuple[int, int] | None = None


def measure(plan: MousePlan, repeats: int, with_ibllib: bool, mice: int = 0) -> Outcome:
    began = time.perf_counter()
    results = Results()
    with tempfile.TemporaryDirectory(prefix="bench-ibl-") as folder:
        table = Path(folder) / "mouse.csv"
        n_trials = synthetic_table(table, plan)
        print(f"IBL: one mouse, {plan.dates} dates x {plan.trials} trials ({n_trials:,})")
        catalog, enrol, per_session, sessions = _events_for(table, CURRICULUM)
        base = _events_for(table, BASELINE)

        counts: set[int] = set()

        def fold(which: tuple) -> Callable[[], float]:  # type: ignore[type-arg]
            def run() -> float:
                seconds, trials = fold_trials(*which[:3])
                counts.add(trials)
                return trials / seconds

            return run

        rates = _timed(repeats, fold((catalog, enrol, per_session)))
        results.add(
            Figure(
                "ibl",
                f"TrialCompleted folded by TrainingCore.handle, mouse on {CURRICULUM}",
                "trial events/s",
                tuple(rates),
                f"{n_trials:,} trials; the IBL trial metrics updated on every trial",
            )
        )
        rates = _timed(repeats, fold(base[:3]))
        results.add(
            Figure(
                "ibl",
                f"the same trials, mouse on {BASELINE}",
                "trial events/s",
                tuple(rates),
                "rolling accuracy only: the baseline",
            )
        )
        if counts != {n_trials}:
            raise BenchError(f"folded {counts} trials, expected {n_trials}")

        ours: list[str] = []
        deciding: list[float] = []

        def whole() -> float:
            seconds, decide, statuses = recompute(catalog, enrol, per_session)
            deciding.append(decide)
            ours[:] = statuses
            return seconds

        seconds = _timed(repeats, whole)
        fits = fits_made()  # of the last repeat, which started with no fit cached
        results.add(
            Figure(
                "ibl",
                "recompute one mouse from scratch: TrainingCore",
                "ms",
                tuple(1000 * x for x in seconds),
                f"{plan.dates} sessions x {plan.trials} trials, every event from the "
                "enrolment on, fresh state",
            )
        )
        results.add(
            Figure(
                "ibl",
                "of which: the decisions (SessionEnded: windows, psychometric fits)",
                "ms",
                tuple(1000 * x for x in deciding),
                f"{plan.dates} decisions",
            )
        )
        batched: list[float] = []
        batched_statuses: list[str] = []

        def whole_batched() -> float:
            seconds, fitted, statuses = recompute_batched(catalog, enrol, per_session)
            batched.append(fitted)
            batched_statuses[:] = statuses
            return seconds

        seconds = _timed(repeats, whole_batched)
        results.add(
            Figure(
                "ibl",
                "recompute one mouse from scratch, fits batched ahead: TrainingCore",
                "ms",
                tuple(1000 * x for x in seconds),
                "prefetch_history_fits (every window's fits in one lockstep run, from the "
                "events) then the same fold; all timed",
            )
        )
        results.add(
            Figure(
                "ibl",
                "of which: the batched fits (prefetch_history_fits)",
                "ms",
                tuple(1000 * x for x in batched),
                f"{fits} fits",
            )
        )
        if batched_statuses != ours:
            raise BenchError("the batched recompute and the core disagree on the statuses")
        runtime_statuses: list[str] = []

        def runtime() -> float:
            spent, statuses = through_runtime(sessions, CURRICULUM)
            runtime_statuses[:] = statuses
            return spent

        seconds = _timed(repeats, runtime)
        results.add(
            Figure(
                "ibl",
                "recompute as shaping evaluate --trials runs it",
                "ms",
                tuple(1000 * x for x in seconds),
                "fits batched ahead from the table (prefetch), events built (each session's "
                "first trial validated, the others its copies), folded by "
                "TrainingCore.handle_gated, each session's trials as one run by handle_trials",
            )
        )
        if runtime_statuses != ours:
            raise BenchError("evaluate --trials and the recompute disagree on the statuses")

        theirs: list[str] | None = None
        their_fits: int | None = None
        versions: dict[str, str] = {}
        dates = [s.session_date for s in sessions]
        python: Path | None = None
        if with_ibllib:
            print("  ibllib: preparing its venv ...", flush=True)
            python = venv_python()
            upstream = run_ibllib(python, table, repeats)
            theirs = list(upstream["statuses"])  # type: ignore[call-overload]
            their_fits = int(upstream["fits"])  # type: ignore[call-overload]
            versions = dict(upstream["versions"])  # type: ignore[call-overload]
            results.add(
                Figure(
                    "ibl",
                    "ibllib: get_training_status per date + pass_through_training_hierachy",
                    "ms",
                    tuple(1000 * x for x in upstream["seconds"]),  # type: ignore[attr-defined]
                    f"ibllib {versions.get('ibllib')}, trials already in numpy arrays per date",
                )
            )
            agree = sum(a == b for a, b in zip(ours, theirs, strict=True))
            print(f"  statuses agree with ibllib on {agree}/{len(ours)} dates", flush=True)
        mice_agree: tuple[int, int] | None = None
        mice_trials = 0
        if mice:
            combined, paths, mice_trials = many_mice(Path(folder), mice, plan)
            from shaping.services.operator.ibl_trials import read_trials

            print(
                f"  {mice} mice ({mice_trials:,} trials): shaping evaluate --trials ...", flush=True
            )
            everyone = read_trials(combined)
            by_mouse: dict[str, list[str]] = {}

            def evaluate_all() -> float:
                from shaping.services.curricula.catalog import default_catalog
                from shaping.services.operator.ibl_trials import evaluate_sessions

                catalog_ = default_catalog()
                start = time.perf_counter()
                found = evaluate_sessions(everyone, catalog_.get(CURRICULUM), catalog_)
                spent = time.perf_counter() - start
                by_mouse.clear()
                for status in found:
                    by_mouse.setdefault(status.subject, []).append(status.status)
                return spent

            seconds = _timed(repeats, evaluate_all)
            results.add(
                Figure(
                    "ibl",
                    f"evaluate --trials, {mice} mice in one table",
                    "ms",
                    tuple(1000 * x for x in seconds),
                    f"{mice} x {plan.dates} dates x {plan.trials} trials; each mouse's fits "
                    "batched ahead from the table",
                )
            )
            if python is not None:
                print(f"  ibllib: the same {mice} mice ...", flush=True)
                totals = [0.0] * repeats
                agree, dates_all = 0, 0
                for path in paths:
                    upstream = run_ibllib(python, path, repeats)
                    for index, value in enumerate(upstream["seconds"]):  # type: ignore[arg-type]
                        totals[index] += float(value)
                    mine = by_mouse.get(path.stem, [])
                    theirs_mouse = list(upstream["statuses"])  # type: ignore[call-overload]
                    agree += sum(a == b for a, b in zip(mine, theirs_mouse, strict=True))
                    dates_all += len(theirs_mouse)
                mice_agree = (agree, dates_all)
                results.add(
                    Figure(
                        "ibl",
                        f"ibllib: the same {mice} mice, one table each",
                        "ms",
                        tuple(1000 * x for x in totals),
                        "get_training_status per date + pass_through_training_hierachy, "
                        "summed over the mice",
                    )
                )
                print(f"  statuses agree with ibllib on {agree}/{dates_all} dates", flush=True)
    return Outcome(
        results,
        plan,
        n_trials,
        ours,
        theirs,
        dates,
        versions,
        time.perf_counter() - began,
        fits,
        their_fits,
        mice,
        mice_trials,
        mice_agree,
    )


# --------------------------------------------------------------------------- the report


def _find(results: Results, prefix: str) -> Figure | None:
    return next((f for f in results.figures if f.name.startswith(prefix)), None)


def section(outcome: Outcome, command: str) -> str:
    """The report's IBL section, markers included."""
    machine = Machine.describe()
    results, plan = outcome.results, outcome.plan
    lines = [
        BEGIN,
        "## IBL training status: metric updates, recompute, ibllib",
        "",
        f"Written by `{command}` on {datetime.now().astimezone():%Y-%m-%d %H:%M %Z} "
        f"({outcome.seconds:.0f} s). Regenerate with `make bench-ibl` or that command.",
        "",
        f"- Machine: {machine.cpus} CPUs ({machine.cpu_model}), {machine.ram_gib:.0f} GiB RAM, "
        f"{machine.system}; Shaping commit {machine.commit}",
        f"- Shaping side: Python {platform.python_version()}; numpy {_version('numpy')}, "
        f"scipy {_version('scipy')}, psychofit {_version('psychofit')}, "
        f"pydantic {_version('pydantic')}",
    ]
    if outcome.ibllib_versions:
        v = outcome.ibllib_versions
        lines.append(
            f"- ibllib side (its own venv, `.cache/bench-ibllib-venv`): ibllib {v['ibllib']}, "
            f"psychofit {v['psychofit']}, numpy {v['numpy']}, scipy {v['scipy']}"
        )
    lines += [
        "",
        "| Measurement | Median | Unit | All repeats | Notes |",
        "|---|---:|---|---|---|",
    ]
    for f in results.figures:
        repeats = ", ".join(format_value(v, f.unit) for v in f.repeats)
        lines.append(
            f"| {f.name} | **{format_value(f.value, f.unit)}** | {f.unit} | {repeats} | {f.note} |"
        )
    lines += ["", *readings(outcome), "", *method(plan, outcome.n_trials), END]
    return "\n".join(lines) + "\n"


def _ratio(theirs: Figure | None, ours: Figure | None) -> str:
    """``ibllib's time / ours`` as ``12.3x faster`` (or ``0.8x: slower``)."""
    if theirs is None or ours is None or ours.value <= 0:
        return "n/a"
    ratio = theirs.value / ours.value
    return f"{ratio:.1f}x faster than ibllib" if ratio >= 1 else f"{1 / ratio:.1f}x slower"


def readings(outcome: Outcome) -> list[str]:
    results = outcome.results
    ibl = _find(results, "TrialCompleted folded")
    base = _find(results, "the same trials")
    whole = _find(results, "recompute one mouse from scratch: TrainingCore")
    deciding = _find(results, "of which: the decisions")
    batched = _find(results, "recompute one mouse from scratch, fits batched")
    batch_fits = _find(results, "of which: the batched fits")
    runtime = _find(results, "recompute as shaping evaluate")
    upstream = _find(results, "ibllib: get_training_status")
    many = _find(results, "evaluate --trials,")
    many_upstream = _find(results, "ibllib: the same")
    dates = outcome.plan.dates
    out = []
    if ibl and base:
        ours, theirs = 1e6 / ibl.value, 1e6 / base.value
        text = (
            f"- A trial event costs {ours:.1f} µs in the core for a mouse on the IBL ladder "
            f"against {theirs:.1f} µs on basic-shaping"
        )
        if abs(ours - theirs) <= 0.1 * theirs:
            text += (
                ": the same within this machine's noise. The IBL trial metrics (counts per "
                "contrast and block, easy trials, 0% contrast reaction times) are updated on "
                "every trial whatever the curriculum, so the curriculum does not change the cost."
            )
        else:
            text += f" ({ours - theirs:+.1f} µs)."
        out.append(text)
    if whole and deciding:
        share = deciding.value / whole.value
        out.append(
            f"- Recomputing the whole history ({dates} sessions, {outcome.n_trials:,} trials) "
            f"from scratch, each decision fitting its window when it is made (as the processor "
            f"decides; each session's trials folded as one run by `TrainingCore.handle_trials`), "
            f"takes {whole.value / 1000:.2f} s ({_ratio(upstream, whole)}): "
            f"{deciding.value / 1000:.2f} s ({share:.0%}) for the {dates} decisions "
            f"({deciding.value / dates:.0f} ms each), the rest for folding the trials "
            f"({(whole.value - deciding.value) / 1000 / outcome.n_trials * 1e6:.0f} µs each)."
            + (
                f" The decisions ran {outcome.our_fits} psychometric fits, about "
                f"{deciding.value / outcome.our_fits:.0f} ms each with the rest of the decision "
                "(a decision's fits run together, in lockstep)."
                if outcome.our_fits
                else ""
            )
        )
    if batched and batch_fits:
        out.append(
            f"- With the history's fits batched ahead (all {outcome.our_fits or ''} in one "
            f"lockstep run, from the events), the same recompute takes "
            f"{batched.value / 1000:.2f} s ({_ratio(upstream, batched)}): "
            f"{batch_fits.value / 1000:.2f} s of fits, the rest folding the events and "
            "deciding from the cached fits."
        )
    if runtime and whole:
        out.append(
            f"- As `shaping evaluate --trials` runs it (the fits batched ahead from the table, "
            f"then events built and folded by the core, each session's trials as one run) one "
            f"mouse takes "
            f"{runtime.value / 1000:.2f} s ({_ratio(upstream, runtime)})."
        )
    if many:
        text = (
            f"- `evaluate --trials` on {outcome.mice} mice in one table "
            f"({outcome.mice_trials:,} trials) takes {many.value / 1000:.2f} s"
        )
        if many_upstream:
            text += (
                f", ibllib {many_upstream.value / 1000:.2f} s on the same mice: "
                f"{_ratio(many_upstream, many)}"
            )
        if outcome.mice_agree:
            agree, total = outcome.mice_agree
            text += f"; the statuses agree on {agree}/{total} dates"
        out.append(text + ".")
    if upstream:
        out.append(
            f"- ibllib takes {upstream.value / 1000:.2f} s for the {dates} statuses of the one "
            "mouse, its trials already in memory as numpy arrays; nearly all of it is psychofit "
            "(5 Nelder-Mead restarts per fit, scipy's fmin, one likelihood evaluation at a "
            "time). Shaping runs the same fits, bit for bit (services/domain/psychometric.py), "
            "with the runs of many fits in lockstep and their likelihoods vectorised."
        )
        if outcome.our_fits and outcome.their_fits:
            out.append(
                f"- ibllib ran {outcome.their_fits} fits and Shaping {outcome.our_fits}: the "
                "`ibl` curriculum reports the pooled fit and both block fits at every decision "
                "where trials exist (its report lists `psych_*(dates=3)` and `crit_1a`/`crit_1b` "
                "unconditionally, and the rules language has no conditional expression), where "
                "ibllib fits the pooled window only when a training date is in it and the two "
                "blocks only when none is. A block without trials is never fitted (NaN, as "
                "ibllib), and a window met again is read from the fit cache (keyed by the "
                "window's exact data and position): the extra fits are the pooled fits of "
                "biased windows, which only a change of the curriculum's report can drop."
            )
    target = [
        ("recompute of the stored history, fits batched ahead", batched),
        ("recompute as the processor runs it, one decision at a time", whole),
        ("`evaluate --trials`, one mouse", runtime),
    ]
    if upstream:
        parts = []
        for label, figure in target:
            if figure is not None:
                ratio = upstream.value / figure.value
                verdict = "met" if ratio >= 10 else "not met"
                parts.append(f"{label} {ratio:.1f}x ({verdict})")
        if many and many_upstream:
            ratio = many_upstream.value / many.value
            verdict = "met" if ratio >= 10 else "not met"
            parts.append(f"`evaluate --trials` on {outcome.mice} mice {ratio:.1f}x ({verdict})")
        out.append(
            "- Target of issue 14 item 3 (at least 10x faster than ibllib in the same run): "
            + "; ".join(parts)
            + "."
        )
    if outcome.theirs is not None:
        agree = sum(a == b for a, b in zip(outcome.ours, outcome.theirs, strict=True))
        differ = [
            f"{d}: ours {a!r}, ibllib {b!r}"
            for d, a, b in zip(outcome.dates, outcome.ours, outcome.theirs, strict=True)
            if a != b
        ]
        text = f"- The statuses agree with ibllib's on {agree}/{len(outcome.ours)} dates"
        text += "." if not differ else f"; they differ on {'; '.join(differ)}."
        reached = sorted(set(outcome.ours), key=outcome.ours.index)
        text += f" The mouse went through {', '.join(reached)}."
        out.append(text)
    return out


def method(plan: MousePlan, n_trials: int) -> list[str]:
    return [
        "Method: one synthetic mouse (`bench.ibl.synthetic_table`, seed "
        f"{plan.seed}): {plan.dates} dates x {plan.trials} trials = {n_trials:,} trials, "
        f"`training` for {plan.biased_from} dates then `biased`, on an ephys rig from date "
        f"{plan.ephys_from + 1} and with a 1000 s start delay from date {plan.delay_from + 1}; "
        "a psychometric observer that improves over the dates. The trials go through "
        "`shaping.services.operator.ibl_trials` into events (built before the clocks start). "
        "Metric updates: only the TrialCompleted events are timed (session starts and ends "
        "folded off the clock). Recompute: every event of the mouse folded into a fresh "
        "state, decisions included; the psychometric fit cache is emptied before every timed "
        "run (so every figure fits every window itself). Many mice: the same plan with other "
        "seeds, one table with a subject column for `evaluate --trials` (read before the "
        "clock starts), one table per mouse for ibllib. ibllib runs in its own process and "
        "venv on the same CSVs, "
        "timed from per-date numpy arrays to the last status, `np.random.seed(0)` before each "
        "window, as ibllib's tests do. Median of the repeats; the machine is shared, so "
        "compare within one run.",
    ]


def write_section(report: Path, text: str) -> None:
    """Replaces the IBL section of the report (appends it when there is none)."""
    old = report.read_text(encoding="utf-8") if report.exists() else "# Shaping benchmarks\n"
    if BEGIN in old and END in old:
        head, rest = old.split(BEGIN, 1)
        tail = rest.split(END, 1)[1].lstrip("\n")
        new = head + text + ("\n" + tail if tail else "")
    else:
        new = old.rstrip("\n") + "\n\n" + text
    report.write_text(new, encoding="utf-8")


def kept_section(report: Path) -> str:
    """The IBL section of an existing report (empty when there is none), for bench.run."""
    if not report.exists():
        return ""
    text = report.read_text(encoding="utf-8")
    if BEGIN not in text or END not in text:
        return ""
    return BEGIN + text.split(BEGIN, 1)[1].split(END, 1)[0] + END + "\n"


def parse(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.ibl", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="20 dates of 450 trials, 1 repeat")
    parser.add_argument("--dates", type=int, help="dates of the mouse (default 60)")
    parser.add_argument("--trials", type=int, help="trials per date (default 600)")
    parser.add_argument("--repeats", type=int, help="repeats of every measurement (default 3)")
    parser.add_argument(
        "--mice", type=int, help="mice of the evaluate --trials figure (default 8; 0: none)"
    )
    parser.add_argument("--no-ibllib", action="store_true", help="skip the ibllib comparison")
    parser.add_argument("--report", type=Path, default=REPORT, help="the report to update")
    parser.add_argument("--no-report", action="store_true", help="print only")
    args = parser.parse_args(list(argv))
    if args.mice is not None and args.mice < 0:
        parser.error("--mice must be 0 or more")
    for name in ("dates", "trials", "repeats"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name} must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse(argv)
    plan = (
        MousePlan(dates=20, trials=450, biased_from=8, ephys_from=14, delay_from=17)
        if (args.quick)
        else MousePlan()
    )
    if args.dates or args.trials:
        plan = MousePlan(
            dates=args.dates or plan.dates,
            trials=args.trials or plan.trials,
            biased_from=plan.biased_from,
            ephys_from=plan.ephys_from,
            delay_from=plan.delay_from,
        )
    repeats = args.repeats or (1 if args.quick else 3)
    try:
        mice = args.mice if args.mice is not None else (3 if args.quick else 8)
        outcome = measure(plan, repeats, with_ibllib=not args.no_ibllib, mice=mice)
    except BenchError as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        return 1
    command = " ".join(["python -m bench.ibl", *argv])
    for line in readings(outcome):
        print(line)
    if not args.no_report:
        write_section(args.report, section(outcome, command))
        print(f"wrote the IBL section of {args.report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
