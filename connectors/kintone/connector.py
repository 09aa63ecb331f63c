"""kintone (Cybozu): figures kept as records of a kintone app, through the REST API.

`GET /k/v1/records.json?app=&query=&fields[0]=&totalCount=true` answers at most 500 records
(`limit`), and `offset` may not pass 10,000; an app with more matching records is read with
the cursor API: `POST /k/v1/records/cursor.json` (app, fields, query, size ≤ 500) gives an `id`,
`GET /k/v1/records/cursor.json?id=` gives `records` and `next` until `next` is false, and
`DELETE /k/v1/records/cursor.json` frees a cursor not read to the end (a domain may hold only
10 cursors; each lives 10 minutes). Apps in a guest space are under `/k/guest/<space>/v1/`.

Auth: `X-Cybozu-API-Token: <token>` (a token of the app), or
`X-Cybozu-Authorization: base64(login:password)`. Errors are JSON `{"code", "id", "message"}`
with codes such as `CB_WA01` (password refused), `GAIA_IA02` (token invalid), `CB_NO02` (no
permission), `GAIA_AP01` (no such app), `GAIA_IQ11` (unknown field in the query), `CB_VA01`
(invalid request); kintone answers them as 400, 401, 403, 404 or its own 520.

Every field comes as `{"type": "NUMBER", "value": "1234"}`: NUMBER and CALC values are strings
("" when empty), DATE is `2026-04-01`, DATETIME is UTC `2026-04-01T00:30:00Z`, DROP_DOWN and
text fields are strings, user fields `{"code", "name"}`, CHECK_BOX a list.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Generator, Iterator, Mapping
from contextlib import closing
from datetime import UTC, date, datetime, time
from typing import Any, ClassVar

import requests

from dxkpi.collector.contract import (
    Checkpoint,
    Connector,
    Granularity,
    MetricSpec,
    Observation,
    SourceContext,
    Window,
)
from dxkpi.collector.errors import (
    FatalSourceError,
    RetryableSourceError,
    SourceAuthError,
    SourceDataError,
    SourceError,
    excerpt,
)
from dxkpi.collector.fiscal import period_end
from dxkpi.collector.http import HttpClient
from dxkpi.connectors._records import (
    RecordProblems,
    RecordTable,
    metric_specs,
    period_of,
    window_periods,
)
from dxkpi.connectors.kintone.settings import KintoneSettings

log = logging.getLogger("dxkpi.connectors.kintone")

# kintone refuses an offset above this; beyond it the cursor API reads the records.
MAX_OFFSET = 10_000
# What kintone's codes mean for us. Credentials and permissions first:
_AUTH_CODES = {
    "CB_WA01": "the login name or password was refused",
    "CB_AU01": "kintone asks to log in: no credentials were accepted",
    "GAIA_IA02": "the API token is not one of this app's tokens (or was not saved with "
    "'Update App')",
    "GAIA_IA03": "the API token belongs to another app",
    "GAIA_NO01": "the API token may not run this API: give it the 'View records' permission",
    "CB_NO02": "no permission to view the app's records",
}
_NOT_FOUND_CODES = {"GAIA_AP01", "GAIA_SP01"}
# Too many cursors open on the domain (they expire after 10 minutes); a cursor gone stale.
_PASSING_CODES = {"GAIA_TM12", "GAIA_CU01"}
_CURSOR_LIFETIME_SECONDS = 600.0


class KintoneConnector(Connector[KintoneSettings]):
    name = "kintone"
    settings_model = KintoneSettings
    # The metrics depend on each source's settings: see declared_metrics().
    metrics: ClassVar[tuple[MetricSpec, ...]] = ()

    def __init__(self, settings: KintoneSettings, context: SourceContext) -> None:
        super().__init__(settings, context)
        headers: dict[str, str] = {}
        secrets: list[str] = []
        if settings.api_token is not None:
            token = settings.api_token.get_secret_value()
            headers["X-Cybozu-API-Token"] = token
            secrets = [token, *token.split(",")]
            hint = (
                f"check api_token: a token made in app {settings.app}'s settings (App Settings › "
                "API Token) with 'View records', saved with 'Update App'"
            )
        else:
            assert settings.username is not None and settings.password is not None
            password = settings.password.get_secret_value()
            login = f"{settings.username}:{password}".encode()
            encoded = base64.b64encode(login).decode()
            headers["X-Cybozu-Authorization"] = encoded
            secrets = [password, encoded]
            hint = (
                f"check username and password, and that the user may view app {settings.app}'s "
                "records"
            )
        self._secrets = secrets
        self.client = HttpClient(
            context,
            settings.base_url,
            default_headers=headers,
            redact=secrets,
            auth_hint=hint,
        )
        space = settings.guest_space_id
        self._api = f"/k/guest/{space}/v1" if space else "/k/v1"
        self._app = f"kintone app {settings.app}"

    def declared_metrics(self) -> tuple[MetricSpec, ...]:
        s = self.settings
        return metric_specs(s.metrics, s.labels, s.static_labels, self._app)

    # -- collecting ------------------------------------------------------------------------

    def collect(self, window: Window) -> Iterator[Observation | Checkpoint]:
        s = self.settings
        tz = self.context.timezone
        periods = window_periods(window, s.granularity, tz)
        if not periods:
            return
        query = self._query(periods[0], period_end(periods[-1], Granularity(s.granularity)))
        problems = RecordProblems()
        table = RecordTable(
            s.metrics, tuple(s.labels), s.static_labels, s.granularity, tz, problems
        )
        wanted = set(periods)
        # Closed at once on an error, so that an open cursor is deleted now, not when the
        # generator happens to be collected.
        with closing(self._records(query)) as records:
            for record in records:
                self._add(table, record, wanted)
        error = problems.error(
            self.context.source_id,
            self._app,
            "fix the records listed (or the field codes in the settings); the next run reads "
            "them again",
        )
        if error is not None:
            raise error
        yield from table.observations(periods)

    def _query(self, first: date, end: date) -> str:
        s = self.settings
        bounds = (
            f"{s.date_field} >= {_quote(self._bound(first))} and "
            f"{s.date_field} < {_quote(self._bound(end))}"
        )
        return f"({s.query}) and {bounds}" if s.query.strip() else bounds

    def _bound(self, day: date) -> str:
        if self.settings.date_field_type == "date":
            return day.isoformat()
        moment = datetime.combine(day, time(), tzinfo=self.context.timezone).astimezone(UTC)
        return moment.strftime("%Y-%m-%dT%H:%M:%SZ")

    def _fields(self) -> list[str]:
        s = self.settings
        codes = ["$id", s.date_field, *s.labels.values(), *(m.field for m in s.metrics if m.field)]
        return list(dict.fromkeys(codes))

    def _add(self, table: RecordTable, record: Any, wanted: set[date]) -> None:
        s = self.settings
        if not isinstance(record, Mapping):
            raise self._bad_data(f"a record is {type(record).__name__}, not an object")
        record_id = _value(record.get("$id")) or "?"
        where = f"record {record_id}"
        try:
            stamp = self._field(record, s.date_field, where)
            if stamp in (None, ""):
                table.problems.add(where, f"field {s.date_field!r} is empty")
                return
            period = period_of(stamp, s.granularity, self.context.timezone)
            labels = tuple(
                (name, self._label(self._field(record, code, where), code))
                for name, code in s.labels.items()
            )
            values = {m.field: self._field(record, m.field, where) for m in s.metrics if m.field}
        except ValueError as exc:
            table.problems.add(where, str(exc))
            return
        if period not in wanted:
            # The query bounds the date field; a record outside means the field's type is not
            # what date_field_type says (a DATETIME read as a DATE or the other way round).
            raise self._bad_data(
                f"{where} has {s.date_field} {excerpt(stamp)}, outside the dates asked for",
                hint=f"check date_field_type ({s.date_field_type}) against the field's type",
            )
        table.add(where, period, labels, values)

    def _field(self, record: Mapping[str, Any], code: str, where: str) -> Any:
        cell = record.get(code)
        if not isinstance(cell, Mapping) or "value" not in cell:
            present = ", ".join(sorted(k for k in record if k != "$id")[:12])
            raise SourceDataError(
                self.context.source_id,
                f"{where} has no field {code!r} (fields present: {present or 'none'})",
                where=self._app,
                hint=f"the field code may have been changed in app {self.settings.app}'s form "
                "settings, or the credentials may not see the field; update the settings",
            )
        return cell["value"]

    @staticmethod
    def _label(value: Any, code: str) -> str:
        if isinstance(value, Mapping):  # a user, organisation or group: {"code", "name"}
            value = value.get("name") or value.get("code")
        if isinstance(value, list):
            if len(value) != 1:
                raise ValueError(
                    f"field {code!r} holds {len(value)} values (a CHECK_BOX or multi-choice "
                    "field); a label needs a single-value field"
                )
            return KintoneConnector._label(value[0], code)
        return "" if value is None else str(value).strip()

    # -- reading records -------------------------------------------------------------------

    def _records(self, query: str) -> Generator[Any, None, None]:
        s = self.settings
        fields = self._fields()
        base: dict[str, Any] = {"app": s.app}
        base.update({f"fields[{i}]": code for i, code in enumerate(fields)})
        offset = 0
        while True:
            params = {
                **base,
                "query": f"{query} order by $id asc limit {s.page_size} offset {offset}",
            }
            if offset == 0:
                params["totalCount"] = "true"
            page = self._call("GET", "records.json", params=params)
            records = self._list(page, "records")
            if offset == 0:
                total = _count(page.get("totalCount"))
                if total is not None and total > MAX_OFFSET + s.page_size:
                    log.info(
                        "source %r: %s has %d matching records: reading them by cursor",
                        self.context.source_id,
                        self._app,
                        total,
                    )
                    yield from self._cursor(query, fields)
                    return
            yield from records
            offset += s.page_size
            if len(records) < s.page_size or offset > MAX_OFFSET:
                return

    def _cursor(self, query: str, fields: list[str]) -> Iterator[Any]:
        s = self.settings
        created = self._call(
            "POST",
            "records/cursor.json",
            json={
                "app": s.app,
                "fields": fields,
                "query": f"{query} order by $id asc",
                "size": s.page_size,
            },
        )
        cursor = created.get("id")
        if not isinstance(cursor, str) or not cursor:
            raise self._bad_data("the new cursor has no id")
        finished = False
        try:
            while not finished:
                page = self._call("GET", "records/cursor.json", params={"id": cursor})
                records = self._list(page, "records")
                finished = page.get("next") is not True
                yield from records
        finally:
            # A cursor read to its end is gone; one left early (an error, a stopped run) holds
            # one of the domain's 10 until it expires: free it.
            if not finished:
                self._delete_cursor(cursor)

    def _delete_cursor(self, cursor: str) -> None:
        try:
            self._call("DELETE", "records/cursor.json", json={"id": cursor})
        except SourceError as exc:  # never hide the error that got us here
            log.warning(
                "source %r: could not delete a kintone cursor (it expires in 10 minutes): %s",
                self.context.source_id,
                exc,
            )

    def _call(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        json: Any = None,
    ) -> Mapping[str, Any]:
        url = f"{self._api}/{path}"
        response = self.client.request(
            method, url, params=params, json=json, passthrough=(400, 401, 403, 404, 520)
        )
        where = f"{self.client.describe(method, url)} -> {response.status_code}"
        if response.status_code != 200:
            raise self._error(response, where)
        body = self.client.parse_json(response)
        if not isinstance(body, Mapping):
            raise self._bad_data(f"{where}: the answer is not a JSON object")
        return body

    def _error(self, response: requests.Response, where: str) -> SourceError:
        s = self.settings
        try:
            body = response.json()
        except ValueError:
            body = None
        code = str(body.get("code") or "") if isinstance(body, Mapping) else ""
        said = str(body.get("message") or "") if isinstance(body, Mapping) else ""
        request_id = str(body.get("id") or "") if isinstance(body, Mapping) else ""
        for secret in self._secrets:
            said = said.replace(secret, "***")
        said = " ".join(said.split())[:200]
        told = f"{code}: {said}" if code else f"HTTP {response.status_code}"
        if request_id:
            told += f" (kintone request id {request_id[:40]})"
        source = self.context.source_id
        status = response.status_code
        if code in _AUTH_CODES or (status in (401, 403) and not code):
            reason = _AUTH_CODES.get(code, "credentials refused")
            return SourceAuthError(
                source,
                f"{self._app}: {reason}; kintone said {told}",
                where=where,
                hint=self.client.auth_hint,
            )
        if code in _NOT_FOUND_CODES or status == 404:
            return FatalSourceError(
                source,
                f"{self._app} was not found; kintone said {told}",
                where=where,
                hint="check app (the number in the app's URL) and guest_space_id (apps in a guest "
                "space need it)",
            )
        if code in _PASSING_CODES:
            return RetryableSourceError(
                source,
                f"{self._app}: {told}",
                where=where,
                hint="kintone's cursors are busy or expired; the run is retried",
                retry_after=_CURSOR_LIFETIME_SECONDS if code == "GAIA_TM12" else None,
            )
        if status in (401, 403):
            return SourceAuthError(
                source,
                f"{self._app}: access refused; kintone said {told}",
                where=where,
                hint=self.client.auth_hint,
            )
        return FatalSourceError(
            source,
            f"{self._app} refused the request; kintone said {told}",
            where=where,
            hint=f"check query, date_field ({s.date_field}) and the field codes in labels and "
            "metrics against the app's form",
        )

    def _list(self, page: Mapping[str, Any], key: str) -> list[Any]:
        records = page.get(key)
        if not isinstance(records, list):
            raise self._bad_data(f"the answer has no {key!r} list")
        return records

    def _bad_data(self, message: str, hint: str = "") -> SourceDataError:
        return SourceDataError(
            self.context.source_id,
            message,
            where=self._app,
            hint=hint or "the kintone REST API answered something unexpected",
        )


def _value(cell: Any) -> str | None:
    if isinstance(cell, Mapping):
        value = cell.get("value")
        return None if value is None else str(value)
    return None


def _count(value: Any) -> int | None:
    """kintone sends totalCount as a string ("1234"), null when not asked for."""
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _quote(text: str) -> str:
    """A kintone query string literal."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
