"""ibllib's own training status over a trial table, timed; run by bench/ibl.py in its own venv.

``python bench/ibl_upstream.py TRIALS.csv REPEATS`` (with the python of the venv that has
ibllib) prints one JSON object: the seconds each repeat took, the status per date, and the
versions of ibllib, psychofit, numpy and scipy. It imports ibllib and calls its functions; it
contains none of their logic. It must not import Shaping (that venv does not have it).

Per date, as ibllib's pipeline ``ibllib.pipes.training_status.compute_training_status`` does:
the date's trials plus those of up to two earlier dates (habituation dates skipped), the dates
on an ephys rig and the count of dates with a start delay of at least 900 s go to
``brainbox.behavior.training.get_training_status``; the result goes through
``pass_through_training_hierachy`` with the previous date's status. Only the computation is
timed: the trials are read and split into per-date arrays before the clock starts.
"""

from __future__ import annotations

import json
import sys
import time
from importlib import metadata

import numpy as np
import pandas as pd
from brainbox.behavior import training
from ibllib.pipes.training_status import pass_through_training_hierachy
from iblutil.util import Bunch
from one.alf.io import AlfBunch

KEYS = training.TRIALS_KEYS


def load(path: str) -> tuple[list[str], dict[str, AlfBunch], dict[str, dict[str, object]]]:
    """Per-date ALF trials objects and per-date facts (protocol, ephys rig, start delay)."""
    table = pd.read_csv(path)
    table = table.sort_values(["session_date", "trial_index"], kind="stable")
    trials: dict[str, AlfBunch] = {}
    facts: dict[str, dict[str, object]] = {}
    for day, rows in table.groupby("session_date", sort=True):
        trials[str(day)] = AlfBunch({k: rows[k].to_numpy(dtype=float) for k in KEYS})
        first = rows.iloc[0]
        ephys = str(first.get("ephys_rig", "false")).strip().lower() in ("true", "1", "1.0")
        delay = first.get("session_start_delay_s", 0.0)
        facts[str(day)] = {
            "protocol": str(first["task_protocol"]),
            "location": "ephys_rig" if ephys else "training_rig",
            "delay": 0.0 if pd.isna(delay) else float(delay),
        }
    return sorted(trials), trials, facts


def statuses(
    dates: list[str], trials: dict[str, AlfBunch], facts: dict[str, dict[str, object]]
) -> list[str]:
    """The status of every date, in order, as the pipeline computes them one after another."""
    out: list[str] = []
    previous = "not_computed"
    for index in range(len(dates)):
        window = dates[max(0, index - 2) : index + 1]
        window_trials = Bunch()
        protocols, ephys_dates, n_delay = [], [], 0
        for d in window:
            if facts[d]["protocol"] == "habituation":
                continue
            window_trials[d] = trials[d]
            protocols.append(facts[d]["protocol"])
            if float(facts[d]["delay"]) >= 900:  # type: ignore[arg-type]
                n_delay += 1
            if facts[d]["location"] == "ephys_rig":
                ephys_dates.append(d)
        if not protocols:
            status = "habituation"
        else:
            status, _, _ = training.get_training_status(
                window_trials, protocols, ephys_dates, n_delay
            )
        status = pass_through_training_hierachy(status, previous)
        out.append(status)
        previous = status
    return out


def main() -> None:
    path, repeats = sys.argv[1], int(sys.argv[2])
    dates, trials, facts = load(path)
    seconds, result = [], []
    for _ in range(repeats):
        np.random.seed(0)
        start = time.perf_counter()
        result = statuses(dates, trials, facts)
        seconds.append(time.perf_counter() - start)
    fits = count_fits(dates, trials, facts)
    versions = {p: metadata.version(p) for p in ("ibllib", "psychofit", "numpy", "scipy")}
    print(
        json.dumps(
            {
                "seconds": seconds,
                "dates": dates,
                "statuses": result,
                "fits": fits,
                "versions": versions,
            }
        )
    )


def count_fits(
    dates: list[str], trials: dict[str, AlfBunch], facts: dict[str, dict[str, object]]
) -> int:
    """How many psychometric fits ibllib ran for the statuses (one more run, untimed, with
    psychofit's fitting function wrapped in a counter)."""
    fit = training.psy.mle_fit_psycho
    calls = 0

    def counted(*args: object, **kwargs: object) -> object:
        nonlocal calls
        calls += 1
        return fit(*args, **kwargs)

    training.psy.mle_fit_psycho = counted
    try:
        np.random.seed(0)
        statuses(dates, trials, facts)
    finally:
        training.psy.mle_fit_psycho = fit
    return calls


if __name__ == "__main__":
    main()
