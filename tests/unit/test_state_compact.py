"""The compact state (issue 14, item 4): packed per-trial statistics in memory, format-2 state
records at rest, and every record of format 1 (earlier releases) still loading.

The old record below was written by the code of commit ac43693 (format 1, before the compact
state): an IBL mouse of :data:`OLD_PLAN`, three sessions judged and a fourth open, stored by
``encode_state``, then zlib-compressed and base64-encoded here to keep this file short. The
test regenerates the same trials, folds them with this version's core and expects exactly the
state the old record holds.
"""

from __future__ import annotations

import base64
import json
import math
import random
import zlib
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import pytest

from bench.ibl import MousePlan, synthetic_table
from shaping.schemas.events import MouseEnrolled, Parameters, TrialCompleted
from shaping.services.curricula.catalog import default_catalog
from shaping.services.domain import MouseState, TrainingCore, initial_state
from shaping.services.domain.session_stats import (
    RT_DECIMALS,
    PackedTimes,
    PsychCells,
    SessionStats,
    SortedTimes,
    block_key,
    cell_key,
    signed_contrast,
)
from shaping.services.operator.ibl_trials import read_trials, session_events
from shaping.services.processor.state_store import (
    READ_FORMATS,
    STATE_FORMAT,
    StateFormatError,
    decode_state,
    encode_state,
    join_sessions,
    records_to_store,
    state_json,
)

OLD_PLAN = MousePlan(dates=4, trials=40, biased_from=2, ephys_from=3, delay_from=3, seed=3)

OLD_RECORD = zlib.decompress(
    base64.b64decode(
        "".join(
            [
                "eNrtXFuPozoS/itRXmZGgshXDK3tlVbal5V2tQ/nPO1oFBkw05whSQvI9Jk9O/99q8wlQEg66U7PXo5brQSMqbIL11ef",
                "jVM//e0n+ttys9tXZp2ny7vl3//6Z58uvaXZlruiMFBUl3vjLZN9WebJvthv1lu9MVAzj4vlqPyrKat8t4VLdEVWBC5W",
                "tf6MVetS51uTLmiMhabCatVa1+u2AvGW5X4LZ6XRX5Z3vK+0rne1LmzJQ17Vu/Lb8u7jb/3VQ4v9obp8u7Aa8+1nKN2Y",
                "GlpYLe8O90GBLqBEQDO9ZQY1qweT9sU8wuKusk6gjzoBzWQVTP4OtTZ5Va1LXWNvVoTJw5U41xUWSh6KgB4+DzXKer0x",
                "aa7BdGwFlwc3P5oyWxtdNdoHF1JoU40HIJtJslKhpIerYAkQmppCf1tb5YP+pI9lvrHNDEnAuAg4EVKEYRR9H1SyPVky",
                "woRPwLohGLLW1Zf1Y7mrd8mu6J5qY2Pz+PANup9/Xt5lYEJjn8VxC2pd2+cwfAIenCW7sjRJDT0J8DTf9gWUYwEaF47x",
                "EHQ8YEV7UpgM64R43BipkYfHY6GP1bfkAVXDc/gXJTg87z5S5kWfPFvky7aIerIr6qoFHm2LDpWCT2As6OA/TbmDErje",
                "mBW07rfYyY9UeVCPMU/Bxd2+TnYbA+XLJEly+M/bb/vVnsHnJm8LExzPeWpvKYv2ryzhv+yO7VlR+mXZHi+xSdV6g+qZ",
                "DLgnZRR4nArhUSm4x2CQeCwioQfDT3hcQusoEaEnWKDwlHuCQKM5x3pKwockxKM8Uh6jKvQoE2AMhfIiEXk0FNhDCqII",
                "D0EyhzIWCE+KCAUoBorCwBMKBFCQ4AUE/kCWhGYRAoUBh1YSqMMlNgGV8CAEMUqi/TgaLzW1zosGiL5/92bdn97Q/QU5",
                "5f6hkqc8/tjfhZz1cLKKqJr3cDpy04GDU6ZWioTqOgdnABgBiaIQDEoVUTw44+DRj3FwLicOLg/+TQb+3fh0498wSnv/",
                "puzYv7Fs5N+9l/Kx3wbgtp1vs5WEEu6RtqQvYG0Bk/aeQ0EHB7wX67d1WC8lWLGxFL8vIVNYwaIRiNBVyAPq0RV6LYUH",
                "Ds7AVlSAnwC+g4PAV8hhWMFZAL2DgMBCrMJ5JOBMCoJfkVTqBB6BG3OLb2M8SpIOiOxRngz/urMRHjU4VDaQ1H2XLShh",
                "gQWpIR5R6BugEPYMEMhjRAD2BIAzMDIBWLB3NOLECwlrcYXCB40IwAd0GQYvoooXKuXJiHkBoFYIg4lKCKQUI3EQcQ/M",
                "AmiiPAHQRXlI8YqAe/EMtUgWeeATUBe+8RjNxy1qQfS0iAnjNZIgm9ALkYf9EOKhIhEqevi8hnhwooKI9Z/qBCwBKznB",
                "OyKuTjAPGqhVJIbNuQSYYGzLQAQC7lachRFTp4GJkhlgwp4BNb0hLNEJLIXztKOBnxaW1ACWghlYklPa0UAM6+lERzrU",
                "AByaOvJQp8UYcUCqFj9Ej0OdFDqFLj5BIToFqkFbhrA0Qk0GYDbCKQhtyAgCtC1dgf+yBrM4AhPEbDgjSuAZ8A85A0VA",
                "3hjcGh5To/wAOfmmh56eMLUnEyiyAGQBx2+xp8Ufe9IcD6FIUSQnxAuAT4fo80AQOQdcAcAQwFkEDA4K5gCIEF4IEAEB",
                "1BMhb9lLoKD5UD0E0AFwhksRQAuYAXkOEhfgMgBUrIU7sAjwK26/KQXAEwDrSnIPUQzQDfGKgr2sBgWDCowGTQmO4OfT",
                "wUc6S/42Qhw4PRzDQG295I4CdC13jwacs7l/iEgDJOOnZmww+Jt6MOXzY13DkPaWha7qxp3Ab1LzK6LXaS9u+VlZA9rp",
                "enTlZxLeEQL//7jQ05sJ6cTR4Xm9lIKIE74eDHydD3xdzPi6mPh658jiOO6LqRPCkBiTEHGGYXQy6ElW0t/CJjAj5zx7",
                "DBCIOxNOwilB4oHOgZyWcev457yaz3t1coJdbI4JRtFziu6jc+eGd/jt3Gfs1eDFEQW3Ag+GMCgBq2UA0MTB8RTQgAho",
                "RGDnKuD2xIOJL0w1Auv1kRQ4XYFjMAm6oAB4g3EiJc5lYJYoCRwDrwAGAuzKQ74BpoD7kVShHNqCAw0tTiCZAEPALMhe",
                "Al7D6bFHt06UFDsY4+sT3MJWSU2Sd55rvppt3dRKI5ERIrWfCqF9mWWBr5VJ/UgTHUuZccWs79g76m+P6JI/oYf/XOpt",
                "lWMUt85VJQ9mow8LOAAeM0tCszBwotU75C7lkbMT6+zsTljaQBqfT/S+ahiFFaJolNBYJ37CE+FjCPE1cDQ/YCymkSJC",
                "8Xj5wgWprNxt1vNsrd6tZ8HvYPol4NLnEvqLttgXWLM0OmkInL1j3cAlXFubr7rY215VdslqcgN8p98EgMeuTBv9MPKT",
                "Mn+sG1XQlyKP31ULxLN9tch25aJ+MIsnwNrd0yKvFhMJq5NNHXTsWCuYKM0RwVr6tIsrU34dtLshsXBvo3ld5f807xHd",
                "q3v+YdndgGGGI/yC0z9q4Ie7Em754z2qf4B2POyKtJ3fPuqq6pYVkVL3CipolR2NB5H0SOT9VSLbNnfxpMGq993p/bvu",
                "8b/zFrNdYs/qJ0P91oajBmx368EQOwgm13XsWLANNutCP4KTFrun7ol4i7jYJV/uYaI47sl2XxQTjX+Y9oReqvABAuSP",
                "1TjbRfbDu/g2GpHjzJlz4S/OVXi+MX8cN0aeH1KbfPu+dZiOO/WOPlYljofvRJUg5GJl/VTzhLZm3fucNpihntPV6mlJ",
                "zTx4gbsh3zv3LNlZqAHsrteWpCJHvamvt+1vGHADYbN9IM8CML9IUcOpR4q8BTywjmzfR4Q8q/kqmLTGG4alG1qv1E+3",
                "FP0Jhc8Gc2udFwdye/cVQbzT5gK4C+AugLsA7gK4C+D/nwF8u6sXZ+TfKMS85OFcZaKN/vWUd3qLfnXz/mdo34drgeF5",
                "bz0oP/LWV2t/xnvts+voyo2J3Y3EniZ1A0B4Ga/rBFxB7QY6Hbtz7M6xO8fuHLtz7M6xO8fufj/srh8Xx7JfOybeEAuQ",
                "k95O8pCW7rcYZnQMJ1MqKsii2Sax6LbWL/Q2tWzUvsVFMlrVeVEsYgORekJM7xYH0Yv3Da1dFBqqVlaEIPXDRP6i2n2Y",
                "8Fn8sUCsky9jPjtq9OVctt+E1hHDvBqwwqYt7z7cdEyMdta8Xpl4xmNhtlDnpm64w4RV32wGM3opfe3s5fAO/KKZy+iV",
                "ef+km506v/tJCzDFZ3vq09dOZnRRvNFspm38NKwluy3oq+r7Cd2g4VXB9MjCSAPXnfCbPjsdA5AccfYpfV5FgeREhIyH",
                "If6k4SztpOf70mjr688/+2AliAwZDQkJAyZC+QzTvUTl0cRsyneoaDspGKG46ekt5mZTpYwrJgJJAhWicXE77Su0uinR",
                "q6dEFq9vCBVDELIs5E20vAGsvx16IpM9Kf3VvMWtyl33JE4Jf63VNvmvQLU6K1U3le2WKd0ypVumdMuUbpnSLVO6ZUq3",
                "THm7Vs+KvyFdsVOAY98ZF1vTjYvebnV2MhV5SV/PrrXp16y16evW2rTbIeAW29xim1tsc4ttv8vFtj5c3iCo/e9iQvDD",
                "MYFG/wlMYBeqvCkksB8FCewHQ0L47GzB0qtbs099610BloTMbgv4uXt53721H/ze+dQGgUEV3BfQCz/eGKDrF+wGGDb2",
                "VtsBHnSc180vrd99uNK65Io9AbYX9+8GFnqHXPPZSt7ikrby220pyLc3ZKafBmlHhhkbZ1M09jmA9puNxlSNL8+4cz73",
                "0XwKIrO1u7YrOwSxo4WpoSeYW2gPkAG9wuQSzVLCuWxDg7xN3VoWwkz7kDrbdoU27nfd/OjzT92jOpSxmTLal/Vo1tzc",
                "gNegEO+mk4r00yEv0yha9+Zu5gWHWDsXViexcTYOToLZfOCahp8ToaapxkjboOZJ9IWDdkyuDLTPXmlUDi+FczrCkzrC",
                "kzrCOR0oel095JgZpikp654jbpvFi9bf2uXOcSKsauSjzbBqNgJ1SUCqjmq1gah13pbrDc76hZJB2VDjZM0SC/u8I+Do",
                "+eftxmzrSVqROE2lVJHyQ65TXyaZ8ENBlK9YwKPIiDgUcppW5E+9sL9U1X42qwg/m1Vk7JeHkldkErkwPcrsHiZESQAC",
                "aLvNq3RFArKTidC+vzBpSY9pw/wjtmzd5ZPpLy3q3WDr1t3i2o1e88l5uz5t95vYlDZjkvmap2abGJfcxL2nd6+l3Wtp",
                "91ravZZ2r6VdchOX3MQFcBfAXQB3AdwFcBfA3b4yt6/MJTdxyU0cu3PszrE7x+4cu3PszrE796sBl9zEJTdxyU1cchP3",
                "ewv3ewv3ewv3ews3JXLJTVxyE7cq55KbuGVKt0zplindMqVbpnTLlG6Z0i1TuuQmLrmJ2yHgFtvcYptbbHOLbS65iUtu",
                "4pKbuOQmLrmJS27ikpvcJLmJy/bhsn38P2f7mMt+o9Nf9lWNyTpw3EOVJ11i6xCbln+abogq9Xbx9JADUI5AdYi475Gt",
                "fTP1YGcNwCZ415MpMl2aRvF3zFuRYNKQLtmIVQgPyDdbgFXEWUkDpdPMT2kgfJlJ7oeUpHhKechYkCWYNISTMNJaCT9N",
                "0sCXCU2hmkx8GINRFkRpGqc4V1c8TZTMqM9JkvjSgNyIZMyXLFWCmMxQieQySwQqCXy4m/hS6MDXJAv9WCQiJjRLYxpB",
                "NQoCIgYyQkmhWpIaPyap8JNYEkPgAhECu6BVxkjMfehKBNIo8yO8wWimdZSkUWqlGZUqCR7lZ4kJoUVx6seMGd8oLTJi",
                "YmoUJv/QcUZkLMFCAYWeBoHxtUyEHyU0gaZJmdpqmSAxzUjsk1iD3VQQ+GEiYz9SEnFDa6kUGoRGMgCfh4Zr6IIOtB+l",
                "LILuxgnPIh2oKG6qJRRinJ9wUCVlJH3NeeQHjIEpFBGK221Xl+VXgTtMxqGTVAcxdMFwX2cM2hBqoUVsArA1VLsw60wU",
                "p4xoxn2VcrCbTBOQxlOfZzSWUK4jzXDkmV9MUvdY358fMkQtZ/wAwseXkV9+BEm/7NPPKAjC9jA9TZPBxifLk9mkSNhk",
                "lynrafoaEtr0NeSuyVvT5cDB5TQ/1nXysLTprOC2QVqeC0dzc9+cOoFrDCqUbbacS9J0sWCSpovyk3m6gsnfOE8Xk1Y3",
                "PZen62wanB2gGMb2jnI1UNYRs8ZEF3pyR9oGEDZmc+MLA/IHFb7Np8mhRxnRKFKYmRFDz4yY6OSIiV4wYi7EmLkRE7X5",
                "lYhaKRJeMWK4nIwYeRgwZDxgQiQ0o1xuzGpTbzpGLkTUtxgj7GiMsBNjhC3P56ibHSNtUqwrUeUyrJ8ZI/M5uP7rkv+9",
                "esBcmUbs5IAZbSOefxFyWaZFnLZYwlRgrJpVm28f9/V6l2WV6WJb88zT/LOpuiJdAAXGmJh/bmPdw76KYfrcPL8nAzS4",
                "bq88wSgsm0NoLM6Zmql4Y7EDy/7+/d8NhspQ",
            ]
        )
    )
)
"""A format-1 state record (``SMS1`` + JSON) as commit ac43693 wrote it."""


def fold_old_plan(tmp_path: Path, last_open: bool = True) -> MouseState:
    """The mouse of :data:`OLD_RECORD`, folded by this version's core."""
    table = tmp_path / "trials.csv"
    synthetic_table(table, OLD_PLAN)
    sessions = read_trials(table)
    catalog = default_catalog()
    engine = catalog.get("ibl")
    core = TrainingCore(catalog)
    mouse = "OLD-1"
    enrol = MouseEnrolled(
        event_id="old-enrol",
        mouse_id=mouse,
        occurred_at=datetime.fromisoformat(sessions[0].session_date + "T07:00:00+00:00"),
        curriculum_name=engine.name,
        curriculum_version=engine.version,
    )
    state, _ = core.handle(initial_state(mouse), enrol)
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
        if last_open and number == len(sessions) - 1:
            events = events[:-1]
        for event in events:
            state, _ = core.handle(state, event)
    return state


# -- old records ----------------------------------------------------------------------------------


def test_this_version_writes_format_2_and_reads_format_1() -> None:
    assert STATE_FORMAT == 2 and READ_FORMATS == (1, 2)
    assert OLD_RECORD.startswith(b"SMS1")
    old = json.loads(OLD_RECORD[4:])
    # What format 1 held: rt_zero as a list of floats in trial order, psych as an object.
    stats = [r["stats"] for r in old["history"]] + [old["open_session"]["stats"]]
    assert all(isinstance(s["rt_zero"], list) and isinstance(s["psych"], dict) for s in stats)
    assert any(s["rt_zero"] != sorted(s["rt_zero"]) for s in stats)


def test_an_old_record_loads_as_exactly_the_state_this_version_folds(tmp_path: Path) -> None:
    state = decode_state(OLD_RECORD)
    assert state == fold_old_plan(tmp_path)
    assert state.open_session is not None and state.open_session.n_trials == OLD_PLAN.trials
    # Unversioned (bare JSON, the releases before the format number) loads the same.
    assert decode_state(OLD_RECORD[4:]) == state
    # Stored again, it is format 2, smaller, and comes back equal.
    again = encode_state(state)
    assert again.startswith(b"SMS2") and len(again) < len(OLD_RECORD) / 2
    assert decode_state(again) == state


def test_an_old_record_goes_on_to_the_same_decisions(tmp_path: Path) -> None:
    """The old record's open session ended by this version: the decision and the state are
    those of a fold of every event by this version."""
    table = tmp_path / "trials.csv"
    synthetic_table(table, OLD_PLAN)
    whole = fold_old_plan(tmp_path, last_open=False)
    old = decode_state(OLD_RECORD)
    assert old.open_session is not None
    last = read_trials(table)[-1]
    ended = session_events(
        last,
        mouse_id="OLD-1",
        session_id=old.open_session.session_id,
        stage=old.open_session.stage,
        curriculum_name="ibl",
        curriculum_version=whole.curriculum_version or "",
        start=datetime.fromisoformat(last.session_date + "T08:00:00+00:00"),
    )[-1]
    after, outputs = TrainingCore(default_catalog()).handle(old, ended)
    assert after == whole
    assert outputs and after.last_decision == whole.last_decision


def test_the_split_store_joins_an_old_state_record_with_new_open_sessions() -> None:
    state = decode_state(OLD_RECORD)
    assert state.open_session is not None
    moved = state.model_copy(update={"input_offsets": {"events/0": 7}})
    none, sessions = records_to_store(OLD_RECORD, state, moved)
    assert none is None and sessions is not None and sessions.startswith(b"SOS2")
    assert join_sessions(OLD_RECORD, sessions) == moved


@pytest.mark.parametrize("header", [b"SMS3", b"SMS0", b"SMS9"])
def test_formats_this_version_does_not_read_are_refused(header: bytes) -> None:
    with pytest.raises(StateFormatError, match="shaping replay"):
        decode_state(header + OLD_RECORD[4:])


def test_a_damaged_format_2_record_is_damage_not_another_format() -> None:
    record = encode_state(decode_state(OLD_RECORD))
    with pytest.raises(ValueError) as caught:
        decode_state(record[:-10])
    assert not isinstance(caught.value, StateFormatError)
    assert json.loads(state_json(record))["mouse_id"] == "OLD-1"


# -- packed statistics ----------------------------------------------------------------------------


def _trial(rng: random.Random, index: int, rt: float | None) -> TrialCompleted:
    outcome: Literal["correct", "incorrect", "miss"] = rng.choice(["correct", "incorrect", "miss"])
    contrast = rng.choice([0.0, 0.0625, 0.125, 0.25, 1.0])
    side = rng.choice(["left", "right"])
    parameters: Parameters = {f"contrast_{side}": contrast}
    if rng.random() < 0.8:
        parameters["probability_left"] = rng.choice([0.2, 0.5, 0.8])
    return TrialCompleted(
        event_id=f"t{index}",
        mouse_id="P",
        session_id="s",
        occurred_at=datetime(2026, 1, 5, 9, 0, tzinfo=UTC),
        trial_index=index,
        outcome=outcome,
        target_side=side,
        response_side=None if outcome == "miss" else rng.choice(["left", "right"]),
        reaction_time_s=rt,
        correction_trial=rng.random() < 0.1,
        trial_parameters=parameters,
    )


def _reference(
    trials: list[TrialCompleted],
) -> tuple[dict[str, list[int]], list[float], list[int | None]]:
    """What the lists of earlier releases held: psych, rt_zero (trial order), rts_ms."""
    psych: dict[str, list[int]] = {}
    rt_zero: list[float] = []
    rts: list[int | None] = []
    for t in trials:
        rt = t.reaction_time_s
        rts.append(None if rt is None else round(rt * 1000))
        contrast = signed_contrast(t.trial_parameters)
        if contrast is None:
            continue
        key = cell_key(block_key(t.trial_parameters.get("probability_left")), contrast)  # type: ignore[arg-type]
        cell = psych.setdefault(key, [0, 0])
        cell[0] += 1
        cell[1] += t.outcome != "miss" and t.response_side == "right"
        if contrast == 0 and rt is not None:
            rt_zero.append(round(rt, RT_DECIMALS))
    return psych, rt_zero, rts


RTS = [
    0.412345678,
    None,
    1.5,
    0.0,
    -0.0,
    12.0000004,
    -0.25,
    3e6,  # 3,000,000 s: beyond 32-bit milliseconds, so the times fall back to a tuple
    1e300,  # no whole microseconds: rt_zero falls back to its list form
    0.1 + 0.2,
]


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_packed_statistics_hold_what_the_lists_held(seed: int) -> None:
    rng = random.Random(seed)
    trials = [
        _trial(rng, i, rng.choice(RTS) if rng.random() < 0.3 else rng.uniform(0.05, 4.0))
        for i in range(300)
    ]
    stats = SessionStats()
    for trial in trials:
        stats = stats.add(trial)
    psych, rt_zero, rts = _reference(trials)
    assert dict(stats.psych.items()) == psych and stats.psych == psych
    assert list(stats.rts_ms) == rts and stats.rts_ms == rts and len(stats.rts_ms) == len(rts)
    assert stats.rts_ms[-5:] == rts[-5:]
    # rt_zero is a multiset (a median reads it): kept sorted, the same floats bit for bit.
    assert [math.copysign(1, v) * abs(v) for v in stats.rt_zero] == sorted(rt_zero)
    assert sorted(map(float.hex, stats.rt_zero)) == sorted(map(float.hex, rt_zero))
    # Through JSON and back: equal, and the same floats (negative zero included).
    back = SessionStats.model_validate_json(stats.model_dump_json())
    assert back == stats
    assert list(map(float.hex, back.rt_zero)) == list(map(float.hex, stats.rt_zero))
    # The JSON forms of earlier releases read as the same statistics.
    old = {**json.loads(stats.model_dump_json()), "psych": psych, "rt_zero": rt_zero}
    assert SessionStats.model_validate_json(json.dumps(old)) == stats


def test_the_compact_json_forms() -> None:
    times = SortedTimes.of([0.5, 0.25, 1.000001])
    assert list(times) == [0.25, 0.5, 1.000001]
    assert times.to_json() == "250000,250000,500001"
    assert SortedTimes.of("250000,250000,500001") == times
    assert SortedTimes.of([-0.0, 0.5]).to_json() == [-0.0, 0.5]  # not exact in microseconds
    cells = PsychCells().add(0.2, -100.0, True).add(None, 0.0, False).add(0.2, -100.0, False)
    assert cells.to_json() == [[0.2, -100.0, 2, 1], [None, 0.0, 1, 0]]
    assert PsychCells.of(cells.to_json()) == cells
    assert PsychCells.of({"0.2|-100.0": [2, 1], "|0.0": [1, 0]}) == cells
    assert dict(PsychCells().add(None, math.inf, True).to_json()) == {"|inf": [1, 1]}  # type: ignore[arg-type]
    wide = PackedTimes().append(5).append(None).append(2**40)
    assert list(wide) == [5, None, 2**40] and PackedTimes.of([5, None, 2**40]) == wide
    with pytest.raises(ValueError):
        SortedTimes.of("12,x")
    with pytest.raises(ValueError):
        PsychCells.of({"0.2|-100.0": [1]})


def test_an_ibl_mouse_after_60_dates_of_600_trials_fits_in_20_kb(tmp_path: Path) -> None:
    """Issue 14's bound at rest (bench/STATE.md has the figures beside the old format's)."""
    table = tmp_path / "trials.csv"
    synthetic_table(table, MousePlan(dates=60, trials=600))
    catalog = default_catalog()
    engine = catalog.get("ibl")
    core = TrainingCore(catalog)
    sessions = read_trials(table)
    enrol = MouseEnrolled(
        event_id="big-enrol",
        mouse_id="BIG-1",
        occurred_at=datetime.fromisoformat(sessions[0].session_date + "T07:00:00+00:00"),
        curriculum_name=engine.name,
        curriculum_version=engine.version,
    )
    state, _ = core.handle(initial_state("BIG-1"), enrol)
    for number, session in enumerate(sessions):
        assignment = state.last_assignment
        assert assignment is not None
        for event in session_events(
            session,
            mouse_id="BIG-1",
            session_id=f"BIG-1-{number}",
            stage=assignment.stage,
            curriculum_name=assignment.curriculum_name,
            curriculum_version=assignment.curriculum_version,
            start=datetime.fromisoformat(session.session_date + "T08:00:00+00:00"),
        ):
            state, _ = core.handle(state, event)
    record = encode_state(state)
    assert state.session_total == 60 and len(record) <= 20_000
    assert decode_state(record) == state
