"""A cheaper ``model_copy(update=...)`` for the frozen models folded once per trial."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypeVar

from pydantic import BaseModel

M = TypeVar("M", bound=BaseModel)


def replaced(model: M, update: Mapping[str, object]) -> M:
    """``model`` with the fields in ``update`` replaced, unvalidated, as
    ``model.model_copy(update=update)`` makes it (the same fields set, extra and private
    values), in about a quarter of the time: pydantic's generic copy costs about 3 µs, and a
    trial folds three models (its statistics, its session, the mouse's state).

    Like ``model_copy``, the new values are trusted: callers pass values of the fields' types.
    """
    cls = type(model)
    new = cls.__new__(cls)
    fields = model.__dict__.copy()
    fields.update(update)
    set_ = object.__setattr__
    set_(new, "__dict__", fields)
    fields_set = model.__pydantic_fields_set__
    if not update.keys() <= fields_set:  # else shared: a frozen model never changes its set
        fields_set = fields_set | update.keys()
    set_(new, "__pydantic_fields_set__", fields_set)
    set_(new, "__pydantic_extra__", model.__pydantic_extra__)
    set_(new, "__pydantic_private__", model.__pydantic_private__)
    return new
