"""Result tables: markdown + CSV written atomically, CSV round trip, value ± error formatting."""

import csv

import numpy as np
import pytest

from molscore.analysis.report import format_with_error, write_table


def test_write_table_round_trip(tmp_path):
    rows = [
        {"model": "mixture + FP", "iid JS": 0.0079123456789, "sim JS": np.float32(0.0086), "n": 50_000},
        {"model": "no FP | energy", "iid JS": 0.0081, "p(phi>0)": format_with_error(0.0234, 0.0012), "ok": True},
        {"model": "floor", "sim JS": float("nan"), "n": None},
    ]
    md, path = write_table(rows, tmp_path / "out" / "table")
    assert md.name == "table.md" and path.name == "table.csv"
    assert sorted(p.name for p in md.parent.iterdir()) == ["table.csv", "table.md"]  # no temporaries left
    with path.open(newline="") as fh:
        back = list(csv.DictReader(fh))
    assert list(back[0]) == ["model", "iid JS", "sim JS", "n", "p(phi>0)", "ok"]
    assert float(back[0]["iid JS"]) == 0.0079123456789 and float(back[0]["sim JS"]) == float(np.float32(0.0086))
    assert int(back[0]["n"]) == 50_000 and back[0]["p(phi>0)"] == ""
    assert back[1]["model"] == "no FP | energy" and back[1]["p(phi>0)"] == "0.0234 ± 0.0012" and back[1]["ok"] == "True"
    assert np.isnan(float(back[2]["sim JS"])) and back[2]["n"] == ""

    lines = md.read_text().splitlines()
    assert lines[0] == "| model | iid JS | sim JS | n | p(phi>0) | ok |" and lines[1] == "|---|---|---|---|---|---|"
    assert lines[2] == "| mixture + FP | 0.0079 | 0.0086 | 50000 |  |  |"
    assert "no FP \\| energy" in lines[3] and len(lines) == 5


def test_write_table_columns_and_errors(tmp_path):
    md, path = write_table([{"a": 1.23456, "b": 2}], tmp_path / "t", columns=["b", "a"], float_format="{:.2f}")
    assert md.read_text().splitlines()[2] == "| 2 | 1.23 |"
    assert path.read_text() == "b,a\n2,1.23456\n"
    with pytest.raises(ValueError, match="empty"):
        write_table([], tmp_path / "t")


@pytest.mark.parametrize(
    ("value", "err", "text"),
    [
        (0.02345, 0.00123, "0.0234 ± 0.0012"),
        (0.081, 0.0996, "0.08 ± 0.10"),
        (12345.6, 234.0, "12346 ± 234"),
        (1.5, 0.25, "1.50 ± 0.25"),
        (0.5, None, "0.5"),
        (0.123456, float("nan"), "0.1235"),
        (0.1, 0.0, "0.1"),
        (float("nan"), 0.1, "nan"),
    ],
)
def test_format_with_error(value, err, text):
    assert format_with_error(value, err) == text
