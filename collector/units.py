"""Unit conversion between a feed's base unit and the unit a KPI is reported in.

Stored metrics stay in base units (seconds, ratios) as Prometheus expects; a KPI is configured
and shown in the unit its council report uses (hours, %), so baseline, target and every
`dxkpi_kpi_*` gauge are in the KPI's unit. Only conversions that are exact multiplications are
known; anything else is a config error rather than a guess.

Pure functions: no I/O.
"""

from __future__ import annotations

__all__ = ["PERCENT_UNITS", "RATIO_UNITS", "conversion_factor", "known_units"]

_SECONDS_IN = {"seconds": 1.0, "minutes": 60.0, "hours": 3600.0, "days": 86400.0}
RATIO_UNITS = frozenset({"ratio"})
PERCENT_UNITS = frozenset({"percent", "%"})


def known_units() -> list[str]:
    return sorted([*_SECONDS_IN, *RATIO_UNITS, *PERCENT_UNITS])


def conversion_factor(from_unit: str, to_unit: str) -> float | None:
    """What a value in `from_unit` is multiplied by to be in `to_unit` (None: not convertible).

    >>> conversion_factor("seconds", "hours") * 7200
    2.0
    """
    if from_unit == to_unit:
        return 1.0
    if from_unit in _SECONDS_IN and to_unit in _SECONDS_IN:
        return _SECONDS_IN[from_unit] / _SECONDS_IN[to_unit]
    if from_unit in RATIO_UNITS and to_unit in PERCENT_UNITS:
        return 100.0
    if from_unit in PERCENT_UNITS and to_unit in RATIO_UNITS:
        return 0.01
    if from_unit in PERCENT_UNITS and to_unit in PERCENT_UNITS:
        return 1.0
    return None
