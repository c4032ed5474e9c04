"""``python -m bench.state_size``: a mouse's state at rest (bytes) and in memory (RSS), before
beside after, in one run.

Two mice, each folded through the domain core from its first event to its last:

- an IBL mouse: :func:`bench.ibl.synthetic_table` with the default plan (60 dates of 600
  trials, biased from the 26th date, ephys from the 51st), on the ``ibl`` curriculum;
- a basic-shaping mouse: the benchmark workload's simulated mouse (:mod:`bench.workload`), 30
  sessions of 250 trials.

For each: the bytes of its state record (``encode_state``, what the processor's changelog and
a replay's hand-over hold per mouse at rest), and the resident memory of a process holding
1,000 and 5,000 such states decoded (what the processor keeps live for the partitions it
owns): RSS after loading the domain and one state, then after decoding the states (each from
its own bytes, with its own mouse id, as the processor rebuilds them from its changelog), and
the difference per mouse. Copies of one mouse share the strings pydantic caches while parsing
(stage names, and the like), as different mice of one lab would.

"Before" is the code of :data:`BASELINE` (the commit before the compact state), extracted with
``git archive`` into a temporary folder and imported in a child process instead of the working
tree's; "after" is the working tree. Every figure is measured in a child process of its own.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tarfile
import tempfile
from datetime import UTC, datetime
from io import BytesIO
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BASELINE = "ac43693"
"""The commit whose state format is the "before" (format 1: plain JSON, lists of numbers)."""

PACKAGES = ("services", "schemas", "rig", "curricula")
"""The source folders the ``shaping`` package maps (pyproject's package-dir)."""

COUNTS = (1000, 5000)


# -- the child: one measurement with whatever ``shaping`` is importable ------------------------


def _rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS in /proc/self/status")


def _ibl_record() -> tuple[bytes, str]:
    from bench.ibl import MousePlan, _events_for, synthetic_table
    from shaping.services.domain import TrainingCore, initial_state
    from shaping.services.processor.state_store import encode_state

    with tempfile.TemporaryDirectory(prefix="state-size-") as folder:
        table = Path(folder) / "trials.csv"
        synthetic_table(table, MousePlan())
        catalog, enrol, per_session, _ = _events_for(table, "ibl")
    core = TrainingCore(catalog)
    state, _ = core.handle(initial_state(enrol.mouse_id), enrol)
    for events in per_session:
        for event in events:
            state, _ = core.handle(state, event)
    return encode_state(state), enrol.mouse_id


def _basic_record() -> tuple[bytes, str]:
    from bench.workload import build_workload
    from shaping.services.curricula.catalog import default_catalog
    from shaping.services.domain import TrainingCore, initial_state
    from shaping.services.processor.state_store import encode_state

    workload = build_workload(1, 30, 250, tag="S")
    core = TrainingCore(default_catalog())
    mouse = workload.mice[0]
    state = initial_state(mouse)
    for event in workload.events():
        state, _ = core.handle(state, event)
    return encode_state(state), mouse


def child(kind: str, count: int) -> dict[str, object]:
    """Builds the mouse's state record; with ``count``, decodes that many copies and measures
    the RSS. Returns the figures as JSON-able values."""
    import gc

    from shaping.services.processor.state_store import decode_state

    record, mouse = _ibl_record() if kind == "ibl" else _basic_record()
    state = decode_state(record)
    figures: dict[str, object] = {
        "bytes": len(record),
        "header": record[:4].decode("ascii", "replace"),
        "sessions": state.session_total,
    }
    if not count:
        return figures
    # Each copy parsed from its own JSON, with its own mouse id (of the same length).
    from shaping.services.domain import MouseState

    text = _json_reader()(record)
    gc.collect()
    before = _rss_kib()
    held = [
        MouseState.model_validate_json(text.replace(mouse.encode(), f"{i:0{len(mouse)}d}".encode()))
        for i in range(count)
    ]
    gc.collect()
    after = _rss_kib()
    figures.update(
        {
            "count": count,
            "rss_before_kib": before,
            "rss_after_kib": after,
            "per_mouse_bytes": (after - before) * 1024 / count,
        }
    )
    del held
    return figures


def _json_reader():  # type: ignore[no-untyped-def]
    """The JSON inside a state record, for this version's formats."""
    from shaping.services.processor import state_store

    reader = getattr(state_store, "state_json", None)
    if reader is not None:
        return reader
    return lambda data: data if data.startswith(b"{") else data[4:]


# -- the parent: before and after, side by side ------------------------------------------------


def baseline_tree(folder: Path) -> Path:
    """Extracts :data:`BASELINE`'s sources into ``folder``; returns the path entry whose
    ``shaping`` package is that code."""
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", BASELINE, *PACKAGES],
        check=True,
        capture_output=True,
    ).stdout
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(folder / "src", filter="data")
    package = folder / "path" / "shaping"
    package.mkdir(parents=True)
    for name in PACKAGES:
        (package / name).symlink_to(folder / "src" / name)
    return folder / "path"


def run_child(kind: str, count: int, shaping_path: Path | None) -> dict[str, object]:
    env = dict(os.environ)
    entries = [str(REPO)] if shaping_path is None else [str(shaping_path), str(REPO)]
    env["PYTHONPATH"] = os.pathsep.join(entries)
    done = subprocess.run(
        [sys.executable, "-m", "bench.state_size", "--child", kind, str(count)],
        check=True,
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
    )
    figures: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    if shaping_path is not None and figures["header"] == "SMS2":
        raise RuntimeError("the baseline child imported the working tree's shaping")
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", nargs=2, metavar=("KIND", "COUNT"), help=argparse.SUPPRESS)
    parser.add_argument("--counts", type=int, nargs="*", default=list(COUNTS))
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child[0], int(args.child[1]))))
        return 0
    print(f"state size, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC; before = {BASELINE}, after = tree")
    with tempfile.TemporaryDirectory(prefix="state-size-base-") as folder:
        base = baseline_tree(Path(folder))
        for kind, label in (("ibl", "IBL, 60 dates x 600 trials"), ("basic", "basic-shaping")):
            sizes = {
                name: run_child(kind, 0, path) for name, path in (("before", base), ("after", None))
            }
            b, a = sizes["before"], sizes["after"]
            print(
                f"{label}: at rest {b['bytes']:,} B ({b['header']}) before, {a['bytes']:,} B "
                f"({a['header']}) after: {int(b['bytes']) / int(a['bytes']):.1f}x smaller "  # type: ignore[call-overload]
                f"[{a['sessions']} sessions]"
            )
            for count in args.counts:
                rss = {
                    name: run_child(kind, count, path)
                    for name, path in (("before", base), ("after", None))
                }
                rb, ra = rss["before"], rss["after"]
                print(
                    f"  {count:>5,} mice in memory: RSS {int(rb['rss_after_kib']) / 1024:6.0f} MiB "  # type: ignore[call-overload]
                    f"before, {int(ra['rss_after_kib']) / 1024:6.0f} MiB after "  # type: ignore[call-overload]
                    f"(base {int(rb['rss_before_kib']) / 1024:.0f} / "  # type: ignore[call-overload]
                    f"{int(ra['rss_before_kib']) / 1024:.0f} MiB); per mouse "  # type: ignore[call-overload]
                    f"{float(rb['per_mouse_bytes']) / 1024:,.1f} KiB before, "  # type: ignore[arg-type]
                    f"{float(ra['per_mouse_bytes']) / 1024:,.1f} KiB after"  # type: ignore[arg-type]
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
