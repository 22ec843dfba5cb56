"""Result tables: one list of row dicts written as a markdown table (for reading) and a CSV (for reloading).

Both files are written atomically (temporary file in the same folder + ``os.replace``). The CSV keeps full
float precision (``repr``), so ``float(cell)`` gives back the number written; the markdown table uses
``float_format``.
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from molscore.files import write_text_atomic


def _plain(value):
    """numpy scalars -> Python scalars; None stays None."""
    return value.item() if isinstance(value, np.generic) else value


def _md_cell(value, float_format: str) -> str:
    value = _plain(value)
    if value is None:
        return ""
    if isinstance(value, float):
        text = float_format.format(value) if math.isfinite(value) else str(value)
    else:
        text = str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def _csv_cell(value) -> str:
    value = _plain(value)
    if value is None:
        return ""
    return repr(value) if isinstance(value, float) else str(value)


def write_table(
    rows: list[dict], path_stem: str | os.PathLike, columns: Sequence[str] | None = None, float_format: str = "{:.4f}"
) -> tuple[Path, Path]:
    """Write ``rows`` as ``{path_stem}.md`` (markdown table) and ``{path_stem}.csv``.

    Parameters
    ----------
    rows : list of dict
        One dict per table row; values are numbers, strings (e.g. from :func:`format_with_error`), bools or
        None (empty cell).
    path_stem : str or Path
        Output path without suffix; parent folders are created.
    columns : sequence of str, optional
        Column order (and selection); default the union of the rows' keys in order of first appearance.
        Missing keys give empty cells.
    float_format : str
        Format of floats in the markdown table (the CSV keeps full precision).

    Returns
    -------
    (Path, Path)
        The markdown and CSV paths.
    """
    if not rows:
        raise ValueError("rows is empty; pass at least one dict")
    columns = list(dict.fromkeys(k for row in rows for k in row)) if columns is None else list(columns)
    if not columns:
        raise ValueError("no columns: the rows hold no keys")
    stem = Path(path_stem)
    lines = ["| " + " | ".join(_md_cell(c, float_format) for c in columns) + " |"]
    lines.append("|" + "|".join("---" for _ in columns) + "|")
    lines += ["| " + " | ".join(_md_cell(row.get(c), float_format) for c in columns) + " |" for row in rows]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    writer.writerows([_csv_cell(row.get(c)) for c in columns] for row in rows)
    md = write_text_atomic(stem.with_name(stem.name + ".md"), "\n".join(lines) + "\n")
    return md, write_text_atomic(stem.with_name(stem.name + ".csv"), buf.getvalue())


def format_with_error(value: float, err: float | None, digits: int = 2) -> str:
    """``value ± err`` with ``err`` rounded to ``digits`` significant figures and ``value`` to the same decimal.

    ``format_with_error(0.02345, 0.00123)`` -> ``"0.0234 ± 0.0012"``; a missing, zero or non-finite error gives
    the value alone with 4 significant figures; a non-finite value gives ``"nan"`` / ``"inf"``.
    """
    value = float(_plain(value))
    if not math.isfinite(value):
        return str(value)
    if err is None or not math.isfinite(float(err)) or float(err) <= 0:
        return f"{value:.4g}"
    err = float(err)
    decimals = max(0, digits - 1 - math.floor(math.log10(err)))
    rounded = round(err, decimals)
    if rounded > 0 and math.floor(math.log10(rounded)) > math.floor(math.log10(err)):  # 0.0996 -> 0.10
        decimals = max(0, decimals - 1)
    return f"{value:.{decimals}f} ± {err:.{decimals}f}"
