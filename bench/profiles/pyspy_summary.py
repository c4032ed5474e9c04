"""``python -m bench.profiles.pyspy_summary RAW --process TEXT [--top N]``: the hot spots of one
process in a py-spy profile, as Markdown tables.

RAW is what ``py-spy record --gil --subprocesses --format raw`` wrote (one line per distinct
stack, frames separated by ``;``, the sample count last; with ``--subprocesses`` the first
frames name the processes). Only samples of processes whose command line contains TEXT are
read, and when several match, those of the one with the most samples (``--which`` picks
another, by rank). With ``--gil`` py-spy samples only the thread holding the GIL, so the
shares are shares of the Python work, not of waiting.

Prints three tables, each row with its share of the process's samples:

- by area: each sample goes to the innermost frame on its stack that is of this repository
  (read by its file: decoding, the core, the step, projection...) or of the machinery a
  service runs in (faust, asyncio, importing); other libraries' frames count for the code of
  ours that called them;
- the functions with the most samples of their own (self);
- the frames most often on the stack (inclusive), leaving out those on nearly every stack
  (the process's start).
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

OURS = (
    ("schemas/", "decoding and validating events (schemas/: fastavro, pydantic)"),
    ("services/domain/", "the training core (services/domain)"),
    ("services/processor/step.py", "the processing step's checks (services/processor/step.py)"),
    ("services/processor/", "the processor's batches, state and publishing (services/processor)"),
    ("services/projector/", "projection (services/projector: SQLAlchemy, SQLite)"),
    ("services/operator/replay/log.py", "reading the log (replay/log.py: confluent-kafka)"),
    ("services/operator/replay/", "replay's fold, reconciling and hand-over"),
    ("services/adapters/", "adapters (metrics, curricula follower)"),
    ("services/", "other services code"),
    ("bench/", "the benchmark's own code"),
)
"""Areas of this repository, by the path in a frame (first match wins)."""

FRAMEWORKS = (
    ("importlib", "start-up (imports)"),
    ("/faust/", "faust, mode, aiokafka"),
    ("/mode/", "faust, mode, aiokafka"),
    ("/aiokafka/", "faust, mode, aiokafka"),
    ("/kafka/", "kafka-python"),
    ("/asyncio/", "asyncio's event loop"),
    ("/selectors.py", "asyncio's event loop"),
    ("/threading.py", "threads waiting"),
)
"""Libraries whose frames count for themselves, wherever they are called from (the machinery
a service runs in). Other libraries' frames (pydantic, fastavro, SQLAlchemy, json) count for
the frame of ours that called them."""


def area(frames: list[str]) -> str:
    """The area a sample counts for: from the innermost frame outwards, the first frame of
    ours (by :data:`OURS`) or of a framework (by :data:`FRAMEWORKS`)."""
    for frame in reversed(frames):
        where = "/" + frame[frame.rfind("(") + 1 :]  # py-spy shortens paths below sys.path
        for part, name in FRAMEWORKS:
            if part in where:
                return name
        if "-packages/" in where:
            continue
        for prefix, name in OURS:
            if "/" + prefix in where:
                return name
    return "other"


def read(path: Path, process: str) -> dict[str, list[tuple[list[str], int]]]:
    """Each matching process's stacks (frames below the process frames) with their counts."""
    found: dict[str, list[tuple[list[str], int]]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = stack.split(";")
        owners = [f for f in frames if f.startswith("process ")]
        if not owners or process not in owners[-1] + ":":
            continue
        below = [f for f in frames if not f.startswith(("process ", "thread "))]
        found.setdefault(owners[-1], []).append((below, int(count)))
    return found


def shares(stacks: list[tuple[list[str], int]]) -> tuple[int, Counter[str], Counter[str]]:
    """Total samples, samples per innermost frame, samples per frame anywhere on the stack."""
    total = 0
    own: Counter[str] = Counter()
    anywhere: Counter[str] = Counter()
    for frames, count in stacks:
        total += count
        if frames:
            own[frames[-1]] += count
        for frame in set(frames):
            anywhere[frame] += count
    return total, own, anywhere


def table(title: str, counts: Counter[str], total: int, top: int) -> str:
    rows = [f"| {title} | samples | share |", "|---|---:|---:|"]
    for frame, count in counts.most_common(top):
        rows.append(f"| `{frame.replace('|', '/')}` | {count:,} | {100 * count / total:.1f} % |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profiles.pyspy_summary")
    parser.add_argument("raw", type=Path, help="py-spy --format raw output")
    parser.add_argument("--process", default="", help="text in the process's command line")
    parser.add_argument("--which", type=int, default=0, help="rank of the process by samples")
    parser.add_argument(
        "--pid",
        help="the process with this id (py-spy may name a child by "
        "its parent's command line if it saw it before its exec)",
    )
    parser.add_argument("--top", type=int, default=15)
    args = parser.parse_args(argv)
    found = read(args.raw, f"process {args.pid}:" if args.pid else args.process)
    if not found:
        parser.error(f"no process matching {args.process!r} in {args.raw}")
    ranked = sorted(found.items(), key=lambda item: -sum(c for _, c in item[1]))
    name, stacks = ranked[args.which]
    total, own, anywhere = shares(stacks)
    areas: Counter[str] = Counter()
    for frames, count in stacks:
        areas[area(frames)] += count
    common = {frame for frame, count in anywhere.items() if count >= 0.95 * total}
    inclusive = Counter({f: c for f, c in anywhere.items() if f not in common})
    print(f"{name[:160]}: {total:,} samples\n")
    print(table("area", areas, total, len(areas)))
    print()
    print(table("function (self)", own, total, args.top))
    print()
    print(table("frame (inclusive)", inclusive, total, 2 * args.top))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
