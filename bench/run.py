"""``python -m bench.run [--quick] [--only core,kafka,latency]``: runs the benchmarks, prints the
figures and rewrites bench/REPORT.md.

(a) ``core`` needs nothing but Python; (b) ``kafka`` and (c) ``latency`` start their own broker
(``infra/kafka/kafka.sh`` on 127.0.0.1:45092) and processor processes, and stop all of them at
the end, also on failure or Ctrl-C.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from types import FrameType

from bench import core, latency, throughput
from bench.faults import kept_section as kept_faults
from bench.ibl import kept_section
from bench.kafka_env import BenchError, KafkaEnv
from bench.report import Machine, RunInfo, render
from bench.stats import Results

REPORT = Path(__file__).resolve().parent / "REPORT.md"
ALL = ("core", "kafka", "latency")


@dataclass(frozen=True)
class Sizes:
    repeats: int
    core: tuple[int, int, int]  # mice, sessions per mouse, trials per session
    kafka: tuple[int, int, int]
    latency: tuple[int, int, int]  # mice, sessions, trials per session


FULL = Sizes(repeats=3, core=(10, 10, 500), kafka=(10, 6, 500), latency=(8, 200, 5))
QUICK = Sizes(repeats=1, core=(4, 5, 500), kafka=(4, 2, 500), latency=(4, 40, 5))


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.run", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--quick", action="store_true", help="small workloads, one repeat")
    parser.add_argument(
        "--only",
        default=",".join(ALL),
        help="comma-separated measurements to run: core, kafka, latency (default: all)",
    )
    parser.add_argument("--repeats", type=int, help="repeats of every measurement")
    parser.add_argument("--report", type=Path, default=REPORT, help="where to write the report")
    parser.add_argument("--no-report", action="store_true", help="print only, write no report")
    args = parser.parse_args(argv)
    args.only = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = set(args.only) - set(ALL)
    if unknown or not args.only:
        parser.error(f"--only takes some of {', '.join(ALL)}, not {args.only}")
    if args.repeats is not None and args.repeats < 1:
        parser.error("--repeats must be at least 1")
    return args


def _terminate(signum: int, frame: FrameType | None) -> None:
    # Turn SIGTERM into an exception so every ``finally`` runs and stops broker and processes.
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    signal.signal(signal.SIGTERM, _terminate)
    sizes = QUICK if args.quick else FULL
    repeats = args.repeats or sizes.repeats
    command = " ".join(["python -m bench.run", *(sys.argv[1:] if argv is None else argv)])
    started, began = datetime.now().astimezone(), time.perf_counter()
    load_before = os.getloadavg()
    results = Results()
    section_seconds: dict[str, float] = {}
    print(f"{command}: {', '.join(args.only)}; {repeats} repeat(s)", flush=True)
    try:
        if "core" in args.only:
            mark = time.perf_counter()
            core.measure(results, repeats, *sizes.core)
            section_seconds["core"] = time.perf_counter() - mark
        if {"kafka", "latency"} & set(args.only):
            with KafkaEnv() as env:
                mark = time.perf_counter()
                env.start()
                section_seconds["broker start"] = time.perf_counter() - mark
                if "kafka" in args.only:
                    mark = time.perf_counter()
                    throughput.measure(results, env, repeats, *sizes.kafka)
                    section_seconds["kafka"] = time.perf_counter() - mark
                if "latency" in args.only:
                    mark = time.perf_counter()
                    latency.measure(results, env, repeats, *sizes.latency)
                    section_seconds["latency"] = time.perf_counter() - mark
                mark = time.perf_counter()
            section_seconds["broker stop"] = time.perf_counter() - mark
    except BenchError as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        print("benchmark interrupted; everything it started is stopped", file=sys.stderr)
        return 130
    seconds = time.perf_counter() - began
    print(f"done in {seconds:.0f} s", flush=True)
    if args.no_report:
        return 0
    run = RunInfo(
        command=command,
        started=started,
        seconds=seconds,
        repeats=repeats,
        quick=args.quick,
        load_before=load_before,
        load_after=os.getloadavg(),
        section_seconds=section_seconds,
    )
    # The IBL (python -m bench.ibl) and faults (python -m bench.faults) sections are measured
    # separately: keep them.
    kept = "\n".join(part for part in (kept_section(args.report), kept_faults(args.report)) if part)
    report = render(Machine.describe(), run, results)
    args.report.write_text(report + ("\n" + kept if kept else ""))
    print(f"wrote {args.report}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
