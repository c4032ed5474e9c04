"""Who may do what on the page: three roles and the actions each allows.

A trainer moves mice through training (override, adjust); husbandry staff keep weights and
water (those forms come with the husbandry events); a lab manager may do everything, ejecting a
mouse included. Everyone who logs in may look.
"""

from __future__ import annotations

from typing import Literal, get_args

Role = Literal["trainer", "husbandry", "manager"]
ROLES: tuple[str, ...] = get_args(Role)

Action = Literal["view", "override", "adjust", "eject", "weigh", "water", "release"]

ALLOWED: dict[str, frozenset[str]] = {
    "view": frozenset(ROLES),
    "override": frozenset({"trainer", "manager"}),
    "adjust": frozenset({"trainer", "manager"}),
    "release": frozenset({"trainer", "manager"}),
    "eject": frozenset({"manager"}),
    "weigh": frozenset({"husbandry", "manager"}),
    "water": frozenset({"husbandry", "manager"}),
}
"""The roles allowed each action (``weigh``, ``water`` and ``release`` wait for the husbandry
events; their roles are set here already)."""


def may(role: str, action: str) -> bool:
    """Whether ``role`` may do ``action`` (an unknown role or action may do nothing)."""
    return role in ALLOWED.get(action, frozenset())


def check_role(role: str) -> str:
    """Returns ``role`` when it is one of :data:`ROLES`; raises ValueError naming them."""
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}: one of {', '.join(ROLES)}")
    return role
