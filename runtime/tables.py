"""One way to write a table of rows as CSV (metrics, histories, summaries) and a benchmark's results,
and one rule for results already there: kept unless the user asks for ``--overwrite``."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any, Iterable

from spikeseg.runtime.atomic import write_text


#: A text cell starting with one of these is a formula to a spreadsheet (OWASP "CSV injection").
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def cell(value: Any) -> str:
    """One CSV cell. Text that a spreadsheet would run as a formula (a case id or a message from
    a file name such as ``=HYPERLINK(...)``) gets a leading ``'``, which shows it as text."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "" if value is None else "nan"
    if isinstance(value, float):
        return f"{value:.6g}"
    text = str(value)
    if isinstance(value, str) and text.startswith(_FORMULA_START) and not _is_number(text):
        return "'" + text
    return text


def _is_number(text: str) -> bool:
    """A plain signed number ("-3.2") is data, not a formula, and stays as it is."""
    try:
        float(text)
    except ValueError:
        return False
    return text.strip() == text


def rows_to_csv(rows: Iterable[dict[str, Any]], columns: list[str] | None = None) -> str:
    """CSV text; columns default to every key in order of first appearance."""
    rows = list(rows)
    cols = columns or list(dict.fromkeys(k for r in rows for k in r))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: cell(r.get(k)) for k in cols})
    return buf.getvalue()


def write_results(out: Path, text: str, rows: Iterable[dict[str, Any]]) -> None:
    """A benchmark's ``results.md`` (``text``) and ``results.csv`` (``rows``) in ``out``, each
    written whole or not at all, then the table printed: what every results table here does."""
    write_text(out / "results.md", text)
    write_text(out / "results.csv", rows_to_csv(rows))
    print(text)


def refuse_existing_results(results: Path, overwrite: bool) -> None:
    """Stop before any work if ``results`` exist and ``--overwrite`` was not given: a benchmark
    never replaces figures someone may have quoted without being asked to."""
    if results.exists() and not overwrite:
        raise SystemExit(f"{results.parent}: results exist; pass --overwrite to replace them")
