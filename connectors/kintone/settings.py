"""Settings of a kintone source: which app, how to sign in, which records, which fields."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, SecretStr, model_validator

from dxkpi.collector.contract import ConnectorSettings
from dxkpi.connectors._records import PeriodGranularity, RecordMetric, check_mapping

# The window, the order and the paging are the connector's: a query may only narrow records.
_OWN_CLAUSES = re.compile(r"\b(order\s+by|limit|offset)\b", re.IGNORECASE)
_QUOTED = re.compile(r'"(?:[^"\\]|\\.)*"')
# kintone field codes: letters (any script), digits, _, ・, $ (for $id), ＿ and the like.
_FIELD_CODE = r"^[^\s\"'()=<>!,]+$"


class KintoneSettings(ConnectorSettings):
    base_url: str = Field(
        pattern=r"^https?://[^/]+/?$",
        description="the kintone domain, e.g. https://example.cybozu.com (no path)",
    )
    app: int = Field(ge=1, description="the app ID (the number in /k/<app>/ of the app's URL)")
    guest_space_id: int | None = Field(
        default=None, ge=1, description="the guest space's ID when the app is in one"
    )
    api_token: SecretStr | None = Field(
        default=None,
        description="an API token of the app with the 'View records' permission "
        "(several apps' tokens: comma-separated)",
    )
    username: str | None = Field(default=None, description="login name for password auth")
    password: SecretStr | None = Field(default=None, description="password for password auth")
    query: str = Field(
        default="",
        description='a kintone query narrowing the records, e.g. status in ("完了"); '
        "no order by, limit or offset",
    )
    date_field: str = Field(
        pattern=_FIELD_CODE,
        description="field code of the DATE or DATETIME field that places a record in time",
    )
    date_field_type: Literal["date", "datetime"] = Field(
        default="date",
        description="date for DATE fields, datetime for DATETIME, 作成日時 and 更新日時",
    )
    granularity: PeriodGranularity = Field(
        default="day", description="records are added up per day, month or fiscal year"
    )
    labels: dict[str, str] = Field(
        default_factory=dict, description="{label name: field code} (DROP_DOWN, text, ...)"
    )
    static_labels: dict[str, str] = Field(default_factory=dict)
    metrics: list[RecordMetric] = Field(
        description="a NUMBER or CALC field per metric, or no field to count records"
    )
    page_size: int = Field(default=500, ge=1, le=500, description="records per request (max 500)")

    @model_validator(mode="after")
    def _checks(self) -> KintoneSettings:
        password_auth = self.username is not None or self.password is not None
        if self.api_token is not None and password_auth:
            raise ValueError("give either api_token or username and password, not both")
        if self.api_token is None and not (self.username and self.password is not None):
            raise ValueError(
                "kintone needs api_token (recommended: limited to the app) or both username "
                "and password"
            )
        if _OWN_CLAUSES.search(_QUOTED.sub('""', self.query)):
            raise ValueError(
                "query may not have order by, limit or offset: the connector pages through "
                "the records itself"
            )
        check_mapping(self.metrics, self.labels, self.static_labels)
        for name, code in self.labels.items():
            if not re.match(_FIELD_CODE, code):
                raise ValueError(f"labels.{name}: {code!r} is not a field code")
        return self
