"""Prometheus text and OpenMetrics rendering of pre-built metric families.

A snapshot is rendered once per rebuild into byte chunks; a scrape only joins them (bench/
measures that against prometheus-client's Gauge path). Stored series (`SeriesFamily`, 100k+
samples) are rendered incrementally: the lines of the last render are kept in blocks of
`BLOCK_LINES`, and only the blocks holding a changed value are formatted again.
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


# One family rendered: its text-format header, its OpenMetrics header, and its sample lines (in
# one or more pieces, joined on a scrape), which both formats share.
Chunk = tuple[bytes, bytes, tuple[bytes, ...]]


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
    chunks: list[Chunk] = []
    for family in families:
        if not family.samples:
            continue
        # str(float) is repr(float): the shortest text that reads back as the same value.
        # %-formatting a tuple is the fastest way Python has to build these lines.
        line = family.name + "%s %s\n"  # metric names never contain "%"
        body = "".join([line % sample for sample in family.samples])
        chunks.append((*_headers(family), (body.encode(),)))
    return chunks


def chunk_parts(chunks: Sequence[Chunk], *, openmetrics: bool = False) -> list[bytes]:
    """The exposition in one format, in pieces: their concatenation is the body."""
    parts: list[bytes] = []
    for text_header, om_header, lines in chunks:
        parts.append(om_header if openmetrics else text_header)
        parts.extend(lines)
    if openmetrics:
        parts.append(b"# EOF\n")
    return parts


def join_chunks(chunks: Sequence[Chunk], *, openmetrics: bool = False) -> bytes:
    """The exposition in one format: a byte join of what `render_chunks` made."""
    return b"".join(chunk_parts(chunks, openmetrics=openmetrics))


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


# Lines per block. A rebuild reformats the blocks holding a changed value and keeps the others'
# bytes. Blocks, not lines: 100k small objects outliving a rebuild would pin the allocator's
# arenas that the rebuild's transient rows and tuples lived in (the exporter's resident size
# would keep the rebuild's peak), while a block is a few kB and a scrape joins a few thousand.
BLOCK_LINES = 32


@dataclass(frozen=True)
class SeriesLines:
    """A SeriesFamily rendered, kept to render the next one."""

    headers: tuple[bytes, bytes]  # text format, OpenMetrics
    blocks: tuple[bytes, ...]  # the sample lines in `ids` order, BLOCK_LINES per block
    templates: tuple[bytes, ...]  # the same blocks with `%r` for each value, "%" as "%%"
    ids: array[int]
    bits: array[int]  # each value's IEEE 754 bits: -0.0 vs 0.0 and NaN compare as their text does


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
    values = family.values
    bits = array("q", values.tobytes())
    if previous is not None and previous.ids == family.ids:
        if previous.bits == bits:
            return previous if previous.headers == headers else replace(previous, headers=headers)
        templates, old_blocks = previous.templates, previous.blocks
        old_bits = previous.bits.tobytes()  # bytes slices compare faster than memoryviews
    else:
        templates, old_blocks = _templates(family, previous), ()
        old_bits = b""
    new_bits = bits.tobytes()
    # The sum is finite only if every value is: then no value needs the NaN/Inf spelling.
    finite = math.isfinite(sum(values))
    blocks = []
    step = BLOCK_LINES * bits.itemsize
    for k, template in enumerate(templates):
        if (
            old_blocks
            and old_bits[k * step : (k + 1) * step] == new_bits[k * step : (k + 1) * step]
        ):
            blocks.append(old_blocks[k])
            continue
        # One C-level %-format per block: the fastest way Python has to build these lines.
        chunk = values[k * BLOCK_LINES : (k + 1) * BLOCK_LINES]
        blocks.append(template % (tuple(chunk) if finite else tuple(map(_formattable, chunk))))
    return SeriesLines(headers, tuple(blocks), templates, array("q", family.ids), bits)


def _templates(family: SeriesFamily, previous: SeriesLines | None) -> tuple[bytes, ...]:
    """The template blocks of `family`'s series, in its order: the lines of series `previous`
    had are taken from its templates, the others made from their labels."""
    known: dict[int, bytes] = {}
    if previous is not None:
        lines = (line for block in previous.templates for line in block.split(b"\n")[:-1])
        known = dict(zip(previous.ids, lines, strict=True))
    prefix = family.name.replace("%", "%%")

    def line(series_id: int) -> bytes:
        known_line = known.get(series_id)
        if known_line is not None:
            return known_line + b"\n"
        part = family.labels(series_id).replace("%", "%%")
        return f"{prefix}{part} %r\n".encode()

    # Block by block: the lines of a whole family (100k and more) are never alive at once.
    ids = family.ids
    return tuple(
        b"".join([line(series_id) for series_id in ids[k : k + BLOCK_LINES]])
        for k in range(0, len(ids), BLOCK_LINES)
    )


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
            if lines.blocks:
                chunks.append((*lines.headers, lines.blocks))
        self.kept = kept
        return chunks
