"""ibllib's own training status over a trial table, timed; run by bench/ibl.py in its own venv.

``python bench/ibl_upstream.py TRIALS.csv REPEATS`` (with the python of the venv that has
ibllib) prints one JSON object: the seconds each repeat took, the status per date, and the
versions of ibllib, psychofit, numpy and scipy. ``python bench/ibl_upstream.py --values
TRIALS.csv [TRIALS.csv ...]`` prints, per table (one mouse each), every date's window, raw and
final status and the values behind it (``info``: per-date ``perf_easy`` and ``n_trials``, the
pooled or the 0.2/0.8 block fits, ``rt``, ``n_ephys``, ``n_delay``), for bench/ibl_generated.py.
It imports ibllib and calls its functions; it contains none of their logic. It must not import
Shaping (that venv does not have it).

Seeding, as ibllib's own tests do (``TestTraining.setUp``): ``np.random.seed(0)`` before every
``get_training_status`` call, whose psychometric fits then share numpy's generator in ibllib's
order (for biased windows the 0.2 block, then the 0.8 block).

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


SEED = 0
"""numpy's seed before every get_training_status call (ibllib's TestTraining uses 0)."""


Window = tuple[list[str], Bunch, list[str], list[str], int]
"""Dates kept, their trials, protocols, dates on an ephys rig, dates with a start delay."""


def window_at(
    dates: list[str], index: int, trials: dict[str, AlfBunch], facts: dict[str, dict[str, object]]
) -> Window:
    """The date's window as ibllib's pipeline builds it: the date and up to two earlier dates,
    habituation dates skipped."""
    kept: list[str] = []
    window_trials = Bunch()
    protocols, ephys_dates, n_delay = [], [], 0
    for d in dates[max(0, index - 2) : index + 1]:
        if facts[d]["protocol"] == "habituation":
            continue
        kept.append(d)
        window_trials[d] = trials[d]
        protocols.append(str(facts[d]["protocol"]))
        if float(facts[d]["delay"]) >= 900:  # type: ignore[arg-type]
            n_delay += 1
        if facts[d]["location"] == "ephys_rig":
            ephys_dates.append(d)
    return kept, window_trials, protocols, ephys_dates, n_delay


def judge(window: Window) -> tuple[str, dict[str, object]]:
    """ibllib's raw status of one window and its info, numpy seeded first."""
    _, window_trials, protocols, ephys_dates, n_delay = window
    if not protocols:
        return "habituation", {}
    np.random.seed(SEED)
    status, info, _ = training.get_training_status(window_trials, protocols, ephys_dates, n_delay)
    return str(status), dict(info)


def statuses(
    dates: list[str], trials: dict[str, AlfBunch], facts: dict[str, dict[str, object]]
) -> list[str]:
    """The status of every date, in order, as the pipeline computes them one after another."""
    out: list[str] = []
    previous = "not_computed"
    for index in range(len(dates)):
        status, _ = judge(window_at(dates, index, trials, facts))
        status = pass_through_training_hierachy(status, previous)
        out.append(status)
        previous = status
    return out


def plain(value: object) -> object:
    """A JSON value: numpy numbers and arrays as floats and lists, NaN as None."""
    if isinstance(value, np.ndarray | list | tuple):
        return [plain(v) for v in value]
    if isinstance(value, np.integer | int) and not isinstance(value, bool):
        return int(value)
    if isinstance(value, np.floating | float):
        return None if np.isnan(value) else float(value)
    return value


INFO_KEYS = ("perf_easy", "n_trials", "psych", "psych_20", "psych_80", "rt", "n_ephys", "n_delay")


def values(
    dates: list[str], trials: dict[str, AlfBunch], facts: dict[str, dict[str, object]]
) -> list[dict[str, object]]:
    """Every date: its window, ibllib's raw status, the status after
    pass_through_training_hierachy, and the info values. For a window of biased dates also
    ``psych_80_reseeded``: the 0.8 block fitted after seeding numpy again, as if it were the
    window's first fit (what a fit seeded on its own gets, not ibllib's sequence)."""
    out: list[dict[str, object]] = []
    previous = "not_computed"
    for index, day in enumerate(dates):
        window = window_at(dates, index, trials, facts)
        raw, info = judge(window)
        status = pass_through_training_hierachy(raw, previous)
        previous = status
        record: dict[str, object] = {
            "date": day,
            "window": window[0],
            "protocols": window[2],
            "raw_status": raw,
            "status": status,
            "info": {k: plain(info[k]) for k in INFO_KEYS if k in info},
        }
        if "psych_80" in info:
            np.random.seed(SEED)
            every = training.concatenate_trials(window[1])
            record["psych_80_reseeded"] = plain(training.compute_psychometric(every, block=0.8))
        out.append(record)
    return out


def versions() -> dict[str, str]:
    return {p: metadata.version(p) for p in ("ibllib", "psychofit", "numpy", "scipy")}


def main_values(paths: list[str]) -> None:
    mice = {}
    for path in paths:
        dates, trials, facts = load(path)
        mice[path] = values(dates, trials, facts)
    print(json.dumps({"seed": SEED, "versions": versions(), "mice": mice}))


def main() -> None:
    if sys.argv[1] == "--values":
        main_values(sys.argv[2:])
        return
    path, repeats = sys.argv[1], int(sys.argv[2])
    dates, trials, facts = load(path)
    seconds, result = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        result = statuses(dates, trials, facts)
        seconds.append(time.perf_counter() - start)
    fits = count_fits(dates, trials, facts)
    print(
        json.dumps(
            {
                "seconds": seconds,
                "dates": dates,
                "statuses": result,
                "fits": fits,
                "versions": versions(),
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
        statuses(dates, trials, facts)
    finally:
        training.psy.mle_fit_psycho = fit
    return calls


if __name__ == "__main__":
    main()
