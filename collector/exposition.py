"""Prometheus text and OpenMetrics rendering of pre-built metric families.

The exporter keeps the `name{labels}` prefix of every sample as bytes, so rendering a snapshot is
little more than a byte join (bench/ measures it against prometheus-client's Gauge path).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

MetricType = Literal["gauge", "counter", "info"]

TEXT_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
OPENMETRICS_CONTENT_TYPE = "application/openmetrics-text; version=1.0.0; charset=utf-8"


def escape_label_value(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def label_part(labels: Mapping[str, str]) -> str:
    """`{a="1",b="2"}` (labels sorted by name), or "" without labels."""
    if not labels:
        return ""
    inner = ",".join(f'{k}="{escape_label_value(v)}"' for k, v in sorted(labels.items()))
    return f"{{{inner}}}"


def sample_prefix(name: str, labels: Mapping[str, str]) -> str:
    """`name{a="1",b="2"}`: everything of a sample line but its value."""
    return name + label_part(labels)


def format_value(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


Value = float | str  # a str is a pre-formatted NaN or ±Inf


@dataclass
class Family:
    """One metric family; `name` is the sample name (`_total` for counters, `_info` for info)."""

    name: str
    type: MetricType
    help: str
    samples: list[tuple[str, Value]] = field(default_factory=list)

    def add(self, labels: Mapping[str, str], value: float) -> None:
        self.add_prefixed(sample_prefix(self.name, labels), value)

    def add_prefixed(self, prefix: str, value: float) -> None:
        # Non-finite values are formatted now, so rendering is one %-format per sample.
        finite = math.isfinite(value)
        self.samples.append((prefix, float(value) if finite else format_value(value)))


def render(families: Sequence[Family], *, openmetrics: bool = False) -> bytes:
    parts: list[str] = []
    append = parts.append
    for family in families:
        if not family.samples:
            continue
        if openmetrics:
            family_name = family.name
            kind = family.type
            if kind == "counter" and family_name.endswith("_total"):
                family_name = family_name[: -len("_total")]
            elif kind == "info" and family_name.endswith("_info"):
                family_name = family_name[: -len("_info")]
        else:
            family_name = family.name
            kind = "gauge" if family.type == "info" else family.type
        help_text = escape_help(family.help)
        append(f"# HELP {family_name} {help_text}\n# TYPE {family_name} {kind}\n")
        # str(float) is repr(float): the shortest text that reads back as the same value.
        # %-formatting a tuple is the fastest way Python has to build these lines.
        append("".join(["%s %s\n" % sample for sample in family.samples]))  # noqa: UP031
    if openmetrics:
        append("# EOF\n")
    return "".join(parts).encode()


def families_by_name(families: Iterable[Family]) -> dict[str, Family]:
    return {f.name: f for f in families}
