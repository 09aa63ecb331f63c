"""How figures are written for people: separators, no e-notation, ratios as %, clipped names."""

from __future__ import annotations

import pytest
from rich.cells import cell_len

from dxkpi.collector.present import (
    clip,
    fiscal_year_label,
    format_number,
    format_ratio,
    split_value,
)


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (40_000_000, "40,000,000"),
        (1_461_000.0, "1,461,000"),
        (1_364_489.4, "1,364,489"),
        (0.653, "0.653"),
        (4_670.5, "4,670"),  # at or above 1,000: whole units
        (12.345, "12.35"),
        (0.0004, "0"),
        (-0.0, "0"),
        (1e21, "1,000,000,000,000,000,000,000"),
    ],
)
def test_numbers_have_separators_and_never_e_notation(value: float, text: str) -> None:
    assert format_number(value) == text


def test_units_ratios_and_progress() -> None:
    assert split_value(0.674330689, "ratio") == ("67.4", "%")
    assert split_value(14_007_500, "sheets") == ("14,007,500", "sheets")
    assert split_value(None, "ratio") == ("-", "%")
    assert format_ratio(-0.0001) == "0%" and format_ratio(0.926) == "93%"
    assert (
        fiscal_year_label(2021, "ja") == "令和3年度"
        and fiscal_year_label(2019, "ja") == "令和元年度"
    )


def test_names_clip_to_two_lines_of_cells() -> None:
    name = "技術支援を受けた企業が、実際にAI・IoT製品や技術等を自社に導入するに至った件数"
    clipped = clip(name, 20, lines=2)
    assert cell_len(clipped) <= 40 and clipped.endswith("…")
    english = clip("Farm businesses that adopted smart-agriculture technology", 20, lines=2)
    assert english == "Farm businesses that\nadopted smart-agric…"
    assert clip("short", 20, lines=2) == "short"
