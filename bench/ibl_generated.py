"""``python -m bench.ibl_generated [--out DIR]``: ibllib's statuses and values on generated mice.

Writes the conformance data of ``tests/curricula/test_ibl_generated.py``
(``tests/data/ibl_generated/expected.json`` by default): for each mouse of :data:`MICE`, its
trials are generated with :func:`bench.ibl.synthetic_table` (a seeded psychometric observer;
the plan and the SHA-256 of the CSV are recorded, so the test regenerates the same trials and
knows when the generator changed), then judged by ibllib itself in its own venv
(``.cache/bench-ibllib-venv``, created by :func:`bench.ibl.venv_python` the first time) through
``bench/ibl_upstream.py --values``: every date's window, raw status, status after
``pass_through_training_hierachy`` and the values behind it, with numpy seeded with 0 before
every ``get_training_status`` call as ibllib's own tests do. No ibllib code runs in Shaping's
venv and none is copied here.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from bench.ibl import UPSTREAM, BenchError, MousePlan, synthetic_table, venv_python
from bench.kafka_env import REPO

OUT = REPO / "tests" / "data" / "ibl_generated"
FILE = "expected.json"

MICE: tuple[tuple[str, MousePlan], ...] = tuple(
    (
        f"gen-{index + 1:02d}",
        MousePlan(
            dates=30,
            trials=450 + 50 * (index % 3),
            biased_from=6 + index % 4,
            ephys_from=18 + index % 5,
            delay_from=22 + index % 5 + index % 3,
            seed=1000 + index,
        ),
    )
    for index in range(8)
)
"""The generated mice: 30 dates each, 450-550 trials a date, biased from the 7th-10th date,
on an ephys rig from the 19th-23rd, with a start delay from the 23rd-28th."""


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def generate(out: Path, mice: Sequence[tuple[str, MousePlan]] = MICE) -> Path:
    """Generates the mice, has ibllib judge them, writes ``out/expected.json``."""
    python = venv_python()
    with tempfile.TemporaryDirectory(prefix="ibl-generated-") as folder:
        tables: list[tuple[str, MousePlan, Path, int]] = []
        for name, plan in mice:
            path = Path(folder) / f"{name}.csv"
            n_trials = synthetic_table(path, plan)
            tables.append((name, plan, path, n_trials))
        done = subprocess.run(
            [str(python), str(UPSTREAM), "--values", *(str(t[2]) for t in tables)],
            capture_output=True,
            text=True,
            env={**os.environ, "MPLBACKEND": "Agg"},
        )
        if done.returncode != 0:
            raise BenchError(f"ibllib run failed:\n{done.stderr[-2000:]}")
        upstream = json.loads(done.stdout.strip().splitlines()[-1])
        data = {
            "generator": "bench.ibl.synthetic_table",
            "command": "python -m bench.ibl_generated",
            "ibllib_seed": upstream["seed"],
            "versions": upstream["versions"],
            "mice": [
                {
                    "name": name,
                    "plan": asdict(plan),
                    "n_trials": n_trials,
                    "csv_sha256": sha256(path),
                    "dates": upstream["mice"][str(path)],
                }
                for name, plan, path, n_trials in tables
            ],
        }
    out.mkdir(parents=True, exist_ok=True)
    target = out / FILE
    target.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    return target


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.ibl_generated", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--out", type=Path, default=OUT, help=f"folder (default {OUT})")
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        target = generate(args.out)
    except BenchError as exc:
        print(f"failed: {exc}", file=sys.stderr)
        return 1
    data = json.loads(target.read_text(encoding="utf-8"))
    dates = sum(len(m["dates"]) for m in data["mice"])
    biased = sum(1 for m in data["mice"] for d in m["dates"] if "psych_80" in d["info"])
    print(f"wrote {target}: {len(data['mice'])} mice, {dates} dates, {biased} biased windows")
    return 0


if __name__ == "__main__":
    sys.exit(main())
