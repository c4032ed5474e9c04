"""The one grammar for the names people and rigs give to things.

Identifiers reach terminals, SQL tables, file names and Kafka keys, so they are checked where
events enter (the pydantic models, hence every decoder) and where operators type them (the
CLI), with the same functions:

- **ids** (``mouse_id``, ``rig_id``): 1 to 64 characters, ASCII letters, digits and ``. _ -``,
  starting with a letter or digit. ``M007``, ``SWC_054``, ``689798``, ``rig-2``.
- **session ids**: the same characters plus ``: @ +``, up to 128 characters.
- **names** (curricula and stages): 1 to 64 characters, ASCII letters, digits, spaces and
  ``. _ - ( ) +``, starting with a letter or digit and not ending with a space. ``basic-shaping``,
  ``Coupled Baiting``, ``trained 1a``, ``STAGE_FINAL``.

Nothing else passes: no control characters, no NUL, no ``/`` (paths), no quotes or ``;``
(SQL), no escape sequences (terminals), nothing longer than the limit.
"""

from __future__ import annotations

import re

from shaping.schemas.text import quoted

ID_MAX = 64
SESSION_ID_MAX = 128
NAME_MAX = 64

ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
SESSION_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@+-]*")
NAME_RE = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9 ._()+-]*[A-Za-z0-9._()+-])?")
_ID, _SESSION_ID, _NAME = ID_RE, SESSION_ID_RE, NAME_RE


_PASSED: dict[tuple[str, re.Pattern[str]], None] = {}
"""Texts that passed a pattern lately (a decoded message names the same mouse, rig and session
as the one before it): they pass again without the checks. Emptied when it holds
:data:`_PASSED_MAX`, so a flood of new names costs the checks, never memory."""
_PASSED_MAX = 4096


def _check(value: object, what: str, pattern: re.Pattern[str], limit: int, rule: str) -> str:
    if type(value) is str and (value, pattern) in _PASSED:
        return value
    if not isinstance(value, str):
        raise ValueError(f"{what} must be text")
    if not value:
        raise ValueError(f"{what} must not be empty")
    if len(value) > limit:
        raise ValueError(f"{what} is {len(value)} characters long; at most {limit} are allowed")
    if not pattern.fullmatch(value):
        raise ValueError(f"{what} '{quoted(value)}' is not allowed: {rule}")
    if type(value) is str:  # not a subclass, whose equality could be anything
        if len(_PASSED) >= _PASSED_MAX:
            _PASSED.clear()
        _PASSED[value, pattern] = None
    return value


_ID_RULE = "use letters, digits and . _ - (starting with a letter or digit)"
_SESSION_RULE = "use letters, digits and . _ - : @ + (starting with a letter or digit)"
_NAME_RULE = "use letters, digits, spaces and . _ - ( ) + (starting with a letter or digit)"


def check_id(value: object, what: str = "id") -> str:
    """Returns ``value`` when it is a valid mouse or rig id; raises ValueError saying why not."""
    return _check(value, what, _ID, ID_MAX, _ID_RULE)


def check_session_id(value: object, what: str = "session id") -> str:
    """Returns ``value`` when it is a valid session id; raises ValueError saying why not."""
    return _check(value, what, _SESSION_ID, SESSION_ID_MAX, _SESSION_RULE)


def check_name(value: object, what: str = "name") -> str:
    """Returns ``value`` when it is a valid curriculum or stage name; raises ValueError."""
    return _check(value, what, _NAME, NAME_MAX, _NAME_RULE)


def is_id(value: object) -> bool:
    """Whether ``value`` is a valid mouse or rig id."""
    return isinstance(value, str) and len(value) <= ID_MAX and bool(_ID.fullmatch(value))
