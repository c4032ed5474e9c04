"""cProfile of the IBL recompute: where one mouse's history spends its time.

``python bench/profiles/ibl_profile.py [--mode online|batched|evaluate] [--dates 60]
[--trials 600] [--top 15] [--root DIR]`` builds the benchmark mouse of ``python -m
bench.ibl`` (``bench.ibl.synthetic_table``, seed 7), then profiles, with the fit cache empty:

- ``online``: the whole history folded through ``TrainingCore.handle`` from a fresh state, each
  decision fitting its windows when it is made (``bench.ibl.recompute``);
- ``batched``: the same after ``prefetch_history_fits`` (the history's fits in one run);
- ``evaluate``: ``evaluate_sessions`` on the table (``shaping evaluate --trials``'s path).

It prints the top functions by own time with their share of the total, and the total by area
(the fit, the fold, the event path). ``--root`` profiles another checkout of Shaping (e.g.
``git archive`` of an older commit unpacked in a folder), whose ``bench.ibl`` must have
``synthetic_table``, ``_events_for`` and ``recompute``; bench/profiles/ibl.md was made so.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
import tempfile
import time
from pathlib import Path

AREAS = (
    ("psychofit + scipy fmin (the fit, before)", ("psychofit", "scipy/optimize")),
    ("the fit engine (services/domain/psychometric.py)", ("psychometric.py",)),
    (
        "numpy / scipy.special (array work of the fit)",
        ("numpy", "scipy", "{method", "{built-in method numpy"),
    ),
    (
        "the fold: core, session statistics, pydantic copies",
        ("services/domain", "pydantic", "copy.py"),
    ),
    (
        "the event path: codec, processor step, runtime",
        ("schemas/", "services/processor", "services/embedded", "fastavro", "uuid"),
    ),
    ("batch input: trial table, events built, prefetch", ("services/curricula",)),
)


def area(filename: str, name: str) -> str:
    where = f"{filename}:{name}"
    for label, patterns in AREAS:
        if any(p in where for p in patterns):
            return label
    return "other (Python built-ins, bench)"


def use_engine(path: Path) -> None:
    """Loads ``path`` as ``shaping.services.domain.psychometric`` before anything imports the
    real one (the import namespace maps onto this checkout, so ``--root`` alone cannot swap
    it); the rest of Shaping is this checkout's."""
    import importlib.util

    name = "shaping.services.domain.psychometric"
    if name in sys.modules:
        raise SystemExit(f"{name} is already imported")
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    import shaping.services.domain as domain
    from shaping.services.domain import metric_library

    domain.psychometric = module  # type: ignore[attr-defined]
    if metric_library.fit_many is not module.fit_many:
        raise SystemExit(f"{path} was not taken as the fit engine")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mode", choices=("online", "batched", "evaluate"), default="online")
    parser.add_argument("--dates", type=int, default=60)
    parser.add_argument("--trials", type=int, default=600)
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parents[2])
    parser.add_argument(
        "--engine",
        type=Path,
        help="another services/domain/psychometric.py to profile in place of this checkout's "
        "(e.g. `git show COMMIT:services/domain/psychometric.py > /tmp/psychometric.py`)",
    )
    args = parser.parse_args(argv)
    sys.path.insert(0, str(args.root))
    if args.engine is not None:
        use_engine(args.engine)

    from bench import ibl

    plan = ibl.MousePlan(dates=args.dates, trials=args.trials)
    with tempfile.TemporaryDirectory() as folder:
        table = Path(folder) / "mouse.csv"
        ibl.synthetic_table(table, plan)
        catalog, enrol, per_session, sessions = ibl._events_for(table, "ibl")
        ibl.forget_fits()
        profiler = cProfile.Profile()
        began = time.perf_counter()
        if args.mode == "online":
            profiler.runcall(ibl.recompute, catalog, enrol, per_session)
        elif args.mode == "batched":
            profiler.runcall(ibl.recompute_batched, catalog, enrol, per_session)
        else:
            from shaping.services.operator.ibl_trials import evaluate_sessions

            profiler.runcall(evaluate_sessions, sessions, catalog.get("ibl"), catalog)
        wall = time.perf_counter() - began
    stats = pstats.Stats(profiler)
    raw = stats.stats  # type: ignore[attr-defined]
    total = sum(entry[2] for entry in raw.values())
    engine = args.engine or "this checkout's"
    print(
        f"{args.mode}: {wall:.2f} s under cProfile ({total:.2f} s of own time), root "
        f"{args.root}, fit engine {engine}"
    )
    rows = sorted(raw.items(), key=lambda item: item[1][2], reverse=True)
    print("| function | calls | own s | share | cumulative s |\n|---|---:|---:|---:|---:|")
    for (filename, line, name), (_, calls, own, cumulative, _) in rows[: args.top]:
        short = filename.split("site-packages/")[-1].split(str(args.root) + "/")[-1]
        share = own / total
        print(
            f"| `{short}:{line}({name})` | {calls:,} | {own:.3f} | {share:.0%} | {cumulative:.3f} |"
        )
    by_area: dict[str, float] = {}
    for (filename, _, name), entry in raw.items():
        label = area(filename, name)
        by_area[label] = by_area.get(label, 0.0) + entry[2]
    print("\n| area | own s | share |\n|---|---:|---:|")
    for label, seconds in sorted(by_area.items(), key=lambda item: -item[1]):
        print(f"| {label} | {seconds:.2f} | {seconds / total:.0%} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
