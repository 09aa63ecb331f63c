"""Prometheus text and OpenMetrics rendering of pre-built metric families.

A snapshot is rendered once per rebuild into byte chunks; a scrape only joins them (bench/
measures that against prometheus-client's Gauge path). Stored series (`SeriesFamily`, 100k+
samples) are rendered incrementally: the lines of the last render are kept as a few large
buffers, and only series whose value changed are formatted again.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
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


# -- stored series: incremental rendering -----------------------------------------------------


@dataclass
class SeriesFamily:
    """A gauge family with one sample per stored series, keyed by series id.

    `labels` gives a series' label part (`label_part` of its labels); it is asked only for series
    the last render did not have (their lines are otherwise reused from that render's)."""

    name: str
    help: str
    labels: Callable[[int], str]
    ids: array[int] = field(default_factory=lambda: array("q"))
    values: array[float] = field(default_factory=lambda: array("d"))

    def add(self, series_id: int, value: float) -> None:
        self.ids.append(series_id)
        self.values.append(value)


@dataclass(frozen=True)
class SeriesLines:
    """A SeriesFamily rendered, kept to render the next one.

    Everything is held in a few large buffers, not one object per series: small objects that
    outlive a rebuild would pin the allocator's arenas that the rebuild's transient rows and
    tuples lived in, and the exporter's resident size would keep the rebuild's peak.
    """

    headers: tuple[bytes, bytes]  # text format, OpenMetrics
    body: bytes  # the sample lines, in `ids` order
    lengths: array[int]  # each body line's length, without its "\n"
    template: bytes  # the same lines with `%r` for the value (and "%" in labels as "%%")
    template_lengths: array[int]
    ids: array[int]
    bits: array[int]  # each value's IEEE 754 bits: -0.0 vs 0.0 and NaN compare as their text does


# Reformat every line (one C-level %-format of the whole template) when more than this share of
# the values changed; below it, copy the unchanged runs of the last body and format the rest.
_FULL_FORMAT_SHARE = 0.25


class _Literal:
    """Formats as its text under `%r`: NaN and ±Inf in the exposition's spelling."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return self.text


def _formattable(value: float) -> float | _Literal:
    return value if math.isfinite(value) else _Literal(format_value(value))


def render_series(family: SeriesFamily, previous: SeriesLines | None) -> SeriesLines:
    """`family`'s lines, reusing what `previous` (its last render, if any) already formatted."""
    headers = _headers(Family(family.name, "gauge", family.help))
    bits = array("q", family.values.tobytes())
    if previous is not None and previous.ids == family.ids:
        if previous.bits == bits:
            return previous if previous.headers == headers else replace(previous, headers=headers)
        changed = [
            i for i, (old, new) in enumerate(zip(previous.bits, bits, strict=True)) if old != new
        ]
        if len(changed) <= _FULL_FORMAT_SHARE * len(bits):
            return _patched(previous, changed, family.values, bits, headers)
        template, template_lengths = previous.template, previous.template_lengths
    else:
        template, template_lengths = _template(family, previous)
    values = family.values
    # The sum is finite only if every value is: then no value needs the NaN/Inf spelling.
    args = tuple(values) if math.isfinite(sum(values)) else tuple(map(_formattable, values))
    body = template % args
    lengths = array("I", map(len, body.split(b"\n")))
    lengths.pop()  # what follows the last "\n"
    return SeriesLines(
        headers, body, lengths, template, template_lengths, array("q", family.ids), bits
    )


def _patched(
    previous: SeriesLines,
    changed: list[int],
    values: array[float],
    bits: array[int],
    headers: tuple[bytes, bytes],
) -> SeriesLines:
    """`previous` with the lines at `changed` (ascending) formatted anew: runs of unchanged lines
    are copied from the last body as they are."""
    old_body, old_lengths = memoryview(previous.body), previous.lengths
    template, template_lengths = previous.template, previous.template_lengths
    lengths = array("I", old_lengths)
    pieces: list[bytes | memoryview] = []
    line = start = template_start = copied_up_to = 0  # line `line` begins at these offsets
    for i in changed:
        # "+ (i - line)": the lengths leave out each line's "\n".
        start += sum(old_lengths[line:i]) + (i - line)
        template_start += sum(template_lengths[line:i]) + (i - line)
        line = i
        template_line = template[template_start : template_start + template_lengths[i] + 1]
        text = template_line % _formattable(values[i])
        pieces.append(old_body[copied_up_to:start])
        pieces.append(text)
        lengths[i] = len(text) - 1
        copied_up_to = start + old_lengths[i] + 1
    pieces.append(old_body[copied_up_to:])
    return replace(previous, headers=headers, body=b"".join(pieces), lengths=lengths, bits=bits)


def _template(family: SeriesFamily, previous: SeriesLines | None) -> tuple[bytes, array[int]]:
    """The template lines of `family`'s series, in its order: those `previous` had are cut out
    of its template, the others made from their labels."""
    known: dict[int, tuple[int, int]] = {}  # series id -> its template line's offset and length
    if previous is not None:
        offset = 0
        for series_id, length in zip(previous.ids, previous.template_lengths, strict=True):
            known[series_id] = (offset, length)
            offset += length + 1
    old = previous.template if previous is not None else b""
    prefix = family.name.replace("%", "%%")
    lines: list[bytes] = []
    for series_id in family.ids:
        where = known.get(series_id)
        if where is not None:
            offset, length = where
            lines.append(old[offset : offset + length + 1])
        else:
            part = family.labels(series_id).replace("%", "%%")
            lines.append(f"{prefix}{part} %r\n".encode())
    return b"".join(lines), array("I", [len(line) - 1 for line in lines])


class SeriesRenderer:
    """Renders families to chunks, keeping each SeriesFamily's lines for the next render.

    Families that are not `SeriesFamily` (KPIs, source health: a few samples) are formatted
    anew every time. A SeriesFamily absent from a render is forgotten."""

    def __init__(self) -> None:
        self.kept: dict[str, SeriesLines] = {}

    def render(self, families: Sequence[Family | SeriesFamily]) -> list[Chunk]:
        kept: dict[str, SeriesLines] = {}
        chunks: list[Chunk] = []
        for family in families:
            if isinstance(family, Family):
                chunks.extend(render_chunks([family]))
                continue
            lines = kept[family.name] = render_series(family, self.kept.get(family.name))
            if lines.body:
                chunks.append((*lines.headers, lines.body))
        self.kept = kept
        return chunks
