"""Printing data on a terminal: escaped, and tables that fit the terminal's width.

Everything the operator's and the rig's commands print that came from data (mouse ids, stage
names, reasons, rig ids, evidence text) goes through :func:`printable` first: a control
character or the start of an escape sequence (``M\\x1b[2J``) is shown as its escape
(``\\x1b``) instead of reaching the terminal, and so are the invisible characters that reorder
or hide text (bidirectional overrides, zero-width characters, line separators). Rich markup is
never interpreted in data either: :func:`cell` wraps the escaped text in a rich ``Text``, which
rich prints literally (``[bold]`` stays ``[bold]``).

:func:`print_table` prints a rich table that fits the console: columns are described by
:class:`Col`; when the terminal is too narrow, the columns that may fold wrap over several
lines and then columns are dropped, lowest priority first, in the order each command
documents. A column that is never dropped (the mouse id) is never cut either. ``wide`` keeps
every column at its full width, whatever the terminal.

The escaping itself is the contract's (:mod:`shaping.schemas.text`); rich is imported only when
a table is printed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal

from shaping.schemas.text import printable, printable_lines

if TYPE_CHECKING:
    from rich.console import Console
    from rich.text import Text

Kind = Literal["text", "count", "ratio", "time"]


def _missing(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, float):
        return math.isnan(value)
    # pandas' NaT and NA: compare unequal to themselves or cannot be compared at all
    try:
        return bool(value != value)
    except (TypeError, ValueError):
        return False


def cell_text(value: Any, kind: Kind = "text", digits: int = 2) -> str:
    """How a value is shown in a table: empty when missing; counts as whole numbers (``5``, not
    ``5.00``, also when pandas turned the column into floats); ratios to ``digits`` decimals;
    times to the minute; everything else escaped with :func:`printable`."""
    if _missing(value):
        return ""
    if kind == "count" and isinstance(value, int | float) and not isinstance(value, bool):
        if float(value).is_integer():
            return str(int(value))
        return f"{value:.{digits}f}"
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M")
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return printable(value)


def cell(value: Any, kind: Kind = "text", digits: int = 2) -> Text:
    """A table cell: :func:`cell_text` as a rich ``Text`` (never markup)."""
    from rich.text import Text

    return Text(cell_text(value, kind, digits))


def text(value: object) -> Text:
    """Data as a rich ``Text`` to print on its own: escaped, line breaks kept, never markup."""
    from rich.text import Text

    return Text(printable_lines(value))


@dataclass(frozen=True)
class Col:
    """A column of a table that fits the terminal.

    Attributes:
        key: the row key of its cells.
        header: its title.
        drop: the order in which columns are dropped when the terminal is too narrow (1
            first); None: never dropped, and then never cut either (the mouse id).
        fold: whether its cells may wrap over several lines rather than take their full width.
        fold_min: the narrowest a folding column gets before columns are dropped.
        justify: alignment of its cells.
    """

    key: str
    header: str
    drop: int | None = None
    fold: bool = False
    fold_min: int = 10
    justify: Literal["left", "right"] = "left"


@dataclass(frozen=True)
class Fitted:
    """The columns kept and their widths, and the columns dropped (in dropping order)."""

    columns: list[Col]
    widths: list[int]
    dropped: list[Col]

    @property
    def total(self) -> int:
        """Width of the table, borders and padding included."""
        return table_width(self.widths)


def table_width(widths: Sequence[int]) -> int:
    """A rich table's width for these column widths: one space of padding each side, a rule
    between columns and one at each edge."""
    return sum(widths) + 3 * len(widths) + 1


def _cell_len(text: str) -> int:
    from rich.cells import cell_len

    return max((cell_len(line) for line in text.split("\n")), default=0)


def _header_min(header: str) -> int:
    return max((_cell_len(word) for word in header.split()), default=1)


def fit_columns(
    columns: Sequence[Col], rows: Sequence[Mapping[str, str]], width: int, wide: bool = False
) -> Fitted:
    """Chooses the columns and their widths for a table of ``rows`` on ``width`` columns.

    Each column's natural width is its widest cell or header. The narrowest it may get is its
    widest cell (headers wrap at spaces), or ``fold_min`` for a folding column whose cells are
    wider. While even the narrowest widths do not fit, the droppable column with the lowest
    ``drop`` goes. Then headers wrap, and then folding columns shrink from their natural
    widths, widest first, until the table fits. A column that is never dropped and does not
    fold (the mouse id) keeps its widest cell, unless that alone is wider than the terminal
    (then it folds: it is still never cut). ``wide`` keeps every column at its natural width.
    """
    data: dict[str, int] = {}
    natural: dict[str, int] = {}
    least: dict[str, int] = {}
    for col in columns:
        data[col.key] = max((_cell_len(row.get(col.key, "")) for row in rows), default=0)
        natural[col.key] = max(data[col.key], _cell_len(col.header), 1)
        floor = max(_header_min(col.header), 1)
        if col.fold:
            least[col.key] = min(natural[col.key], max(col.fold_min, floor))
        else:
            least[col.key] = max(data[col.key], floor)
    kept = list(columns)
    dropped: list[Col] = []
    if not wide:
        by_order = sorted(
            (c for c in columns if c.drop is not None), key=lambda c: (c.drop or 0, c.key)
        )
        for col in by_order:
            if table_width([least[c.key] for c in kept]) <= width:
                break
            kept.remove(col)
            dropped.append(col)
    widths = [natural[c.key] for c in kept]
    if wide:
        return Fitted(kept, widths, dropped)
    excess = table_width(widths) - width
    # first the headers wrap (no cell changes), then the folding columns shrink
    for floors in (
        [max(data[c.key], least[c.key]) for c in kept],
        [least[c.key] for c in kept],
    ):
        while excess > 0:
            slack = [w - f for w, f in zip(widths, floors, strict=True)]
            index = max(range(len(widths)), key=lambda i: (slack[i], widths[i]))
            if slack[index] <= 0:
                break
            widths[index] -= 1
            excess -= 1
    if excess > 0:  # only columns that never drop are left: they fold to fit
        for index in sorted(range(len(kept)), key=lambda i: -widths[i]):
            cut = min(excess, widths[index] - 1)
            widths[index] -= cut
            excess -= cut
            if excess <= 0:
                break
    return Fitted(kept, widths, dropped)


def build_table(
    columns: Sequence[Col],
    rows: Sequence[Mapping[str, str]],
    width: int,
    *,
    wide: bool = False,
    title: str | None = None,
    show_lines: bool = False,
) -> tuple[Any, Fitted]:
    """A rich ``Table`` of ``rows`` (cells already as text, see :func:`cell_text`) fitted to
    ``width`` (see :func:`fit_columns`), and the fitting."""
    from rich.table import Table
    from rich.text import Text

    fitted = fit_columns(columns, rows, width, wide)
    table = Table(
        title=Text(printable(title)) if title is not None else None,
        title_justify="left",
        show_lines=show_lines,
    )
    for col, col_width in zip(fitted.columns, fitted.widths, strict=True):
        table.add_column(
            Text(col.header),
            width=col_width,
            justify=col.justify,
            overflow="fold",
            no_wrap=False,
        )
    for row in rows:
        table.add_row(*(Text(row.get(col.key, "")) for col in fitted.columns))
    return table, fitted


def print_table(
    console: Console,
    columns: Sequence[Col],
    rows: Sequence[Mapping[str, str]],
    *,
    wide: bool = False,
    title: str | None = None,
    show_lines: bool = False,
) -> Fitted:
    """Prints a table fitted to the console's width (see :func:`fit_columns`); says which
    columns were left out and that ``--wide`` shows them. With ``wide`` the table is printed
    whole even on a narrower console (lines longer than the terminal)."""
    from rich.text import Text

    table, fitted = build_table(
        columns, rows, console.width, wide=wide, title=title, show_lines=show_lines
    )
    if wide and fitted.total > console.width:
        saved = console.width
        console.width = fitted.total
        try:
            console.print(table)
        finally:
            console.width = saved
    else:
        console.print(table)
    if fitted.dropped:
        names = ", ".join(col.header for col in fitted.dropped)
        console.print(
            Text(f"not shown at {console.width} columns: {names} (--wide shows every column)")
        )
    return fitted
