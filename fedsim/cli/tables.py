"""Rich tables whose cells are never cut: long numbers and names wrap (``fold``)."""

from __future__ import annotations

from collections.abc import Sequence

from rich.markup import escape
from rich.table import Table


def table(title: str, headers: Sequence[str], rows: Sequence[Sequence[str]]) -> Table:
    """A table of plain-text cells (no rich markup); the first column never wraps."""
    out = Table(title=title, show_header=True)
    for i, header in enumerate(headers):
        if i == 0:
            width = max((len(r[0]) for r in rows), default=0)
            out.add_column(escape(header), no_wrap=True, min_width=width)
        else:
            # "fold" breaks a cell over lines where "ellipsis" (rich's default) would cut it.
            out.add_column(escape(header), overflow="fold")
    for row in rows:
        out.add_row(*(escape(cell) for cell in row))
    return out
