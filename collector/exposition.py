"""Prometheus text and OpenMetrics rendering of pre-built metric families.

The exporter keeps the `name{labels}` prefix of every sample as bytes, so rendering a snapshot is
little more than a byte join (bench/ measures it against prometheus-client's Gauge path).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
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
    # (label part `{a="1"}` or "", value): label parts are shared with the caller's cache, so a
    # sample costs a tuple, not a new string.
    samples: list[tuple[str, Value]] = field(default_factory=list)

    def add(self, labels: Mapping[str, str], value: float) -> None:
        self.add_part(label_part(labels), value)

    def add_part(self, part: str, value: float) -> None:
        # Non-finite values are formatted now, so rendering is one %-format per sample.
        finite = math.isfinite(value)
        self.samples.append((part, float(value) if finite else format_value(value)))


# One family rendered: its text-format header, its OpenMetrics header, and its sample lines,
# which both formats share.
Chunk = tuple[bytes, bytes, bytes]


def _headers(family: Family) -> tuple[bytes, bytes]:
    help_text = escape_help(family.help)
    text_kind = "gauge" if family.type == "info" else family.type
    om_name = family.name
    if family.type == "counter" and om_name.endswith("_total"):
        om_name = om_name[: -len("_total")]
    elif family.type == "info" and om_name.endswith("_info"):
        om_name = om_name[: -len("_info")]
    text = f"# HELP {family.name} {help_text}\n# TYPE {family.name} {text_kind}\n"
    om = f"# HELP {om_name} {help_text}\n# TYPE {om_name} {family.type}\n"
    return text.encode(), om.encode()


def render_chunks(families: Sequence[Family]) -> list[Chunk]:
    chunks = []
    for family in families:
        if not family.samples:
            continue
        # str(float) is repr(float): the shortest text that reads back as the same value.
        # %-formatting a tuple is the fastest way Python has to build these lines.
        line = family.name + "%s %s\n"  # metric names never contain "%"
        body = "".join([line % sample for sample in family.samples])
        chunks.append((*_headers(family), body.encode()))
    return chunks


def join_chunks(chunks: Sequence[Chunk], *, openmetrics: bool = False) -> bytes:
    """The exposition in one format: a byte join of what `render_chunks` made."""
    header = 1 if openmetrics else 0
    parts = [part for chunk in chunks for part in (chunk[header], chunk[2])]
    if openmetrics:
        parts.append(b"# EOF\n")
    return b"".join(parts)


def render(families: Sequence[Family], *, openmetrics: bool = False) -> bytes:
    return join_chunks(render_chunks(families), openmetrics=openmetrics)
