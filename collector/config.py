"""The YAML config: pydantic models, `${ENV}` secrets, and errors that point at file:line.

`load_config(path)` returns a `LoadedConfig` or raises `ConfigError` listing *every* problem found
(YAML syntax, schema, unknown connectors, connector settings, inline secrets, missing environment
variables, references between KPIs and sources, aggregations a metric does not allow).
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Iterator
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
from dxkpi.collector.receiver.config import ReceiverConfig, check_receiver
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


class SourceConfig(_Model):
    id: str = Field(pattern=IDENTIFIER)
    connector: str
    schedule: Schedule = Schedule(every=timedelta(hours=1))
    lookback: Duration = timedelta(days=3)
    # Where the first collection starts when the source has no cursor yet (default: now - lookback).
    start: date | None = None
    settings: dict[str, Any] = Field(default_factory=dict)


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

    def source(self, source_id: str) -> SourceConfig:
        for source in self.config.sources:
            if source.id == source_id:
                return source
        known = ", ".join(s.id for s in self.config.sources) or "(none)"
        raise DxkpiError(f"unknown source {source_id!r} in {self.path}; known sources: {known}")

    def context(self, source_id: str) -> SourceContext:
        return SourceContext(source_id=source_id, timezone=self.config.tz, base_dir=self.base_dir)


# -- YAML with line numbers ---------------------------------------------------------------


def _compose(text: str, file: str) -> tuple[Any, dict[str, int]]:
    """Parse YAML keeping the line of every node, keyed by its dotted path (`sources[2].id`)."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
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

    # Resolve ${ENV} outside connector settings now (storage/broker URLs may carry passwords).
    env_problems: list[tuple[str, str]] = []
    resolved = {
        key: (value if key == "sources" else _resolve_env(value, key, env_problems))
        for key, value in raw.items()
    }
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
                    problem(p, message)
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
    _check_sources(loaded, valid["sources"], raw, problem)
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
    for i, kpi in kpis:
        prefix = f"kpis[{i}]"
        for j, ref in enumerate(kpi.feed.refs()):
            where = f"{prefix}.feed" + (
                "" if kpi.feed.kind != "ratio" else (".numerator", ".denominator")[j]
            )
            if ref.source is not None and ref.source not in source_ids:
                problem(f"{where}.source", f"no source with id {ref.source!r}")
                continue
            candidates = [ref.source] if ref.source else sorted(loaded.metric_specs)
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
