"""The YAML config: pydantic models, `${ENV}` secrets, and errors that point at file:line.

`load_config(path)` returns a `LoadedConfig` or raises `ConfigError` listing *every* problem found
(YAML syntax, schema, unknown connectors, connector settings, inline secrets, missing environment
variables, references between KPIs and sources, aggregations a metric does not allow).
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Annotated, Any, Literal, get_args
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from dxkpi.collector.contract import ConnectorSettings, MetricSpec, SourceContext
from dxkpi.collector.durations import Duration, format_duration
from dxkpi.collector.errors import ConfigError, ConfigProblem, DxkpiError
from dxkpi.collector.fiscal import format_fiscal_year, parse_fiscal_year
from dxkpi.collector.receiver.config import QUALIFIED_ID, ReceiverConfig, check_receiver
from dxkpi.collector.registry import load_connector
from dxkpi.collector.units import conversion_factor, known_units

ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
WHOLE_ENV_REF = re.compile(r"^\$\{([A-Za-z_][A-Za-z0-9_]*)\}$")
IDENTIFIER = r"^[a-z][a-z0-9_]*$"


class FieldProblem(ValueError):
    """A model-level check's finding that belongs to one key of the model (e.g.
    `target.fiscal_year`): the problem then points at that key's line, not the item's first."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


def _fiscal_year(value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    return parse_fiscal_year(str(value))


FiscalYear = Annotated[int, BeforeValidator(_fiscal_year)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class StorageConfig(_Model):
    # None: SQLite in the data directory (the embedded default).
    url: str | None = None


class BrokerConfig(_Model):
    # None: kombu's SQLAlchemy transport on SQLite in the data directory (no Redis needed).
    url: str | None = None


class ExporterConfig(_Model):
    listen: str = "127.0.0.1:9810"
    # How often the exporter checks the store's change counter; scrapes never query history.
    refresh_interval: Duration = timedelta(seconds=5)


class Schedule(_Model):
    every: Duration | None = None
    cron: str | None = None

    @model_validator(mode="after")
    def _one_of(self) -> Schedule:
        if (self.every is None) == (self.cron is None):
            raise ValueError("give exactly one of `every` (e.g. 15m) or `cron` (e.g. '0 6 * * *')")
        if self.cron is not None and len(self.cron.split()) != 5:
            raise ValueError(
                f"cron {self.cron!r} must have 5 fields: minute hour day month weekday"
            )
        if self.every is not None and self.every < timedelta(seconds=10):
            raise ValueError("`every` must be at least 10s")
        return self

    def describe(self) -> str:
        """`every 15m` or `cron 0 9 * * *`, as people read a schedule."""
        if self.every is not None:
            return f"every {format_duration(self.every)}"
        return f"cron {self.cron}"

    def interval(self) -> timedelta:
        """The schedule's period; for cron, the period implied by its coarsest fixed field."""
        if self.every is not None:
            return self.every
        assert self.cron is not None
        minute, hour, day, _month, weekday = self.cron.split()
        if minute.startswith("*"):
            return timedelta(minutes=1)
        if hour.startswith("*"):
            return timedelta(hours=1)
        if day == "*" and weekday == "*":
            return timedelta(days=1)
        if weekday != "*":
            return timedelta(weeks=1)
        return timedelta(days=31)


OrgKind = Literal["prefecture", "municipality"]
# The organisation of a config that declares none: its sources and KPIs keep working, labelled
# org="default".
DEFAULT_ORG_ID = "default"


class OrganisationConfig(_Model):
    """A prefecture or municipality whose sources and KPIs the deployment collects."""

    id: str = Field(pattern=IDENTIFIER)
    name_ja: str
    name_en: str
    kind: OrgKind = "prefecture"
    # The organisation this one belongs to (a municipality's prefecture), if any.
    parent: str | None = None
    # Per-organisation values for templates: `{{vars.ga4_property}}` (see SourceTemplate).
    vars: dict[str, str] = Field(default_factory=dict)


DEFAULT_ORG = OrganisationConfig(
    id=DEFAULT_ORG_ID, name_ja="既定の組織", name_en="Default organisation"
)


class KindDefaults(_Model):
    """Defaults for every organisation of one kind: template variables (an organisation's own
    `vars` win) and the schedule and lookback of its sources (a source's own win)."""

    vars: dict[str, str] = Field(default_factory=dict)
    schedule: Schedule | None = None
    lookback: Duration | None = None


class OrgSelector(_Model):
    """Which organisations: `all`, a list of ids, or `{kind: municipality}` / `{parent: iwate}`
    / `{ids: [...]}` (the conditions together)."""

    all: bool = False
    ids: list[str] | None = None
    kind: OrgKind | None = None
    parent: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _short_forms(cls, value: Any) -> Any:
        if value == "all":
            return {"all": True}
        if isinstance(value, list):
            return {"ids": value}
        return value

    def select(self, orgs: list[OrganisationConfig]) -> list[OrganisationConfig]:
        return [
            org
            for org in orgs
            if (self.ids is None or org.id in self.ids)
            and (self.kind is None or org.kind == self.kind)
            and (self.parent is None or org.parent == self.parent)
        ]

    def unknown(self, orgs: list[OrganisationConfig]) -> list[str]:
        known = {org.id for org in orgs}
        named = [*(self.ids or ()), *([self.parent] if self.parent else [])]
        return [name for name in named if name not in known]


class SourceConfig(_Model):
    # `<org>.<template>` for a source expanded from `source_templates`.
    id: str = Field(pattern=QUALIFIED_ID)
    # The organisation that owns the source: its credentials, its share of the workers (set by
    # load_config: the only top organisation when not given).
    org: str = DEFAULT_ORG_ID
    connector: str
    schedule: Schedule = Schedule(every=timedelta(hours=1))
    lookback: Duration = timedelta(days=3)
    # Where the first collection starts when the source has no cursor yet (default: now - lookback).
    start: date | None = None
    settings: dict[str, Any] = Field(default_factory=dict)


class SourceTemplate(_Model):
    """A source expanded once per selected organisation into `<org>.<id>`. Every text in it may
    hold `{{org}}` (the organisation's id), `{{ORG}}` (the id in capitals, for environment
    variable names: `${GA4_KEY_{{ORG}}}`), `{{name_ja}}`, `{{name_en}}`, `{{kind}}` and
    `{{vars.NAME}}` (the organisation's vars over its kind's)."""

    id: str = Field(pattern=IDENTIFIER)
    orgs: OrgSelector = OrgSelector(all=True)
    connector: str
    schedule: Schedule | None = None
    lookback: Duration | None = None
    start: date | None = None
    settings: dict[str, Any] = Field(default_factory=dict)


class RollupConfig(_Model):
    """A KPI over several organisations: each member's figure (labelled with its org) and the
    rolled-up one (labelled org=`id`): sums added, ratios as the sum of the numerators over the
    sum of the denominators. A period is complete only when every member reported it."""

    orgs: OrgSelector = OrgSelector(all=True)
    # The `org` label of the rolled-up figure; must not be an organisation's id.
    id: str = Field(default="all", pattern=IDENTIFIER)


class PointConfig(_Model):
    value: float
    fiscal_year: FiscalYear


class MetricRef(_Model):
    metric: str = Field(pattern=IDENTIFIER)
    source: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)


FeedKind = Literal["latest", "fiscal_year_sum", "cumulative_sum", "ratio"]
FeedWindow = Literal["fiscal_year", "trailing_12m"]
Cadence = Literal["fiscal_year", "month", "continuous"]


class FeedConfig(_Model):
    """Where a KPI's figures come from (the semantics are in collector/kpi.py).

    latest: each period's stored value; fiscal_year_sum: the sum over each fiscal year (or, with
    `window: trailing_12m`, over the twelve months to each month's end); cumulative_sum:
    `initial` + the sum since `since`; ratio: numerator over denominator, each summed over the
    same window. `unit` is the metric's unit when it differs from the KPI's (e.g. seconds for a
    KPI in hours): values are converted.
    """

    kind: FeedKind = "latest"
    metric: str | None = Field(default=None, pattern=IDENTIFIER)
    source: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    since: date | None = None
    initial: float = 0.0
    numerator: MetricRef | None = None
    denominator: MetricRef | None = None
    window: FeedWindow = "fiscal_year"
    unit: str | None = None

    @model_validator(mode="after")
    def _shape(self) -> FeedConfig:
        if self.kind == "ratio":
            if self.numerator is None or self.denominator is None or self.metric is not None:
                raise ValueError("a ratio feed takes `numerator` and `denominator`, not `metric`")
        elif self.metric is None:
            raise ValueError(f"a {self.kind} feed needs `metric`")
        elif self.numerator or self.denominator:
            raise ValueError(f"a {self.kind} feed takes `metric`, not numerator/denominator")
        if self.kind != "cumulative_sum" and (self.since is not None or self.initial):
            raise ValueError("`since` and `initial` only apply to cumulative_sum feeds")
        if self.window != "fiscal_year" and self.kind not in ("fiscal_year_sum", "ratio"):
            raise ValueError("`window` only applies to fiscal_year_sum and ratio feeds")
        return self

    def refs(self) -> list[MetricRef]:
        if self.kind == "ratio":
            assert self.numerator is not None and self.denominator is not None
            return [self.numerator, self.denominator]
        assert self.metric is not None
        return [MetricRef(metric=self.metric, source=self.source, labels=self.labels)]

    def default_cadence(self) -> Cadence | None:
        """The cadence this feed implies, or None when only the data can tell (`latest`)."""
        if self.kind in ("fiscal_year_sum", "ratio"):
            return "month" if self.window == "trailing_12m" else "fiscal_year"
        if self.kind == "cumulative_sum":
            return "continuous"
        return None


class TargetConfig(PointConfig):
    # Where this target's path starts; default: the KPI's baseline for the first target, the
    # previous target for later ones (a revised plan continues from where the last one aimed).
    baseline: PointConfig | None = None


class KpiConfig(_Model):
    id: str = Field(pattern=IDENTIFIER)
    name_ja: str
    name_en: str
    # The owning organisation (set by load_config: the only top organisation when not given);
    # the feed reads only that organisation's series. Ignored with `rollup`.
    org: str = DEFAULT_ORG_ID
    # Over several organisations instead of one (fiscal_year_sum and ratio feeds).
    rollup: RollupConfig | None = None
    area: str
    unit: str
    direction: Literal["up", "down"] = "up"
    baseline: PointConfig
    # One target (`target:`) or several (`targets:`, e.g. a revised plan's later target).
    target: TargetConfig | None = None
    targets: list[TargetConfig] = Field(default_factory=list)
    feed: FeedConfig
    # fiscal_year | month | continuous; default from the feed (see FeedConfig.default_cadence).
    cadence: Cadence | None = None
    # Per-FY values that override the straight line from baseline to target (non-linear path).
    milestones: dict[FiscalYear, float] = Field(default_factory=dict)
    # How long after a data period ends its figure is expected; default by the data's
    # granularity (dxkpi.collector.kpi.DEFAULT_PUBLICATION_LAG). Later than that: DxKpiDataOverdue.
    publication_lag: Duration | None = None
    # Period cadences: stalled when the last N reported periods made no move in the good direction.
    stall_periods: int = Field(default=1, ge=1)
    # Continuous cadence: stalled after this long without a move in the good direction.
    stall_after: Duration | None = None

    @model_validator(mode="after")
    def _years(self) -> KpiConfig:
        if (self.target is None) == (not self.targets):
            raise ValueError("give exactly one of `target` (one target) or `targets` (a list)")
        years = [t.fiscal_year for t in self.plan]
        if len(set(years)) != len(years) or years != sorted(years):
            raise FieldProblem(
                "targets",
                "`targets` must be in fiscal-year order, one per fiscal year; got "
                + ", ".join(f"FY{y}" for y in years),
            )
        for index, target in enumerate(self.plan):
            start = self.start_of(target)
            key = "target" if self.target is not None else f"targets.{index}"
            if target.fiscal_year < start.fiscal_year:
                raise FieldProblem(
                    f"{key}.fiscal_year",
                    f"the target year {format_fiscal_year(target.fiscal_year)} is before its "
                    f"baseline year {format_fiscal_year(start.fiscal_year)}",
                )
            if start.value == target.value:
                raise FieldProblem(
                    f"{key}.value",
                    f"baseline and target values are equal ({target.value}): progress is undefined",
                )
            going_up = target.value > start.value
            if going_up != (self.direction == "up"):
                raise FieldProblem(
                    "direction",
                    f"direction is {self.direction!r} but the target ({target.value}) is "
                    f"{'above' if going_up else 'below'} the baseline ({start.value})",
                )
        cadence = self.cadence or self.feed.default_cadence()
        if self.stall_after is not None and cadence in ("fiscal_year", "month"):
            raise FieldProblem(
                "stall_after",
                f"stall_after applies to continuous KPIs; this KPI reports per {cadence}, so a "
                "stall is counted in reported periods: remove stall_after and set "
                "stall_periods (default 1) instead",
            )
        return self

    @property
    def plan(self) -> list[TargetConfig]:
        """The targets in fiscal-year order."""
        return [self.target] if self.target is not None else list(self.targets)

    def start_of(self, target: TargetConfig) -> PointConfig:
        """Where the path to `target` starts."""
        if target.baseline is not None:
            return target.baseline
        plan = self.plan
        index = plan.index(target)
        if index == 0:
            return self.baseline
        previous = plan[index - 1]
        return PointConfig(value=previous.value, fiscal_year=previous.fiscal_year)


class ForecastConfig(_Model):
    # How much history the robust trend looks at.
    window: Duration = timedelta(days=730)


class Config(_Model):
    timezone: str = "Asia/Tokyo"
    fiscal_year_start: str = Field(default="04-01", pattern=r"^\d{2}-\d{2}$")
    data_dir: str | None = None
    storage: StorageConfig = StorageConfig()
    broker: BrokerConfig = BrokerConfig()
    exporter: ExporterConfig = ExporterConfig()
    forecast: ForecastConfig = ForecastConfig()
    receiver: ReceiverConfig = ReceiverConfig()
    # None declared: one implicit organisation, `default` (DEFAULT_ORG).
    organisations: list[OrganisationConfig] = Field(default_factory=list)
    organisation_kinds: dict[OrgKind, KindDefaults] = Field(default_factory=dict)
    # After loading, `sources` holds every template's expansion too.
    source_templates: list[SourceTemplate] = Field(default_factory=list)
    sources: list[SourceConfig] = Field(default_factory=list)
    kpis: list[KpiConfig] = Field(default_factory=list)

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown timezone {value!r}; e.g. Asia/Tokyo") from exc
        return value

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    @property
    def fiscal_start(self) -> tuple[int, int]:
        month, day = (int(p) for p in self.fiscal_year_start.split("-"))
        return month, day

    def organisation(self, org_id: str) -> OrganisationConfig | None:
        return next((org for org in self.organisations if org.id == org_id), None)

    @property
    def multi_org(self) -> bool:
        """Whether there are several organisations (views then show the org)."""
        return len(self.organisations) > 1

    def source_orgs(self) -> dict[str, str]:
        """Each source's organisation (push clients: the top organisation's)."""
        top = _top_org(self.organisations) or DEFAULT_ORG_ID
        orgs = {client.id: top for client in self.receiver.clients}
        orgs.update((source.id, source.org) for source in self.sources)
        return orgs

    def org_scope(self, wanted: Sequence[str]) -> set[str]:
        """The `org` label values (organisations and roll-up ids) that `--org` picks: each
        organisation asked for; a roll-up id, its figure and its members'. Raises ValueError
        naming an unknown id and the known ones."""
        rollups = {kpi.rollup.id: kpi for kpi in self.kpis if kpi.rollup is not None}
        known = [org.id for org in self.organisations] + sorted(rollups)
        scope: set[str] = set()
        for org_id in wanted:
            if org_id in rollups:
                scope |= {org_id, *self.rollup_members(rollups[org_id])}
            elif self.organisation(org_id) is not None:
                scope.add(org_id)
            else:
                hint = difflib.get_close_matches(org_id, known, n=1)
                also = f"did you mean {hint[0]!r}? " if hint else ""
                raise ValueError(
                    f"no organisation or roll-up {org_id!r}: {also}known: {', '.join(known)}"
                )
        return scope

    def rollup_members(self, kpi: KpiConfig) -> list[str]:
        """The organisations a roll-up KPI adds up, in declared order."""
        if kpi.rollup is None:
            return [kpi.org]
        return [org.id for org in kpi.rollup.orgs.select(self.organisations)]


@dataclass
class LoadedConfig:
    """A validated config plus what was derived from it while validating."""

    config: Config
    path: Path
    settings: dict[str, ConnectorSettings] = field(default_factory=dict)
    metric_specs: dict[str, dict[str, MetricSpec]] = field(default_factory=dict)

    @property
    def base_dir(self) -> Path:
        return self.path.parent

    @property
    def _sources(self) -> dict[str, SourceConfig]:
        """Sources by id, built again if `config` was replaced."""
        index: tuple[Config, dict[str, SourceConfig]] | None = self.__dict__.get("_index")
        if index is None or index[0] is not self.config:
            index = (self.config, {source.id: source for source in self.config.sources})
            self.__dict__["_index"] = index
        return index[1]

    def source(self, source_id: str) -> SourceConfig:
        """The source by id (a run asks several times; a config may hold hundreds)."""
        found = self._sources.get(source_id)
        if found is not None:
            return found
        ids = list(self._sources)
        close = difflib.get_close_matches(source_id, ids, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        # Hundreds of ids help nobody: the first few, and how many there are.
        known = ", ".join(ids[:10]) + (f", … ({len(ids)} in all)" if len(ids) > 10 else "")
        raise DxkpiError(
            f"unknown source {source_id!r} in {self.path}; {hint}known sources: {known or '(none)'}"
        )

    def source_orgs(self) -> dict[str, str]:
        return self.config.source_orgs()

    def context(self, source_id: str) -> SourceContext:
        return SourceContext(source_id=source_id, timezone=self.config.tz, base_dir=self.base_dir)


# -- YAML with line numbers ---------------------------------------------------------------


_COMPOSER: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _compose(text: str, file: str) -> tuple[Any, dict[str, int]]:
    """Parse YAML keeping the line of every node, keyed by its dotted path (`sources[2].id`)."""
    try:
        # libyaml's parser when PyYAML has it (5 times faster on a 480-source config); its
        # nodes carry the same line marks.
        root = yaml.compose(text, Loader=_COMPOSER)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        raise ConfigError([ConfigProblem(file, line, "", f"invalid YAML: {exc}")]) from exc
    lines: dict[str, int] = {}
    constructor = yaml.SafeLoader("")

    def convert(node: yaml.Node | None, path: str) -> Any:
        if node is None:
            return None
        # A key's own line, not its value's: `target:` rather than the first line under it.
        lines.setdefault(path, node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            out = {}
            for key_node, value_node in node.value:
                key = constructor.construct_object(key_node)
                child = f"{path}.{key}" if path else str(key)
                lines[child] = key_node.start_mark.line + 1
                out[key] = convert(value_node, child)
            return out
        if isinstance(node, yaml.SequenceNode):
            return [convert(item, f"{path}[{i}]") for i, item in enumerate(node.value)]
        return constructor.construct_object(node)

    return convert(root, ""), lines


_ITEM = re.compile(r"^(sources|kpis)\[(\d+)\]")


def _named(raw: dict[str, Any], path: str) -> str:
    """`sources[1].schedule` -> `sources[zoom_main].schedule`: people know their items by id."""
    match = _ITEM.match(path)
    if match is None:
        return path
    items = raw.get(match.group(1))
    index = int(match.group(2))
    item = items[index] if isinstance(items, list) and index < len(items) else None
    item_id = item.get("id") if isinstance(item, dict) else None
    if not isinstance(item_id, str) or not item_id:
        return path
    return f"{match.group(1)}[{item_id}]{path[match.end() :]}"


def _submodel(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):
        found = _submodel(arg)
        if found is not None:
            return found
    return None


def _keys_at(model: type[BaseModel], loc: tuple[int | str, ...]) -> list[str]:
    """The keys the model accepts at `loc` (list indexes skipped); [] where it takes any."""
    current = model
    for part in loc:
        if isinstance(part, int):
            continue
        field_info = current.model_fields.get(part)
        found = _submodel(field_info.annotation) if field_info is not None else None
        if found is None:
            return []
        current = found
    return [info.alias or name for name, info in current.model_fields.items()]


# Pydantic's wording for the commonest mistakes, said the way a config's author thinks of them.
_PLAIN_WORDS = {
    "missing": "required: add `{key}:`",
    "dict_type": "must be a mapping (`key: value` lines)",
    "model_type": "must be a mapping (`key: value` lines)",
    "model_attributes_type": "must be a mapping (`key: value` lines)",
    "list_type": "must be a list (lines starting with `- `)",
    "string_type": "must be text",
}


def _validation_problems(
    exc: ValidationError, model: type[BaseModel], prefix: str
) -> Iterator[tuple[str, str]]:
    """Pydantic's errors as (path, message) in our words: a misspelt key gets a did-you-mean,
    "Value error, " goes, and a `FieldProblem` points at its own key."""
    for error in exc.errors():
        loc = tuple(error["loc"])
        message = error["msg"]
        cause = error.get("ctx", {}).get("error")
        if isinstance(cause, FieldProblem):
            loc += tuple(int(p) if p.isdigit() else p for p in cause.key.split("."))
            message = str(cause)
        elif error["type"] == "value_error" and isinstance(cause, ValueError):
            message = str(cause)
        elif error["type"] in _PLAIN_WORDS:
            message = _PLAIN_WORDS[error["type"]].format(key=loc[-1] if loc else "")
        elif error["type"] == "string_pattern_mismatch" and error["ctx"]["pattern"] == IDENTIFIER:
            message = "write lower-case letters, digits and _, starting with a letter (zoom_main)"
        elif error["type"] == "string_pattern_mismatch" and error["ctx"]["pattern"] == QUALIFIED_ID:
            message = (
                "write lower-case letters, digits and _, starting with a letter (zoom_main); "
                "`<org>.<template>` only for sources expanded from source_templates"
            )
        elif error["type"] == "extra_forbidden" and loc:
            key = str(loc[-1])
            allowed = _keys_at(model, loc[:-1])
            close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
            message = f"unknown key `{key}`; " + (
                f"did you mean `{close[0]}`?" if close else f"allowed: {', '.join(allowed)}"
            )
        yield _loc_path(prefix, loc), message


def _loc_path(prefix: str, loc: tuple[int | str, ...]) -> str:
    path = prefix
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path = f"{path}.{part}" if path else part
    return path


def _line_for(lines: dict[str, int], path: str) -> int | None:
    while path:
        if path in lines:
            return lines[path]
        cut = max(path.rfind("."), path.rfind("["))
        path = path[:cut] if cut > 0 else ""
    return lines.get("")


def _secret_fields(model: type[BaseModel]) -> set[str]:
    names = set()
    for name, info in model.model_fields.items():
        text = repr(info.annotation)
        if "SecretStr" in text or info.annotation is SecretStr:
            names.add(info.alias or name)
    return names


def _walk_strings(value: Any, path: str) -> Iterator[tuple[str, str]]:
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _walk_strings(item, f"{path}.{key}")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _walk_strings(item, f"{path}[{i}]")


def _resolve_env(value: Any, path: str, problems: list[tuple[str, str]]) -> Any:
    """Replace `${VAR}` in every string; record a problem for each unset variable."""
    if isinstance(value, str):

        def sub(match: re.Match[str]) -> str:
            name = match.group(1)
            if name not in os.environ:
                problems.append((path, f"environment variable {name} is not set: export it"))
                return ""
            return os.environ[name]

        return ENV_REF.sub(sub, value)
    if isinstance(value, dict):
        return {k: _resolve_env(v, f"{path}.{k}", problems) for k, v in value.items()}
    if isinstance(value, list):
        return [_resolve_env(v, f"{path}[{i}]", problems) for i, v in enumerate(value)]
    return value


# -- organisations and source templates ------------------------------------------------------

PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_.]*)\s*\}\}")


def _top_org(orgs: list[OrganisationConfig]) -> str | None:
    """The one organisation without a parent, if exactly one: what owns an unlabelled item."""
    tops = [org.id for org in orgs if org.parent is None]
    return tops[0] if len(tops) == 1 else None


def _placeholders(org: OrganisationConfig, kinds: dict[str, KindDefaults]) -> dict[str, str]:
    kind = kinds.get(org.kind)
    values = {
        "org": org.id,
        "ORG": org.id.upper(),
        "name_ja": org.name_ja,
        "name_en": org.name_en,
        "kind": org.kind,
        "parent": org.parent or "",
    }
    merged = {**(kind.vars if kind else {}), **org.vars}
    values.update({f"vars.{name}": value for name, value in merged.items()})
    return values


def _fill(value: Any, values: dict[str, str], path: str, missing: list[tuple[str, str]]) -> Any:
    """Replace `{{name}}` in every string; record each unknown name with its path."""
    if isinstance(value, str):

        def sub(match: re.Match[str]) -> str:
            name = match.group(1)
            if name not in values:
                missing.append((path, name))
                return ""
            return values[name]

        return PLACEHOLDER.sub(sub, value)
    if isinstance(value, dict):
        return {k: _fill(v, values, f"{path}.{k}", missing) for k, v in value.items()}
    if isinstance(value, list):
        return [_fill(v, values, f"{path}[{i}]", missing) for i, v in enumerate(value)]
    return value


def _organisations(
    raw: dict[str, Any], problem: Any
) -> tuple[list[OrganisationConfig], dict[str, KindDefaults]]:
    """The declared organisations (or the implicit `default` one) and the defaults per kind."""
    orgs: list[OrganisationConfig] = []
    items = raw.get("organisations")
    if isinstance(items, list):
        first: dict[Any, int] = {}
        for i, item in enumerate(items):
            org_id = item.get("id") if isinstance(item, dict) else None
            if org_id is not None and org_id in first:
                problem(f"organisations[{i}].id", f"duplicate organisation id {org_id!r}")
                continue
            first.setdefault(org_id, i)
            try:
                orgs.append(OrganisationConfig.model_validate(item))
            except ValidationError as exc:
                for p, message in _validation_problems(
                    exc, OrganisationConfig, f"organisations[{i}]"
                ):
                    problem(p, message)
        known = {org.id for org in orgs}
        for i, org in enumerate(orgs):
            if org.parent is not None and (org.parent not in known or org.parent == org.id):
                problem(
                    f"organisations[{i}].parent",
                    f"organisation {org.id}: no other organisation with id {org.parent!r}",
                )
    kinds: dict[str, KindDefaults] = {}
    kinds_raw = raw.get("organisation_kinds")
    if isinstance(kinds_raw, dict):
        for kind, value in kinds_raw.items():
            if kind not in get_args(OrgKind):
                continue  # Config says which kinds there are
            try:
                kinds[kind] = KindDefaults.model_validate(value)
            except ValidationError as exc:
                for p, message in _validation_problems(
                    exc, KindDefaults, f"organisation_kinds.{kind}"
                ):
                    problem(p, message)
    if not orgs:
        orgs = [DEFAULT_ORG]
    return orgs, kinds


def _with_kind_defaults(
    source: dict[str, Any], org: OrganisationConfig, kinds: dict[str, KindDefaults]
) -> dict[str, Any]:
    kind = kinds.get(org.kind)
    if kind is None:
        return source
    out = dict(source)
    if "schedule" not in out and kind.schedule is not None:
        out["schedule"] = kind.schedule.model_dump(exclude_none=True, mode="json")
    if "lookback" not in out and kind.lookback is not None:
        out["lookback"] = format_duration(kind.lookback)
    return out


def _expand_sources(
    raw: dict[str, Any],
    lines: dict[str, int],
    orgs: list[OrganisationConfig],
    kinds: dict[str, KindDefaults],
    problem: Any,
) -> tuple[list[Any], dict[int, str]]:
    """Every source with its `org` set and its `{{…}}` filled in: the plain ones, then each
    template once per selected organisation as `<org>.<template id>`. Returns the list and,
    for each expanded item's index, the template it came from (`source_templates[i]`), whose
    lines the expanded item's problems point at."""
    by_id = {org.id: org for org in orgs}
    top = _top_org(orgs)
    out: list[Any] = []
    origin: dict[int, str] = {}
    plain = raw.get("sources")
    for i, item in enumerate(plain if isinstance(plain, list) else ()):
        if not isinstance(item, dict):
            out.append(item)
            continue
        org_id = item.get("org", top)
        org = by_id.get(org_id) if isinstance(org_id, str) else None
        if org is None:
            where = f"sources[{i}].org" if "org" in item else f"sources[{i}]"
            problem(
                where,
                f"no organisation {org_id!r}; declared: {', '.join(by_id)}"
                if "org" in item
                else "several top organisations: say which owns this source with `org:`",
            )
            out.append(item)
            continue
        missing: list[tuple[str, str]] = []
        filled = _fill(item, _placeholders(org, kinds), f"sources[{i}]", missing)
        for p, name in missing:
            problem(p, f"organisation {org.id} has no `{name}` for {{{{{name}}}}}")
        out.append(_with_kind_defaults({**filled, "org": org.id}, org, kinds))
    templates = raw.get("source_templates")
    for t, template in enumerate(templates if isinstance(templates, list) else ()):
        prefix = f"source_templates[{t}]"
        try:
            model = SourceTemplate.model_validate(template)
        except ValidationError as exc:
            for p, message in _validation_problems(exc, SourceTemplate, prefix):
                problem(p, message)
            continue
        for name in model.orgs.unknown(orgs):
            problem(f"{prefix}.orgs", f"template {model.id}: no organisation {name!r}")
        for org in model.orgs.select(orgs):
            missing = []
            body = {k: v for k, v in template.items() if k not in ("id", "orgs")}
            filled = _fill(body, _placeholders(org, kinds), prefix, missing)
            for p, name in missing:
                problem(
                    p,
                    f"organisation {org.id} has no `{name}` for {{{{{name}}}}} "
                    f"(template {model.id}): add it to its vars or its kind's",
                )
            index = len(out)
            origin[index] = prefix
            out.append(
                _with_kind_defaults(
                    {"id": f"{org.id}.{model.id}", "org": org.id, **filled}, org, kinds
                )
            )
            # The expanded source's problems point at the template's lines.
            for key, line in list(lines.items()):
                if key == prefix or key.startswith((f"{prefix}.", f"{prefix}[")):
                    lines.setdefault(f"sources[{index}]{key[len(prefix) :]}", line)
    return out, origin


def _check_kpi_orgs(raw_kpis: Any, orgs: list[OrganisationConfig], problem: Any) -> list[Any] | Any:
    """Each KPI with its `org` set (the top organisation when not given); roll-ups checked."""
    if not isinstance(raw_kpis, list):
        return raw_kpis
    by_id = {org.id: org for org in orgs}
    top = _top_org(orgs)
    out = []
    for i, item in enumerate(raw_kpis):
        if not isinstance(item, dict):
            out.append(item)
            continue
        rollup = item.get("rollup")
        if "org" in item and item["org"] not in by_id:
            problem(
                f"kpis[{i}].org", f"no organisation {item['org']!r}; declared: {', '.join(by_id)}"
            )
        elif "org" not in item and top is None and rollup is None:
            problem(f"kpis[{i}]", "several top organisations: say which owns this KPI with `org:`")
        elif "org" not in item:
            item = {**item, "org": top or orgs[0].id}
        if isinstance(rollup, dict):
            try:
                model = RollupConfig.model_validate(rollup)
            except ValidationError:
                pass  # reported with the KPI
            else:
                for name in model.orgs.unknown(orgs):
                    problem(f"kpis[{i}].rollup.orgs", f"no organisation {name!r}")
                if model.id in by_id:
                    problem(
                        f"kpis[{i}].rollup.id",
                        f"{model.id!r} is an organisation's id; the rolled-up figure needs "
                        "a label of its own (default `all`)",
                    )
                if not model.orgs.select(orgs):
                    problem(f"kpis[{i}].rollup.orgs", "selects no organisation")
            feed = item.get("feed")
            kind = feed.get("kind", "latest") if isinstance(feed, dict) else None
            if kind not in ("fiscal_year_sum", "ratio"):
                problem(
                    f"kpis[{i}].rollup",
                    f"a roll-up adds its organisations' figures per period: its feed must be "
                    f"fiscal_year_sum or ratio, not {kind}",
                )
        out.append(item)
    return out


# -- loading --------------------------------------------------------------------------------


def load_config(path: str | Path) -> LoadedConfig:
    path = Path(path).resolve()
    file = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise ConfigError(
            [
                ConfigProblem(
                    file,
                    None,
                    "",
                    "config file not found; give one with --config FILE or DXKPI_CONFIG",
                )
            ]
        ) from exc
    except UnicodeDecodeError as exc:
        raise ConfigError([ConfigProblem(file, None, "", "config must be UTF-8 text")]) from exc
    raw, lines = _compose(text, file)
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError([ConfigProblem(file, 1, "", "the config must be a mapping")])
    problems: list[ConfigProblem] = []

    def problem(p: str, message: str) -> None:
        # Lines are found by position (`sources[1]`), people are told the id (`sources[zoom]`).
        problems.append(ConfigProblem(file, _line_for(lines, p), _named(raw, p), message))

    # Organisations first: every source and KPI gets its `org`, templates are expanded into
    # sources (their problems point at the template's lines and name the organisation).
    orgs, kinds = _organisations(raw, problem)
    sources, origin = _expand_sources(raw, lines, orgs, kinds, problem)
    if "kpis" in raw:
        raw = {**raw, "kpis": _check_kpi_orgs(raw["kpis"], orgs, problem)}
    if "sources" in raw or origin:
        raw["sources"] = sources

    def named_problem(p: str, message: str) -> None:
        match = _ITEM.match(p)
        if match is not None and match.group(1) == "sources" and int(match.group(2)) in origin:
            item = sources[int(match.group(2))]
            message += f" (organisation {item['org']}, from {origin[int(match.group(2))]})"
        problem(p, message)

    # Resolve ${ENV} outside connector settings now (storage/broker URLs may carry passwords).
    env_problems: list[tuple[str, str]] = []
    resolved = {
        key: (
            value
            if key in ("sources", "source_templates")
            else _resolve_env(value, key, env_problems)
        )
        for key, value in raw.items()
    }
    resolved["organisations"] = [org.model_dump() for org in orgs]
    # Each source and KPI is validated on its own: one bad item hides no problem of another,
    # and the checks across items below still run on every good one.
    top = dict(resolved)
    valid: dict[str, list[tuple[int, Any]]] = {"sources": [], "kpis": []}
    for key, model in (("sources", SourceConfig), ("kpis", KpiConfig)):
        items = resolved.get(key)
        if not isinstance(items, list):
            continue  # left to Config, which says what it must be
        top[key] = []
        first: dict[Any, int] = {}
        for i, item in enumerate(items):
            item_id = item.get("id") if isinstance(item, dict) else None
            if item_id is not None and item_id in first:
                noun = "source" if key == "sources" else "KPI"
                problem(
                    f"{key}[{i}].id",
                    f"duplicate {noun} id {item_id!r} (the first is on line "
                    f"{_line_for(lines, f'{key}[{first[item_id]}]')})",
                )
            first.setdefault(item_id, i)
            try:
                valid[key].append((i, model.model_validate(item)))
            except ValidationError as exc:
                for p, message in _validation_problems(exc, model, f"{key}[{i}]"):
                    named_problem(p, message)
    try:
        partial = Config.model_validate(top)
    except ValidationError as exc:
        for p, message in _validation_problems(exc, Config, ""):
            problem(p, message)
        partial = Config()  # the defaults, so that the items can still be checked
    for p, message in env_problems:
        problem(p, message)

    loaded = LoadedConfig(
        config=partial.model_copy(
            update={key: [item for _, item in valid[key]] for key in ("sources", "kpis")}
        ),
        path=path,
    )
    _check_sources(loaded, valid["sources"], raw, named_problem)
    check_receiver(loaded, raw, problem)
    raw_sources = raw.get("sources")
    source_ids = (
        {item.get("id") for item in raw_sources or () if isinstance(item, dict)}
        if isinstance(raw_sources, list)
        else set()
    )
    _check_kpis(loaded, valid["kpis"], source_ids, problem)
    if problems:
        raise ConfigError(sorted(problems, key=lambda p: p.line or 0))
    return LoadedConfig(
        config=Config.model_validate(resolved),
        path=path,
        settings=loaded.settings,
        metric_specs=loaded.metric_specs,
    )


def _check_sources(
    loaded: LoadedConfig, sources: list[tuple[int, SourceConfig]], raw: dict[str, Any], problem: Any
) -> None:
    """Check each valid source's connector and settings; a source that passes gets its
    settings and declared metrics in `loaded`."""
    for i, source in sources:
        prefix = f"sources[{i}]"
        try:
            cls = load_connector(source.connector)
        except DxkpiError as exc:
            problem(f"{prefix}.connector", str(exc))
            continue
        raw_settings = raw["sources"][i].get("settings") or {}
        secret_names = _secret_fields(cls.settings_model)
        for key in secret_names & set(raw_settings):
            value = raw_settings[key]
            if value is not None and not WHOLE_ENV_REF.match(str(value)):
                problem(
                    f"{prefix}.settings.{key}",
                    "secrets are never written inline: put the value in an environment "
                    "variable and write `${VAR_NAME}` here",
                )
        env_problems: list[tuple[str, str]] = []
        settings_raw = _resolve_env(raw_settings, f"{prefix}.settings", env_problems)
        for p, message in env_problems:
            problem(p, message)
        if env_problems:
            continue
        try:
            settings = cls.settings_model.model_validate(settings_raw)
        except ValidationError as exc:
            for where, message in _validation_problems(
                exc, cls.settings_model, f"{prefix}.settings"
            ):
                problem(where, message)
            continue
        loaded.settings[source.id] = settings
        try:
            connector = cls(settings, loaded.context(source.id))
            loaded.metric_specs[source.id] = {m.name: m for m in connector.declared_metrics()}
        except (DxkpiError, ValueError) as exc:
            problem(f"{prefix}.settings", str(exc))
            continue
        for name in loaded.metric_specs[source.id]:
            if name.endswith(("_total", "_created", "_bucket", "_count", "_sum", "_info")):
                # The exporter serves every metric as a gauge `dxkpi_<name>`; these suffixes
                # belong to counters, histograms and info metrics, and Prometheus lints them.
                problem(
                    f"{prefix}.settings",
                    f"metric {name!r}: a gauge must not end in _total, _count, _sum, _bucket, "
                    "_created or _info; rename it (e.g. _all instead of _total)",
                )


_KIND_NEEDS_SUM = {"fiscal_year_sum", "cumulative_sum", "ratio"}


def _check_units(
    kpi: KpiConfig, metric: str, specs: list[MetricSpec], prefix: str, problem: Any
) -> None:
    """The feed's unit must convert exactly to the KPI's; a declared base unit that differs from
    the KPI's must be named in the feed, so that no conversion happens unannounced."""
    if kpi.feed.unit is not None:
        if conversion_factor(kpi.feed.unit, kpi.unit) is None:
            problem(
                f"{prefix}.feed.unit",
                f"cannot convert {kpi.feed.unit!r} to the KPI's unit {kpi.unit!r}; known units: "
                + ", ".join(known_units()),
            )
        return
    for spec in specs:
        factor = conversion_factor(spec.unit, kpi.unit)
        if factor is not None and factor != 1.0:
            problem(
                f"{prefix}.unit",
                f"metric {metric!r} is in {spec.unit} but the KPI is in {kpi.unit}: add "
                f"`unit: {spec.unit}` to the feed to convert its values",
            )
            return


def _check_kpis(
    loaded: LoadedConfig, kpis: list[tuple[int, KpiConfig]], source_ids: set[Any], problem: Any
) -> None:
    """Check each valid KPI's feed against the sources. `source_ids` are every source's, valid
    or not; a feed that may rest on a source with problems of its own is not blamed for them
    (one misspelt connector is one problem, not one per KPI)."""
    broken = source_ids - set(loaded.metric_specs)
    config = loaded.config
    org_of = {source.id: source.org for source in config.sources}
    templates = {template.id for template in config.source_templates}
    for i, kpi in kpis:
        prefix = f"kpis[{i}]"
        members = set(config.rollup_members(kpi))
        for j, ref in enumerate(kpi.feed.refs()):
            where = f"{prefix}.feed" + (
                "" if kpi.feed.kind != "ratio" else (".numerator", ".denominator")[j]
            )
            if ref.source is not None and ref.source not in source_ids | templates:
                problem(f"{where}.source", f"no source with id {ref.source!r}")
                continue
            # A template's id names its expansion in each organisation (`<org>.<id>`).
            candidates = [
                s
                for s in sorted(loaded.metric_specs)
                if (ref.source is None or s == ref.source or s.endswith(f".{ref.source}"))
                and (org_of.get(s) in members or not config.multi_org)
            ]
            specs = [
                loaded.metric_specs[s][ref.metric]
                for s in candidates
                if ref.metric in loaded.metric_specs.get(s, {})
            ]
            if not specs:
                if not (ref.source in broken or (ref.source is None and broken)):
                    problem(f"{where}.metric", f"no source declares metric {ref.metric!r}")
                continue
            _check_units(kpi, ref.metric, specs, prefix, problem)
            if kpi.feed.kind in _KIND_NEEDS_SUM:
                for spec in specs:
                    if spec.aggregation != "sum":
                        problem(
                            f"{prefix}.feed.kind",
                            f"{kpi.feed.kind} sums {ref.metric!r} over time, but that metric's "
                            f"aggregation is {spec.aggregation!r} (ratios and unique counts must "
                            "not be summed); use kind: latest or a summable metric",
                        )
