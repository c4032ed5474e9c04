"""Per-session sufficient statistics: what one trial adds to its session, kept small.

Every metric Shaping computes from trial events reads these statistics, never the events: a
trial updates its session's :class:`SessionStats` (counts per outcome, per signed contrast and
block, easy-trial counts, d' counts, the reaction times medians need, and one character per
trial for rolling trial windows), and the SessionEnded turns them into a
:class:`~services.domain.state.SessionRecord`. A metric value at a decision is then a pure
function of the records (plus the state's counters), which is what lets a late session be
recomputed (docs/recompute.md).

Conventions (IBL's, ibllib ``brainbox.behavior.training``):

- signed contrast = (contrast_right - contrast_left) * 100, a missing contrast counting as 0;
- a trial is easy when |signed contrast| >= 50;
- a rightward choice is ``response_side == "right"`` (IBL ``choice == -1``); the psychometric
  curve is the fraction of rightward choices among *all* trials at a contrast, misses included
  (as ``compute_performance(prob_right=True)`` computes it);
- the block is the trial's ``probability_left`` (None when absent);
- reaction time = ``reaction_time_s`` (IBL: response_times - stimOn_times); a missing one is
  NaN, which medians skip (``numpy.nanmedian``).
"""

from __future__ import annotations

import math
import struct
from bisect import bisect_right
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Protocol, overload

from pydantic import BaseModel, ConfigDict, Field, GetCoreSchemaHandler
from pydantic_core import CoreSchema, core_schema

from shaping.schemas.events import ParamValue
from shaping.services.domain.frozen import replaced


class TrialFacts(Protocol):
    """What folding a trial quietly reads of it (:meth:`SessionStats.add_all`, and
    ``TrainingCore.fold_quietly`` for its session, index and rig). A TrialCompleted has all of
    it; a batch path that has already checked a run of trials may pass lighter records."""

    @property
    def session_id(self) -> str | None: ...

    @property
    def rig_id(self) -> str | None: ...

    @property
    def trial_index(self) -> int: ...

    @property
    def outcome(self) -> str: ...

    @property
    def response_side(self) -> str | None: ...

    @property
    def target_side(self) -> str | None: ...

    @property
    def reaction_time_s(self) -> float | None: ...

    @property
    def correction_trial(self) -> bool: ...

    @property
    def trial_parameters(self) -> Mapping[str, ParamValue]: ...


EASY_CONTRAST = 50.0
"""|signed contrast| (percent) from which a trial is easy (IBL's perf_easy)."""

RT_DECIMALS = 6
"""Reaction times at 0% contrast are kept to the microsecond (a pooled median moves by less
than 1 us; the state stays small)."""

OUTCOME_CODES = {"correct": "c", "incorrect": "i", "miss": "m"}
"""One character per trial; upper case marks a correction trial."""

SIDE_CODES = {"right": "r", "left": "l"}
"""One character per trial for the response side; ``-`` for none (a miss)."""


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def signed_contrast(parameters: Mapping[str, object]) -> float | None:
    """IBL's signed contrast in percent from a trial's parameters, or None when the trial has
    neither ``contrast_left`` nor ``contrast_right`` (a task without contrasts).

    A missing side counts as 0, as ibllib's ``get_signed_contrast`` replaces NaN by 0.
    """
    return _signed(
        _number(parameters.get("contrast_left")), _number(parameters.get("contrast_right"))
    )


def _signed(left: float | None, right: float | None) -> float | None:
    if left is None and right is None:
        return None
    value = ((right or 0.0) - (left or 0.0)) * 100
    return value + 0.0  # no negative zero


def _finite_number(value: object) -> float | None:
    """:func:`_number`, with a finite float (nearly every value met) answered inline."""
    if type(value) is float and value - value == 0.0:  # finite: inf - inf and NaN are NaN
        return value
    return None if value is None else _number(value)


def block_key(probability_left: float | None) -> str:
    """The key of a probabilityLeft block in the statistics (``""``: no block)."""
    return "" if probability_left is None else repr(float(probability_left))


def cell_key(block: str, contrast: float) -> str:
    """The key of one (block, signed contrast) cell of the psychometric table."""
    return f"{block}|{contrast!r}"


def parse_cell(key: str) -> tuple[float | None, float]:
    """The (block, signed contrast) of a psychometric-table key."""
    block, _, contrast = key.partition("|")
    return (float(block) if block else None), float(contrast)


# -- compact per-trial statistics -------------------------------------------------------------
#
# A finished session's statistics stay in a mouse's state for MAX_SESSION_HISTORY sessions,
# live in the processor's memory and in its changelog. They are kept packed: each sequence is
# one ``bytes`` object of machine numbers (not a list of Python objects), and each serialises
# to a small JSON form (the same JSON the releases before wrote, except ``rt_zero``, which is
# written as sorted deltas in microseconds when that is exact). Each of the three types reads
# the JSON forms earlier releases wrote, so old state records load unchanged.


def _schema(cls: Any) -> CoreSchema:
    """A pydantic schema for a packed type: instances pass, anything else goes through
    ``cls.of`` (the JSON forms, old or new); serialised by ``cls.to_json``."""
    coerce = core_schema.no_info_plain_validator_function(cls.of)
    return core_schema.json_or_python_schema(
        json_schema=coerce,
        python_schema=core_schema.union_schema([core_schema.is_instance_schema(cls), coerce]),
        serialization=core_schema.plain_serializer_function_ser_schema(cls.to_json),
    )


def _integer(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"expected an integer, found {value!r}")
    return value


def _real(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"expected a number, found {value!r}")
    return float(value)


_NO_RT = -(2**31)
"""The packed value of a trial without a reaction time."""

_INT32 = struct.Struct("=i")


class PackedTimes(Sequence[int | None]):
    """Reaction times per trial in whole milliseconds (None: none), packed as 4-byte integers.

    A value outside the 32-bit range (about 24 days, which no rig reports, though a hostile
    one might) turns the sequence into a plain tuple, so every value stays exact. Serialises
    as a JSON list, as earlier releases wrote ``rts_ms``.
    """

    __slots__ = ("_data",)

    def __init__(self, data: bytes | tuple[int | None, ...] = b"") -> None:
        self._data = data

    @classmethod
    def of(cls, value: object) -> PackedTimes:
        """From a sequence of int | None (the JSON form)."""
        if isinstance(value, PackedTimes):
            return value
        if not isinstance(value, list | tuple):
            raise ValueError(f"reaction times must be a list, found {type(value).__name__}")
        packed = cls()
        for item in value:
            packed = packed.append(None if item is None else _integer(item))
        return packed

    def to_json(self) -> list[int | None]:
        """The JSON form: a list of int | None."""
        return self._list()

    def append(self, value: int | None) -> PackedTimes:
        """These times with one more at the end."""
        data = self._data
        if isinstance(data, bytes):
            if value is None:
                return PackedTimes(data + _INT32.pack(_NO_RT))
            if _NO_RT < value < 2**31:
                return PackedTimes(data + _INT32.pack(value))
            data = tuple(self)
        return PackedTimes((*data, value))

    def extend(self, values: Sequence[int | None]) -> PackedTimes:
        """These times with ``values`` at the end (as :meth:`append` on each in turn)."""
        data = self._data
        if isinstance(data, bytes) and all(
            value is None or _NO_RT < value < 2**31 for value in values
        ):
            packed = [_NO_RT if value is None else value for value in values]
            return PackedTimes(data + struct.pack(f"={len(packed)}i", *packed))
        times = self
        for value in values:
            times = times.append(value)
        return times

    def __len__(self) -> int:
        data = self._data
        return len(data) // 4 if isinstance(data, bytes) else len(data)

    def __iter__(self) -> Iterator[int | None]:
        data = self._data
        if not isinstance(data, bytes):
            yield from data
            return
        yield from self._list()

    def _list(self) -> list[int | None]:
        data = self._data
        if not isinstance(data, bytes):
            return list(data)
        return [None if v == _NO_RT else v for v in memoryview(data).cast("i").tolist()]

    @overload
    def __getitem__(self, index: int) -> int | None: ...
    @overload
    def __getitem__(self, index: slice) -> list[int | None]: ...
    def __getitem__(self, index: int | slice) -> int | list[int | None] | None:
        return self._list()[index]

    def __eq__(self, other: object) -> bool:
        if isinstance(other, PackedTimes):
            if isinstance(self._data, bytes) and isinstance(other._data, bytes):
                return self._data == other._data
            return list(self) == list(other)
        if isinstance(other, list | tuple):
            return list(self) == list(other)
        return NotImplemented

    def __hash__(self) -> int:
        return hash(tuple(self))

    def __repr__(self) -> str:
        return f"PackedTimes({list(self)!r})"

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: GetCoreSchemaHandler) -> CoreSchema:
        return _schema(cls)


_US = 1_000_000


_EXACT_US = 2**52 / _US
"""Below this many seconds, a float to the microsecond is exactly its whole microseconds."""


def _microseconds(values: list[float]) -> list[int] | None:
    """Sorted ``values`` (seconds, as ``round(rt, RT_DECIMALS)`` left them) in whole
    microseconds, or None unless the microseconds give back exactly the same floats (a
    negative zero, a value beyond :data:`_EXACT_US` or one with more decimals would not)."""
    if not values or values[0] <= -_EXACT_US or values[-1] >= _EXACT_US:
        return None if values else []
    try:
        micros = [round(v * _US) for v in values]
    except (ValueError, OverflowError):  # NaN or infinity, in a record written by hand
        return None
    if [m / _US for m in micros] != values:
        return None
    if 0 in micros and any(math.copysign(1.0, v) < 0 for v in values if v == 0):
        return None
    return micros


def _floats(data: bytes) -> list[float]:
    return list(struct.unpack(f"={len(data) // 8}d", data))


class SortedTimes(Sequence[float]):
    """The reaction times of a session's 0% contrast trials (s, to the microsecond), kept
    sorted: the only metric reading them is a median, which needs the values, not their
    order. Packed as 8-byte floats.

    JSON form: a string of the sorted values in whole microseconds, each written as its
    difference from the one before (``"712345,1200,..."``), when every value is exactly that
    many microseconds; otherwise a list of the floats. A list (what earlier releases wrote,
    in trial order) is read too, and sorted.
    """

    __slots__ = ("_data",)

    def __init__(self, data: bytes = b"") -> None:
        self._data = data

    @classmethod
    def of(cls, value: object) -> SortedTimes:
        """From the JSON forms (a delta string, or a list of numbers in any order)."""
        if isinstance(value, SortedTimes):
            return value
        if isinstance(value, str):
            total, values = 0, []
            for part in value.split(",") if value else []:
                try:
                    total += int(part)
                except ValueError:
                    raise ValueError(f"bad reaction time delta {part!r}") from None
                values.append(total / _US)
            return cls(struct.pack(f"={len(values)}d", *values))
        if not isinstance(value, list | tuple):
            raise ValueError(f"reaction times must be a list, found {type(value).__name__}")
        values = sorted(_real(item) for item in value)
        return cls(struct.pack(f"={len(values)}d", *values))

    def to_json(self) -> str | list[float]:
        """The delta string when exact, else the list."""
        values = _floats(self._data)
        micros = _microseconds(values)
        if micros is None:
            return values
        return ",".join(map(str, [b - a for a, b in zip([0, *micros], micros, strict=False)]))

    def insert(self, value: float) -> SortedTimes:
        """These times with one more, in its sorted place (after any equal ones)."""
        data = self._data
        at = bisect_right(memoryview(data).cast("d"), value) * 8
        return SortedTimes(data[:at] + struct.pack("=d", value) + data[at:])

    def insert_all(self, values: Sequence[float]) -> SortedTimes:
        """These times with ``values`` each in its sorted place (as :meth:`insert` on each in
        turn: a stable sort keeps equal values in the order they came, the older first)."""
        merged = sorted([*_floats(self._data), *values])
        return SortedTimes(struct.pack(f"={len(merged)}d", *merged))

    def __len__(self) -> int:
        return len(self._data) // 8

    def __iter__(self) -> Iterator[float]:
        return iter(_floats(self._data))

    @overload
    def __getitem__(self, index: int) -> float: ...
    @overload
    def __getitem__(self, index: slice) -> list[float]: ...
    def __getitem__(self, index: int | slice) -> float | list[float]:
        return _floats(self._data)[index]

    def __eq__(self, other: object) -> bool:
        if isinstance(other, SortedTimes):
            return self._data == other._data
        if isinstance(other, list | tuple):
            return list(self) == sorted(other)
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self._data)

    def __repr__(self) -> str:
        return f"SortedTimes({list(self)!r})"

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: GetCoreSchemaHandler) -> CoreSchema:
        return _schema(cls)


_CELL = struct.Struct("=ddqq")
"""One psychometric cell: block (NaN: none), signed contrast, trials, rightward choices."""

_CELL_KEY = struct.Struct("=dd")
_NO_BLOCK = float("nan")


def _unblock(block: float) -> float | None:
    return None if math.isnan(block) else block


def _row(row: object) -> bytes:
    """One packed cell from its JSON row, ``[block or null, contrast, trials, rightward]``."""
    if not isinstance(row, list | tuple) or len(row) != 4:
        raise ValueError(f"bad psychometric cell {row!r}")
    block, contrast, n, right = row
    packed_block = _NO_BLOCK if block is None else _real(block)
    if math.isnan(packed_block) and block is not None:
        raise ValueError(f"bad psychometric block {block!r}")
    return _CELL.pack(packed_block, _real(contrast), _integer(n), _integer(right))


class PsychCells(Mapping[str, list[int]]):
    """A session's psychometric table, packed: per (block, signed contrast) cell, in the
    order first met, [trials, rightward choices].

    As a mapping it reads like the table earlier releases kept, ``"block|contrast"`` ->
    [trials, rightward] (:func:`cell_key`); :meth:`cells` gives the numbers without building
    the keys. JSON form: a list of ``[block or null, contrast, trials, rightward]`` rows; the
    object earlier releases wrote (``{"block|contrast": [trials, rightward]}``) is read too,
    and written when a number is not finite (which JSON cannot hold).
    """

    __slots__ = ("_data",)

    def __init__(self, data: bytes = b"") -> None:
        self._data = data

    @classmethod
    def of(cls, value: object) -> PsychCells:
        """From the JSON form, ``{"block|contrast": [trials, rightward]}``."""
        if isinstance(value, PsychCells):
            return value
        if isinstance(value, list | tuple):
            return cls(b"".join(_row(row) for row in value))
        if not isinstance(value, Mapping):
            raise ValueError(f"a psychometric table must be an object, found {value!r}")
        parts = []
        for key, cell in value.items():
            if not isinstance(key, str) or not isinstance(cell, list | tuple) or len(cell) != 2:
                raise ValueError(f"bad psychometric cell {key!r}: {cell!r}")
            block, contrast = parse_cell(key)
            if cell_key(block_key(block), contrast) != key:
                raise ValueError(f"bad psychometric cell key {key!r}")
            n, right = (_integer(c) for c in cell)
            parts.append(_CELL.pack(_NO_BLOCK if block is None else block, contrast, n, right))
        return cls(b"".join(parts))

    def to_json(self) -> list[list[float | int | None]] | dict[str, list[int]]:
        """The JSON form: rows, or the object form when a number is not finite."""
        rows: list[list[float | int | None]] = []
        for block, contrast, n, right in _CELL.iter_unpack(self._data):
            if not (math.isfinite(contrast) and (math.isfinite(block) or math.isnan(block))):
                return dict(self.items())
            rows.append([_unblock(block), contrast, n, right])
        return rows

    def cells(self) -> Iterator[tuple[float | None, float, int, int]]:
        """(block or None, signed contrast, trials, rightward choices) per cell, in order."""
        for block, contrast, n, right in _CELL.iter_unpack(self._data):
            yield _unblock(block), contrast, n, right

    def add(self, block: float | None, contrast: float, right: bool) -> PsychCells:
        """The table with one more trial in the cell (block, contrast)."""
        data = self._data
        key = _CELL_KEY.pack(_NO_BLOCK if block is None else block, contrast)
        at = data.find(key)
        while at != -1 and at % _CELL.size:
            at = data.find(key, at + 1)
        if at == -1:
            return PsychCells(data + key + struct.pack("=qq", 1, int(right)))
        _, _, n, rightward = _CELL.unpack_from(data, at)
        cell = key + struct.pack("=qq", n + 1, rightward + int(right))
        return PsychCells(data[:at] + cell + data[at + _CELL.size :])

    def merge(self, counts: Mapping[bytes, list[int]]) -> PsychCells:
        """The table with ``counts`` added: per packed (block, contrast) key (``_CELL_KEY``),
        [trials, rightward choices]. A cell the table has is updated in its place, a new one
        goes at the end in the order of ``counts`` (as :meth:`add` on each trial in turn)."""
        pending = dict(counts)
        parts = []
        size, key_size = _CELL.size, _CELL_KEY.size
        data = self._data
        for at in range(0, len(data), size):
            key = data[at : at + key_size]
            more = pending.pop(key, None)
            if more is None:
                parts.append(data[at : at + size])
            else:
                _, _, n, rightward = _CELL.unpack_from(data, at)
                parts.append(key + struct.pack("=qq", n + more[0], rightward + more[1]))
        for key, (n, rightward) in pending.items():
            parts.append(key + struct.pack("=qq", n, rightward))
        return PsychCells(b"".join(parts))

    def items(self) -> Iterator[tuple[str, list[int]]]:  # type: ignore[override]
        for block, contrast, n, right in self.cells():
            yield cell_key(block_key(block), contrast), [n, right]

    def __getitem__(self, key: str) -> list[int]:
        for name, cell in self.items():
            if name == key:
                return cell
        raise KeyError(key)

    def __iter__(self) -> Iterator[str]:
        return (name for name, _ in self.items())

    def __len__(self) -> int:
        return len(self._data) // _CELL.size

    def __eq__(self, other: object) -> bool:
        # Equal as tables, whatever the order of the cells (as the dicts before were).
        if isinstance(other, PsychCells) and self._data == other._data:
            return True
        if isinstance(other, Mapping):
            return dict(self.items()) == dict(other.items())
        return NotImplemented

    def __hash__(self) -> int:
        size = _CELL.size
        return hash(
            tuple(sorted(self._data[i : i + size] for i in range(0, len(self._data), size)))
        )

    def __repr__(self) -> str:
        return f"PsychCells({dict(self.items())!r})"

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: GetCoreSchemaHandler) -> CoreSchema:
        return _schema(cls)


class SessionStats(BaseModel):
    """Sufficient statistics of one session's trials.

    Attributes:
        n_trials: trials, misses included.
        n_correct: correct trials.
        n_incorrect: incorrect trials.
        n_miss: missed (no response) trials.
        n_right: responses to the right.
        n_left: responses to the left.
        n_easy: trials with |signed contrast| >= 50.
        n_easy_correct: correct easy trials.
        psych: ``"block|contrast"`` -> [trials, rightward choices] (misses in the trials),
            packed (:class:`PsychCells`).
        rt_zero: reaction times (s, to the microsecond) of 0% contrast trials that have one,
            sorted and packed (:class:`SortedTimes`).
        dprime_counts: [left-target trials, hits (correct on them), right-target trials,
            false alarms (incorrect on them)], misses and correction trials excluded.
        outcomes: one character per trial (``c``/``i``/``m``; upper case: a correction trial).
        sides: one character per trial: the response side (``r``/``l``/``-``).
        rts_ms: reaction time per trial in whole milliseconds (None: none), packed
            (:class:`PackedTimes`).
        detail: whether the per-trial strings are still kept (older records drop them once
            newer ones hold a whole trial window; see :func:`~services.domain.metrics.trim`).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    n_trials: int = 0
    n_correct: int = 0
    n_incorrect: int = 0
    n_miss: int = 0
    n_right: int = 0
    n_left: int = 0
    n_easy: int = 0
    n_easy_correct: int = 0
    psych: PsychCells = Field(default_factory=PsychCells)
    rt_zero: SortedTimes = Field(default_factory=SortedTimes)
    dprime_counts: list[int] = Field(default_factory=lambda: [0, 0, 0, 0])
    outcomes: str = ""
    sides: str = ""
    rts_ms: PackedTimes = Field(default_factory=PackedTimes)
    detail: bool = True

    @property
    def n_responded(self) -> int:
        """Correct plus incorrect trials."""
        return self.n_correct + self.n_incorrect

    def add(self, trial: TrialFacts) -> SessionStats:
        """These statistics with one more trial."""
        outcome = trial.outcome
        correct = outcome == "correct"
        update: dict[str, object] = {
            "n_trials": self.n_trials + 1,
            "n_correct": self.n_correct + correct,
            "n_incorrect": self.n_incorrect + (outcome == "incorrect"),
            "n_miss": self.n_miss + (outcome == "miss"),
        }
        side = trial.response_side if outcome != "miss" else None
        if side == "right":
            update["n_right"] = self.n_right + 1
        elif side == "left":
            update["n_left"] = self.n_left + 1
        code = OUTCOME_CODES[outcome]
        update["outcomes"] = self.outcomes + (code.upper() if trial.correction_trial else code)
        update["sides"] = self.sides + SIDE_CODES.get(side or "", "-")
        rt = _number(trial.reaction_time_s)
        update["rts_ms"] = self.rts_ms.append(None if rt is None else round(rt * 1000))
        contrast = signed_contrast(trial.trial_parameters)
        if contrast is not None:
            if abs(contrast) >= EASY_CONTRAST:
                update["n_easy"] = self.n_easy + 1
                update["n_easy_correct"] = self.n_easy_correct + correct
            block = _number(trial.trial_parameters.get("probability_left"))
            update["psych"] = self.psych.add(block, contrast, side == "right")
            if contrast == 0 and rt is not None:
                update["rt_zero"] = self.rt_zero.insert(round(rt, RT_DECIMALS))
        if outcome != "miss" and not trial.correction_trial and trial.target_side is not None:
            left, hits, right, false_alarms = self.dprime_counts
            if trial.target_side == "left":
                left, hits = left + 1, hits + correct
            else:
                right, false_alarms = right + 1, false_alarms + (outcome == "incorrect")
            update["dprime_counts"] = [left, hits, right, false_alarms]
        return replaced(self, update)

    def add_all(self, trials: Sequence[TrialFacts]) -> SessionStats:
        """These statistics with ``trials`` added in order: equal to :meth:`add` on each in
        turn, in one pass (the batch paths fold a whole session's trials at once: ``shaping
        evaluate --trials``, a stored history recomputed; see ``TrainingCore.handle_trials``)."""
        if len(trials) < 2:
            return self.add(trials[0]) if trials else self
        n_correct = n_incorrect = n_miss = n_right = n_left = n_easy = n_easy_correct = 0
        left, hits, right, false_alarms = self.dprime_counts
        outcomes: list[str] = []
        sides: list[str] = []
        rts: list[int | None] = []
        zero: list[float] = []
        cells: dict[bytes, list[int]] = {}  # packed (block, contrast) -> [trials, rightward]
        for trial in trials:
            outcome = trial.outcome
            correct = outcome == "correct"
            n_correct += correct
            n_incorrect += outcome == "incorrect"
            missed = outcome == "miss"
            n_miss += missed
            side = None if missed else trial.response_side
            if side == "right":
                n_right += 1
            elif side == "left":
                n_left += 1
            code = OUTCOME_CODES[outcome]
            outcomes.append(code.upper() if trial.correction_trial else code)
            sides.append(SIDE_CODES.get(side or "", "-"))
            rt = _finite_number(trial.reaction_time_s)
            rts.append(None if rt is None else round(rt * 1000))
            parameters = trial.trial_parameters
            contrast = _signed(
                _finite_number(parameters.get("contrast_left")),
                _finite_number(parameters.get("contrast_right")),
            )
            if contrast is not None:
                if abs(contrast) >= EASY_CONTRAST:
                    n_easy += 1
                    n_easy_correct += correct
                block = _finite_number(parameters.get("probability_left"))
                key = _CELL_KEY.pack(_NO_BLOCK if block is None else block, contrast)
                cell = cells.get(key)
                if cell is None:
                    cells[key] = [1, int(side == "right")]
                else:
                    cell[0] += 1
                    cell[1] += side == "right"
                if contrast == 0 and rt is not None:
                    zero.append(round(rt, RT_DECIMALS))
            if not missed and not trial.correction_trial and trial.target_side is not None:
                if trial.target_side == "left":
                    left, hits = left + 1, hits + correct
                else:
                    right, false_alarms = right + 1, false_alarms + (outcome == "incorrect")
        update: dict[str, object] = {
            "n_trials": self.n_trials + len(trials),
            "n_correct": self.n_correct + n_correct,
            "n_incorrect": self.n_incorrect + n_incorrect,
            "n_miss": self.n_miss + n_miss,
            "n_right": self.n_right + n_right,
            "n_left": self.n_left + n_left,
            "n_easy": self.n_easy + n_easy,
            "n_easy_correct": self.n_easy_correct + n_easy_correct,
            "outcomes": self.outcomes + "".join(outcomes),
            "sides": self.sides + "".join(sides),
            "rts_ms": self.rts_ms.extend(rts),
            "dprime_counts": [left, hits, right, false_alarms],
        }
        if cells:
            update["psych"] = self.psych.merge(cells)
        if zero:
            update["rt_zero"] = self.rt_zero.insert_all(zero)
        return replaced(self, update)

    def without_detail(self) -> SessionStats:
        """These statistics without the per-trial strings (summaries stay exact)."""
        if not self.detail:
            return self
        return self.model_copy(
            update={"outcomes": "", "sides": "", "rts_ms": PackedTimes(), "detail": False}
        )
