"""A selection read from a CSV file: the learners an upstream system names
by email, external id or learner id, one a row."""

from __future__ import annotations

import csv
from collections.abc import Iterable

# The first of these the header names is the column read: an export with
# both an email and a learner_id column selects by email.
COLUMNS = ("email", "external_id", "learner_id")
SELECTION_KEYS = {"email": "emails", "external_id": "external_ids", "learner_id": "learner_ids"}
# producer/schemas.py MAX_EXPLICIT_IDS: one batch per submit, at most this many.
MAX_LEARNERS = 100_000


class SelectionFileError(ValueError):
    """The file cannot be a selection; the text names the line and the fix."""


def read_selection(
    lines: Iterable[str], name: str = "the file", cap: int = MAX_LEARNERS
) -> dict[str, list]:
    """`{"emails": [...]}`, `{"external_ids": [...]}` or `{"learner_ids": [...]}`
    from CSV text (an open file: it is read a row at a time). The first bad
    row stops it with one error naming its line; nothing is half-submitted."""
    rows = csv.reader(lines)
    try:
        header = next(rows, None)
        if header is None:
            raise SelectionFileError(f"{name} is empty; its first line names the column")
        names = [cell.strip().lower().lstrip("\ufeff") for cell in header]
        column = next((c for c in COLUMNS if c in names), None)
        if column is None:
            raise SelectionFileError(
                f"{name} line 1: the header names no {', '.join(COLUMNS[:-1])} or "
                f"{COLUMNS[-1]} column (it has: {', '.join(names) or 'nothing'})"
            )
        index = names.index(column)
        values: list = []
        for row in rows:
            if not any(cell.strip() for cell in row):
                continue  # a blank line, often the last one
            line = rows.line_num
            if len(values) == cap:
                raise SelectionFileError(
                    f"{name} line {line}: more than {cap:,} learners; the API takes at most "
                    f"{cap:,} per batch: split the file, or select with a filter"
                )
            cell = row[index].strip() if index < len(row) else ""
            if not cell:
                raise SelectionFileError(f"{name} line {line}: the {column} cell is empty")
            values.append(_value(column, cell, name, line))
    except csv.Error as error:
        raise SelectionFileError(f"{name} line {rows.line_num}: not valid CSV ({error})") from None
    except UnicodeDecodeError:
        raise SelectionFileError(
            f"{name} line {rows.line_num + 1}: not UTF-8 text; save it as UTF-8 CSV"
        ) from None
    if not values:
        raise SelectionFileError(f"{name} has a header but no learner")
    return {SELECTION_KEYS[column]: values}


def _value(column: str, cell: str, name: str, line: int) -> str | int:
    if column == "learner_id":
        if not (cell.isascii() and cell.isdigit()) or not 1 <= int(cell) < 2**63:
            raise SelectionFileError(
                f"{name} line {line}: learner_id {cell!r} is not a whole number above 0"
            )
        return int(cell)
    if column == "email" and "@" not in cell:
        raise SelectionFileError(f"{name} line {line}: email {cell!r} has no @")
    return cell
