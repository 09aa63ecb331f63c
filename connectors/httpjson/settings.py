"""Settings of an httpjson source: the endpoint, its window parameters, its paging, and
JMESPath expressions that find the records and read each record's period, labels and values."""

from __future__ import annotations

import string
from typing import Literal

import jmespath
from jmespath.exceptions import JMESPathError
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from dxkpi.collector.contract import ConnectorSettings
from dxkpi.connectors._records import PeriodGranularity, RecordMetric, check_mapping

# What a parameter template may name: the window, widened to whole periods, in the source's
# timezone. `{start:%Y-%m-%d}` formats with strftime.
TEMPLATE_NAMES = ("start", "end", "last_day")
# Headers that carry credentials: only through auth_token, which is a secret from ${ENV}.
_CREDENTIAL_HEADERS = {"authorization", "proxy-authorization", "cookie", "x-api-key"}


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def check_expression(expression: str) -> str:
    try:
        jmespath.compile(expression)
    except JMESPathError as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ValueError(f"{expression!r} is not a JMESPath expression: {first}") from None
    return expression


def check_template(template: str) -> str:
    try:
        parts = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ValueError(f"{template!r}: {exc} (write a literal brace as {{{{ or }}}})") from None
    for _, name, _, conversion in parts:
        if name is None:
            continue
        if name not in TEMPLATE_NAMES or conversion:
            raise ValueError(
                f"{template!r}: unknown placeholder {{{name}}}; use {{start}}, {{end}} or "
                "{last_day}, with a strftime format after a colon: {start:%Y-%m-%d}"
            )
    return template


class Pagination(_Model):
    """How the endpoint hands out the next page."""

    style: Literal["none", "next_link", "link_header", "page", "offset"] = Field(
        default="none",
        description="next_link: a URL in the body; link_header: RFC 8288 Link rel=next; "
        "page: a page-number parameter; offset: an offset parameter",
    )
    next: str | None = Field(
        default=None, description="next_link: JMESPath to the next page's URL in the body"
    )
    param: str | None = Field(
        default=None, description="page/offset: the query parameter, e.g. page or offset"
    )
    first: int = Field(default=1, ge=0, description="page: the number of the first page")
    size_param: str | None = Field(
        default=None, description="page/offset: the page-size parameter, e.g. per_page, limit"
    )
    size: int = Field(default=100, ge=1, le=10_000, description="page/offset: records per page")
    max_pages: int = Field(default=1000, ge=1, description="a run stops with an error past this")

    @field_validator("next")
    @classmethod
    def _expression(cls, value: str | None) -> str | None:
        return None if value is None else check_expression(value)

    @model_validator(mode="after")
    def _style_fields(self) -> Pagination:
        if self.style == "next_link" and not self.next:
            raise ValueError("style next_link needs `next`: where the next page's URL is")
        if self.style in ("page", "offset") and not self.param:
            raise ValueError(f"style {self.style} needs `param`: the query parameter to count in")
        return self


class HttpJsonSettings(ConnectorSettings):
    url: str = Field(pattern=r"^https?://[^/\s]+", description="the endpoint, without a window")
    params: dict[str, str] = Field(
        default_factory=dict,
        description="query parameters; values may be templates: {start:%Y-%m-%d}, {end}, "
        "{last_day}",
    )
    headers: dict[str, str] = Field(
        default_factory=dict, description="extra request headers (never credentials)"
    )
    auth_token: SecretStr | None = Field(
        default=None, description="the credential, from ${ENV}; sent in auth_header"
    )
    auth_header: str = Field(default="Authorization", pattern=r"^[A-Za-z0-9-]+$")
    auth_scheme: str = Field(
        default="Bearer", description='put before the token ("" to send the token alone)'
    )
    pagination: Pagination = Pagination()
    records: str = Field(description="JMESPath from a page to its list of records, e.g. data")
    record_id: str | None = Field(
        default=None, description="JMESPath to a record's id, to name records in errors"
    )
    period: str = Field(description="JMESPath to a record's date, month, fiscal year or moment")
    granularity: PeriodGranularity = "day"
    labels: dict[str, str] = Field(default_factory=dict, description="{label: JMESPath}")
    static_labels: dict[str, str] = Field(default_factory=dict)
    metrics: list[RecordMetric] = Field(description="`field` is a JMESPath on the record")
    missing: Literal["error", "skip"] = Field(
        default="error",
        description="a metric's field absent or null: error (a changed schema), or skip it as "
        "not reported",
    )
    timeout: float = Field(default=60.0, gt=0, le=600)

    @field_validator("params")
    @classmethod
    def _templates(cls, params: dict[str, str]) -> dict[str, str]:
        for value in params.values():
            check_template(value)
        return params

    @field_validator("headers")
    @classmethod
    def _no_credentials(cls, headers: dict[str, str]) -> dict[str, str]:
        for name in headers:
            if name.lower() in _CREDENTIAL_HEADERS:
                raise ValueError(
                    f"header {name!r} carries a credential: set auth_header: {name} and "
                    "auth_token: ${ENV_VAR} instead (secrets are never written inline)"
                )
        return headers

    @field_validator("records", "period", "record_id")
    @classmethod
    def _expressions(cls, value: str | None) -> str | None:
        return None if value is None else check_expression(value)

    @model_validator(mode="after")
    def _checks(self) -> HttpJsonSettings:
        check_mapping(self.metrics, self.labels, self.static_labels)
        for expression in (*self.labels.values(), *(m.field for m in self.metrics if m.field)):
            check_expression(expression)
        if "?" in self.url:
            raise ValueError("put the URL's query parameters in `params`, not in `url`")
        return self
