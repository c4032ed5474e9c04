"""``shaping curriculum ...``, ``shaping evaluate`` and ``shaping migrate``.

Everything heavy (PyYAML, SQLAlchemy, Kafka) is imported inside the commands, so importing
this module costs nothing to the rig commands of the same program.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from shaping.services.cli.interventions import Wait
from shaping.services.cli.options import fail, requester, settings_with
from shaping.services.operator.interventions import DEFAULT_WAIT_S

if TYPE_CHECKING:
    from shaping.schemas.codec import EventCodec
    from shaping.services.adapters.settings import Settings
    from shaping.services.curricula.engine import CompiledCurriculum
    from shaping.services.curricula.errors import Problem
    from shaping.services.domain.curriculum import CurriculumCatalog

app = typer.Typer(
    help="Curricula as data: validate, show, render, diff, import, publish.",
    no_args_is_help=True,
)
import_app = typer.Typer(help="Convert a curriculum of another system.", no_args_is_help=True)
app.add_typer(import_app, name="import")

Files = Annotated[
    list[Path],
    typer.Argument(help="Curriculum files (Shaping YAML/JSON, AIND JSON or mtrain YAML)."),
]
File = Annotated[Path, typer.Argument(help="A curriculum file.")]
Out = Annotated[Path | None, typer.Option("--out", "-o", help="Write here instead of stdout.")]


def _print_problems(problems: list[Problem]) -> None:
    for problem in problems:
        colour = typer.colors.RED if problem.severity == "error" else typer.colors.YELLOW
        typer.secho(str(problem), fg=colour, err=True)


def _load(path: Path) -> CompiledCurriculum:
    from shaping.services.curricula.errors import CurriculumInvalid, ImportFailed
    from shaping.services.curricula.sources import load_any

    try:
        return load_any(path)
    except (CurriculumInvalid, ImportFailed) as exc:
        _print_problems(exc.problems)
        fail(f"{path}: rejected")


def _write(out: Path | None, data: bytes | str) -> None:
    if out is None:
        if isinstance(data, bytes):
            sys.stdout.buffer.write(data)
        else:
            typer.echo(data, nl=not data.endswith("\n"))
        return
    if isinstance(data, bytes):
        out.write_bytes(data)
    else:
        out.write_text(data, encoding="utf-8")
    typer.echo(f"wrote {out}", err=True)


@app.command()
def validate(files: Files) -> None:
    """Check curricula completely: syntax, names, metrics, rules, the stage graph.

    Every problem is reported with its file, line, stage and rule; exits with 1 if any file
    has an error (warnings do not fail).
    """
    from shaping.services.curricula.errors import CurriculumInvalid, ImportFailed
    from shaping.services.curricula.sources import convert, detect
    from shaping.services.curricula.validate import check_curriculum

    failed = 0
    for path in files:
        try:
            kind = detect(path)
            if kind == "shaping":
                from shaping.services.curricula.loader import check_file

                compiled, problems = check_file(path)
            else:
                compiled, problems = check_curriculum(convert(path, kind), file=str(path))
        except (CurriculumInvalid, ImportFailed) as exc:
            compiled, problems = None, exc.problems
        _print_problems(problems)
        if compiled is None:
            failed += 1
            typer.secho(f"invalid: {path}", fg=typer.colors.RED)
        else:
            schema = compiled.document.parameter_schema
            typed = (
                f", parameters typed by {schema.name} {schema.version or ''}".rstrip()
                if schema is not None
                else ""
            )
            typer.echo(
                f"ok: {path}: {compiled.name} {compiled.version}, {len(compiled.stages)} stages, "
                f"{sum(len(s.rules) for s in compiled.stages.values())} rules, "
                f"{compiled.content_hash[:19]}{typed}"
            )
    if failed:
        raise typer.Exit(1)


@app.command()
def show(
    file: File,
    stage: Annotated[str | None, typer.Option(help="Only this stage (name or alias).")] = None,
) -> None:
    """Print the resolved parameters (bases and overrides applied) as JSON.

    When the curriculum records parameter types (an imported AIND curriculum), they are shown
    too: the schema's name, and with --stage the type of each of the stage's parameters.
    """
    from shaping.services.domain.errors import CurriculumError

    curriculum = _load(file)
    schema = curriculum.document.parameter_schema
    try:
        data: Any = (
            {"stage": curriculum.resolve(stage), "parameters": curriculum.parameters(stage)}
            if stage
            else {
                "name": curriculum.name,
                "version": curriculum.version,
                "start": curriculum.first_stage,
                "stages": curriculum.resolved(),
            }
        )
    except CurriculumError as exc:
        fail(str(exc))
    if schema is not None:
        data["parameter_schema"] = {
            "name": schema.name,
            "version": schema.version,
            "source": schema.source,
        }
        if stage:
            data["types"] = {
                key: schema.types[key].model_dump(exclude_defaults=True)
                for key in data["parameters"]
                if key in schema.types
            }
    typer.echo(json.dumps(data, indent=2))


@app.command()
def render(
    file: File,
    out: Out = None,
    fmt: Annotated[
        str | None,
        typer.Option(
            "--format",
            help="svg, png, pdf (drawn by graphviz) or dot; by default the extension of --out "
            "says it (svg without --out).",
        ),
    ] = None,
    parameters: Annotated[
        str, typer.Option(help="Parameters in the stage boxes: differing, all or none.")
    ] = "differing",
    rules: Annotated[
        str,
        typer.Option(
            help="auto, edges (descriptions on the edges) or table (rule names on the edges, "
            "descriptions in one table; auto: table for a dense curriculum)."
        ),
    ] = "auto",
    layout: Annotated[
        str,
        typer.Option(
            help="auto, ranks (graphviz's dot, one rank per stage) or arcs (a ladder: one "
            "column of stages, forward moves right, moves back left; auto: arcs for a dense "
            "curriculum)."
        ),
    ] = "auto",
) -> None:
    """Draw the stage graph (the rules on the edges, a legend) and each stage's parameters.

    The format follows the extension of --out (.svg, .png, .pdf, .dot); an extension naming
    no format is refused.
    """
    from shaping.services.curricula.errors import RenderError
    from shaping.services.curricula.render import FORMATS, Format, format_for, render

    if fmt is not None and fmt not in FORMATS:
        fail(f"--format {fmt}: the formats are svg, png, pdf or dot")
    try:
        wanted = format_for(out) if out is not None and (fmt is None or out.suffix) else None
    except RenderError as exc:
        if fmt is None:
            fail(str(exc))
        wanted = None  # an extension naming no format, and --format says which
    if fmt is not None and wanted is not None and fmt != wanted:
        fail(f"--format {fmt} contradicts the extension of {out} ({wanted})")
    chosen: Format = fmt or wanted or "svg"
    if parameters not in ("differing", "all", "none"):
        fail("--parameters is differing, all or none")
    if rules not in ("auto", "edges", "table") or layout not in ("auto", "ranks", "arcs"):
        fail("--rules is auto, edges or table; --layout is auto, ranks or arcs")
    curriculum = _load(file)
    try:
        drawn = render(
            curriculum,
            chosen,
            parameters,  # type: ignore[arg-type]
            rules,  # type: ignore[arg-type]
            layout,  # type: ignore[arg-type]
        )
    except RenderError as exc:
        fail(str(exc))
    _write(out, drawn.decode("utf-8") if chosen == "dot" else drawn)


@app.command("diff")
def diff_command(
    old: Annotated[Path, typer.Argument(help="The earlier version.")],
    new: Annotated[Path, typer.Argument(help="The later version.")],
) -> None:
    """Show what changed (stages, rules, parameters) and the version bump that implies.

    Exits with 1 when the new version number is too small for its changes.
    """
    from shaping.services.curricula.diff import diff
    from shaping.services.curricula.errors import VersionBumpTooSmall

    result = diff(_load(old), _load(new))
    for line in result.lines():
        typer.echo(line)
    try:
        result.check()
    except VersionBumpTooSmall as exc:
        typer.secho(str(exc).splitlines()[0], fg=typer.colors.RED, err=True)
        raise typer.Exit(1) from None


def _import(kind: str, file: Path, out: Path | None, schemas: list[Path] | None = None) -> None:
    import yaml

    from shaping.services.curricula import aind, mtrain
    from shaping.services.curricula.errors import ImportFailed
    from shaping.services.curricula.validate import check_curriculum

    try:
        document, warnings = (
            aind.convert_file(file, schemas) if kind == "aind" else mtrain.convert_file(file)
        )
    except ImportFailed as exc:
        _print_problems(exc.problems)
        fail(f"{file}: cannot import")
    compiled, problems = check_curriculum(document, file=str(out or file))
    _print_problems([*warnings, *problems])
    if compiled is None:
        fail(f"{file}: the converted curriculum is invalid")
    header = (
        f"# Imported by `shaping curriculum import {kind}` from {file.name}.\n"
        "# Edit the source and import again rather than editing this file by hand.\n"
    )
    text = header + yaml.safe_dump(document, sort_keys=False, allow_unicode=True, width=100)
    _write(out, text)


@import_app.command("aind")
def import_aind(
    file: File,
    out: Out = None,
    schema: Annotated[
        list[Path] | None,
        typer.Option(
            help="AIND JSON Schema of the task parameters (default: the one beside FILE that "
            "fits); repeatable."
        ),
    ] = None,
) -> None:
    """Convert an AIND auto-train curriculum JSON (lambdas parsed, never run).

    The task parameters are checked against AIND's JSON Schema (type, enum, bounds, required)
    and their types recorded in the result.
    """
    _import("aind", file, out, schema)


@import_app.command("mtrain")
def import_mtrain(file: File, out: Out = None) -> None:
    """Convert an mtrain regimen YAML (anchors, merges, transitions)."""
    _import("mtrain", file, out)


def evaluate(
    curriculum: Annotated[
        list[Path],
        typer.Option(
            "--curriculum",
            "-c",
            help="Curriculum file (any supported kind); repeat for several versions.",
        ),
    ],
    out: Annotated[Path, typer.Option(help="Where to write the decisions (CSV).")],
    sessions: Annotated[
        Path | None, typer.Option(help="Session table (CSV), one row per session.")
    ] = None,
    trials: Annotated[
        Path | None,
        typer.Option(
            help="IBL trial table (CSV), one row per trial with IBL's column names; run "
            "through the event path (see docs/ibl.md). --curriculum may then be a name."
        ),
    ] = None,
    metric: Annotated[
        list[str] | None,
        typer.Option(help="NAME=COLUMN: read metric NAME from COLUMN (default: same name)."),
    ] = None,
    stage_column: Annotated[
        str | None, typer.Option(help="Column of the stage actually run (closed loop).")
    ] = None,
    no_stage: Annotated[
        list[str] | None,
        typer.Option(help="A stage-column value meaning 'not given' (repeatable)."),
    ] = None,
    version_column: Annotated[
        str | None, typer.Option(help="Column of the curriculum version in force.")
    ] = None,
    subject_column: Annotated[
        str | None,
        typer.Option(help="Subject (mouse) column (default: subject_id; subject with --trials)."),
    ] = None,
    session_column: Annotated[
        str,
        typer.Option(help="Session number column (--trials: tells sessions of one date apart)."),
    ] = "session",
    date_column: Annotated[str, typer.Option(help="Session date column.")] = "session_date",
    ephys_column: Annotated[
        str, typer.Option(help="--trials: per-session column, true on an ephys rig.")
    ] = "ephys_rig",
    delay_column: Annotated[
        str, typer.Option(help="--trials: per-session column, session start delay in seconds.")
    ] = "session_start_delay_s",
) -> None:
    """Judge a table of sessions (AIND's df_behavior -> df_manager) or of IBL trials.

    With --sessions, writes one row per session: the stage suggested and the stage run, session
    counts, the decision, the next stage, the rule that held and the evidence (JSON). With
    --trials, feeds the trials through the event path and writes one row per subject and date:
    the status, every metric the curriculum reports, warnings and evidence.
    """
    from shaping.services.curricula.errors import CurriculumInvalid
    from shaping.services.curricula.evaluate import Evaluator, TableOptions, read_table, write_table
    from shaping.services.domain.errors import CurriculumError

    if (sessions is None) == (trials is None):
        fail("give exactly one of --sessions (a session table) and --trials (IBL trials)")
    if trials is not None:
        if metric or stage_column or no_stage or version_column:
            fail("--metric, --stage-column, --no-stage and --version-column go with --sessions")
        _evaluate_trials(
            curriculum,
            trials,
            out,
            subject_column or "subject",
            session_column,
            ephys_column,
            delay_column,
            date_column,
        )
        return
    assert sessions is not None
    columns = {}
    for item in metric or []:
        name, sep, column = item.partition("=")
        if not sep or not name or not column:
            fail(f"--metric {item!r}: write NAME=COLUMN")
        columns[name.strip()] = column.strip()
    options = TableOptions(
        subject_column=subject_column or "subject_id",
        session_column=session_column,
        date_column=date_column,
        metric_columns=columns,
        stage_column=stage_column,
        no_stage_values=frozenset({"", *(no_stage or [])}),
        version_column=version_column,
    )
    curricula = [_load(path) for path in curriculum]
    try:
        rows = read_table(sessions)
        decisions = Evaluator(curricula, options).run(rows)
    except CurriculumInvalid as exc:
        _print_problems(exc.problems)
        fail("cannot evaluate")
    except CurriculumError as exc:
        fail(str(exc))
    write_table(out, decisions)
    counts: dict[str, int] = {}
    for row in decisions:
        counts[row["decision"]] = counts.get(row["decision"], 0) + 1
    summary = ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
    subjects = len({row["subject_id"] for row in decisions})
    typer.echo(f"{len(decisions)} sessions of {subjects} subjects judged ({summary}); wrote {out}")


def _evaluate_trials(
    curricula: list[Path],
    trials: Path,
    out: Path,
    subject_column: str,
    session_column: str,
    ephys_column: str,
    delay_column: str,
    date_column: str,
) -> None:
    """``shaping evaluate --trials``: IBL trials through the event path (ibl_trials)."""
    from shaping.services import bootstrap as wiring
    from shaping.services.curricula.errors import CurriculumInvalid
    from shaping.services.domain.curriculum import CurriculumCatalog
    from shaping.services.domain.errors import CurriculumError
    from shaping.services.operator.ibl_trials import (
        BatchError,
        TrialColumns,
        TrialTableError,
        evaluate_sessions,
        read_trials,
        write_statuses,
    )

    if len(curricula) != 1:
        fail("--trials takes exactly one --curriculum (a name such as ibl, or a file)")
    if date_column != "session_date":
        fail("--trials reads IBL's session_date column; --date-column goes with --sessions")
    [given] = curricula
    try:
        if given.is_file():
            engine: Any = _load(given)
            catalog = CurriculumCatalog([engine])
        else:
            catalog = wiring.catalog()
            engine = catalog.get(str(given))
    except CurriculumInvalid as exc:
        _print_problems(exc.problems)
        fail("cannot load the curricula")
    except CurriculumError as exc:
        fail(f"--curriculum {given}: not a file, and {exc}")
    columns = TrialColumns(
        subject=subject_column,
        session=session_column,
        ephys_rig=ephys_column,
        start_delay=delay_column,
    )
    try:
        sessions = read_trials(trials, columns)
        if not sessions:
            fail(f"{trials}: no trials")
        statuses = evaluate_sessions(sessions, engine, catalog)
    except (TrialTableError, BatchError) as exc:
        fail(str(exc))
    except CurriculumError as exc:
        fail(f"{engine.name} {engine.version}: {exc}")
    write_statuses(out, statuses)
    counts: dict[str, int] = {}
    for status in statuses:
        counts[status.status] = counts.get(status.status, 0) + 1
    summary = ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
    subjects = len({s.subject for s in statuses})
    typer.echo(
        f"{len(statuses)} dates of {subjects} subject(s), {len(sessions)} sessions, judged by "
        f"{engine.name} {engine.version} ({summary}); wrote {out}"
    )


def _known_catalog(settings: Settings, codec: EventCodec, required: bool) -> CurriculumCatalog:
    """The curriculum files (shipped and ``SHAPING_CURRICULA_DIR``) plus every version
    published on the curricula topic. When Kafka cannot be read, ``required`` fails; otherwise
    a warning says that only the files are known."""
    from shaping.services import bootstrap as wiring
    from shaping.services.curricula.errors import CurriculumInvalid, PublishError

    try:
        catalog = wiring.catalog()
    except CurriculumInvalid as exc:
        _print_problems(exc.problems)
        fail("the curricula folder has invalid files")
    try:
        catalog, problems = wiring.published_catalog(settings, codec, catalog)
    except PublishError as exc:
        if required:
            fail(f"cannot read the published versions: {exc}")
        typer.secho(
            f"warning: published versions not read ({exc}); only curriculum files are known",
            fg=typer.colors.YELLOW,
            err=True,
        )
        return catalog
    for problem in problems:
        typer.secho(
            f"warning: {settings.topics.curricula}: {problem}", fg=typer.colors.YELLOW, err=True
        )
    return catalog


def _catalog_version(catalog: CurriculumCatalog, name: str, version: str) -> CompiledCurriculum:
    from shaping.services.curricula.engine import CompiledCurriculum
    from shaping.services.domain.errors import CurriculumError

    try:
        found = catalog.get(name, version)
    except CurriculumError as exc:
        fail(str(exc))
    assert isinstance(found, CompiledCurriculum)
    return found


Bootstrap = Annotated[
    str | None, typer.Option(help="Kafka bootstrap servers (default: $SHAPING_BOOTSTRAP).")
]
Prefix = Annotated[str | None, typer.Option(help="Topic prefix (default: $SHAPING_TOPIC_PREFIX).")]
DbUrl = Annotated[
    str | None,
    typer.Option(
        "--db-url", help="Status tables to read the mice from (default: $SHAPING_DB_URL)."
    ),
]
By = Annotated[
    str,
    typer.Option(
        "--by",
        help="Who does it (recorded in the events). On a secured broker it is the principal "
        "you log in as and --by may only repeat it.",
    ),
]


def _print_plan(steps: list[Any]) -> None:
    width = max([len(s.mouse_id) for s in steps] + [5])
    typer.echo(f"{'mouse'.ljust(width)}  {'from':24}  {'to':24}  note")
    for step in steps:
        before = f"{step.from_stage} ({step.from_version})"
        after = f"{step.to_stage} ({step.to_version})" if step.to_stage else "-- cannot migrate"
        typer.echo(f"{step.mouse_id.ljust(width)}  {before:24}  {after:24}  {step.note}")


@app.command()
def publish(
    file: File,
    bootstrap: Bootstrap = None,
    prefix: Prefix = None,
    db_url: DbUrl = None,
    by: By = "",
    notes: Annotated[str, typer.Option(help="Why this version.")] = "",
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Check and print; send nothing.")
    ] = False,
) -> None:
    """Publish a curriculum version (CurriculumPublished, with its content and hash).

    The version goes to the compacted curricula topic, where every processor finds it, also
    after a restart. Refuses a version whose number is too small for what changed since the
    newest known version (files and published versions), and a version already known with
    other content. Mice on an older patch or minor version of the same major version are moved
    to it: a MigrateMouse command each, answered by the processor (MouseMigrated, applied at
    their next session, or the refusal); a major version needs `shaping migrate`.
    """
    from datetime import UTC, datetime

    from shaping.services import bootstrap as wiring
    from shaping.services.adapters.curricula_topic import publish_version
    from shaping.services.curricula.engine import CompiledCurriculum
    from shaping.services.curricula.errors import MigrationError, PublishError, VersionBumpTooSmall
    from shaping.services.curricula.migrate import plan, published_event
    from shaping.services.curricula.model import semver
    from shaping.services.operator.curricula import mice_on, migration_commands
    from shaping.services.operator.identity import principal

    curriculum = _load(file)
    settings = settings_with(bootstrap, prefix, db_url)
    who = requester(settings, by or None)  # on a secured broker: the principal, checked
    if principal(settings.kafka) is not None:
        by = who  # the published version names the principal too
    codec = wiring.codec()
    catalog = _known_catalog(settings, codec, required=not dry_run)
    if catalog.has(curriculum.name, curriculum.version):
        known = catalog.get(curriculum.name, curriculum.version)
        if getattr(known, "content_hash", None) != curriculum.content_hash:
            fail(
                f"{curriculum.name} {curriculum.version} is already known with other content; "
                f"publish it under a new version",
                code=1,
            )
    older = [v for v in catalog.versions(curriculum.name) if semver(v) < semver(curriculum.version)]
    previous = catalog.get(curriculum.name, older[-1]) if older else None
    assert previous is None or isinstance(previous, CompiledCurriculum)
    now = datetime.now(UTC)
    try:
        event = published_event(curriculum, previous, now, by, notes)
    except VersionBumpTooSmall as exc:
        fail(str(exc), code=1)
    commands: list[Any] = []
    typer.echo(
        f"{curriculum.name} {curriculum.version} ({event.bump or 'first version'}), "
        f"{curriculum.content_hash}"
    )
    if db_url is not None or not dry_run:
        same_major = [v for v in older if semver(v)[0] == semver(curriculum.version)[0]]
        try:
            mice = mice_on(settings.db_url, curriculum.name)
        except MigrationError as exc:
            fail(str(exc))
        for version in same_major:
            old = catalog.get(curriculum.name, version)
            assert isinstance(old, CompiledCurriculum)
            steps = plan(old, curriculum, mice)
            if steps:
                _print_plan(steps)
            commands.extend(migration_commands(steps, curriculum, now, who))
    if dry_run:
        typer.echo(f"dry run: {1 + len(commands)} event(s) not sent")
        return
    topics = settings.topics
    try:
        # The version first, acknowledged: a processor that meets a migration to it reads the
        # curricula topic up to its end and finds it.
        written = publish_version(settings.kafka, topics.curricula, event, codec)
    except PublishError as exc:
        fail(str(exc))
    typer.echo(
        f"published {curriculum.name} {curriculum.version} to {topics.curricula}"
        if written
        else f"{curriculum.name} {curriculum.version} was already published (same content)"
    )
    refused = _send_migrations(settings, commands, codec, DEFAULT_WAIT_S)
    typer.echo(
        f"sent {len(commands)} MigrateMouse command(s) to {topics.commands}; {refused} refused"
    )
    if refused:
        raise typer.Exit(1)


def _send_migrations(settings: Any, commands: list[Any], codec: Any, wait: float) -> int:
    """Sends the MigrateMouse commands one by one, prints each answer (a refusal on stderr);
    returns how many were refused. Exits with 2 when one cannot be delivered."""
    from shaping.services.curricula.errors import MigrationError
    from shaping.services.operator.curricula import send_migrations

    refused = 0
    try:
        for answer in send_migrations(settings, commands, codec, wait):
            refused += answer.refused
            for line in answer.lines:
                if answer.refused:
                    typer.secho(f"error: {line}", fg=typer.colors.RED, err=True)
                else:
                    typer.echo(line)
    except MigrationError as exc:
        fail(str(exc))
    return refused


def _name_version(text: str) -> tuple[str, str]:
    name, sep, version = text.rpartition("@")
    if not sep or not name or not version:
        fail(f"{text!r}: write NAME@VERSION, e.g. basic-shaping@0.1.0")
    return name, version


def migrate(
    source: Annotated[str, typer.Option("--from", help="NAME@VERSION the mice are on.")],
    target: Annotated[str, typer.Option("--to", help="NAME@VERSION to move them to.")],
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print each mouse's current and new stage only.")
    ] = False,
    db_url: DbUrl = None,
    bootstrap: Bootstrap = None,
    prefix: Prefix = None,
    by: By = "",
    wait: Wait = DEFAULT_WAIT_S,
) -> None:
    """Move mice between curriculum versions (a major version uses its stage mapping).

    With --dry-run, prints each mouse's current and new stage. Without it, sends a MigrateMouse
    command per mouse that can move and prints the processor's answer to each (MouseMigrated
    and the mouse's next assignment, or the refusal); exits with 1 if any mouse cannot move or
    the processor refused one.
    """
    from datetime import UTC, datetime

    from shaping.services import bootstrap as wiring
    from shaping.services.curricula.errors import MigrationError
    from shaping.services.curricula.migrate import plan
    from shaping.services.operator.curricula import mice_on, migration_commands

    name, old_version = _name_version(source)
    new_name, new_version = _name_version(target)
    if new_name != name:
        fail("--from and --to must be versions of the same curriculum")
    settings = settings_with(bootstrap, prefix, db_url)
    who = requester(settings, by or None)  # on a secured broker: the principal, checked
    codec = wiring.codec()
    catalog = _known_catalog(settings, codec, required=not dry_run)
    old = _catalog_version(catalog, name, old_version)
    new = _catalog_version(catalog, name, new_version)
    try:
        steps = plan(old, new, mice_on(settings.db_url, name))
    except MigrationError as exc:
        fail(str(exc))
    if not steps:
        typer.echo(f"no mouse is on {name} {old_version}")
        return
    _print_plan(steps)
    stuck = [s for s in steps if not s.possible]
    movable = len(steps) - len(stuck)
    if dry_run:
        typer.echo(f"dry run: {movable} mouse(s) would move, {len(stuck)} cannot")
        return
    commands = migration_commands(steps, new, datetime.now(UTC), who)
    refused = _send_migrations(settings, commands, codec, wait)
    typer.echo(
        f"sent {len(commands)} MigrateMouse command(s) to {settings.topics.commands}; "
        f"{refused} refused; {len(stuck)} mouse(s) cannot move"
    )
    if stuck or refused:
        raise typer.Exit(1)
