"""A fake kintone REST API, built from cybozu developer network's reference (cybozu.dev,
kintone.dev): the parts the connector uses, with kintone's limits and error shapes.

- `GET /k/v1/records.json?app=&query=&fields[0]=..&totalCount=true`: records matching the query,
  each field as `{"type", "value"}` (NUMBER values are strings), only the fields asked for
  (unknown codes in `fields` are left out silently), `totalCount` a string, or null when not
  asked for. The query's `limit` is at most 500 (default 100), `offset` at most 10,000.
- `POST /k/v1/records/cursor.json` `{app, fields, query, size}` (no limit/offset in the query,
  size ≤ 500, default 100) -> `{"id", "totalCount"}`; at most 10 cursors per domain.
  `GET /k/v1/records/cursor.json?id=` -> `{"records", "next"}`; a cursor read to its end is
  gone. `DELETE /k/v1/records/cursor.json` `{id}` -> `{}`.
- `/k/guest/<space>/v1/...` for apps in a guest space.
- Auth: `X-Cybozu-API-Token` (comma-separated tokens allowed) or `X-Cybozu-Authorization`
  (base64 of `login:password`). Errors: `{"code", "id", "message"}`.
- Queries: `field op "value"` with =, !=, >, <, >=, <=, in (...), not in (...), joined by
  and / or with parentheses, then `order by <field> asc|desc`, `limit N`, `offset N`.
"""

from __future__ import annotations

import base64
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from dxkpi.collector.testing import FakeRequest, FakeResponse

DOMAIN_TOKEN = "kt-AppToken-0123456789abcdefghijKLMNOPQ"
LOGIN = "dx-office"
PASSWORD = "pw-Kintone-s3cret-!xyz"
APP = 42
MAX_CURSORS = 10

Condition = Callable[[dict[str, Any]], bool]


def kintone_error(status: int, code: str, message: str) -> FakeResponse:
    return FakeResponse(status, {"code": code, "id": uuid.uuid4().hex[:20], "message": message})


class QueryError(Exception):
    def __init__(self, response: FakeResponse) -> None:
        self.response = response


_TOKEN = re.compile(
    r'\s*(?:(?P<string>"(?:[^"\\]|\\.)*")|(?P<op>>=|<=|!=|=|<|>|\(|\)|,)|(?P<word>[^\s()=<>!,"]+))'
)


@dataclass
class Query:
    condition: Condition
    order: tuple[str, bool] | None
    limit: int | None
    offset: int | None


class QueryParser:
    """The subset of kintone's query language the connector writes."""

    def __init__(self, text: str, types: dict[str, str]) -> None:
        self.tokens: list[tuple[str, str]] = []
        position = 0
        while position < len(text.rstrip()):
            match = _TOKEN.match(text, position)
            if match is None or match.end() == position:
                raise self._syntax()
            kind = match.lastgroup or ""
            self.tokens.append((kind, match.group(kind)))
            position = match.end()
        self.at = 0
        self.types = types

    def _syntax(self) -> QueryError:
        return QueryError(kintone_error(400, "GAIA_IQ03", "クエリ記法が間違っています。"))

    def peek(self) -> tuple[str, str] | None:
        return self.tokens[self.at] if self.at < len(self.tokens) else None

    def take(self) -> tuple[str, str]:
        token = self.peek()
        if token is None:
            raise self._syntax()
        self.at += 1
        return token

    def word(self, *words: str) -> bool:
        token = self.peek()
        if token and token[0] == "word" and token[1].lower() in words:
            self.at += 1
            return True
        return False

    def parse(self) -> Query:
        condition: Condition = lambda record: True  # noqa: E731
        token = self.peek()
        if token and not (token[0] == "word" and token[1].lower() in ("order", "limit", "offset")):
            condition = self.disjunction()
        order = None
        if self.word("order"):
            if not self.word("by"):
                raise self._syntax()
            name = self.field_code()
            descending = self.word("desc")
            if not descending:
                self.word("asc")
            order = (name, descending)
        limit = self.number() if self.word("limit") else None
        offset = self.number() if self.word("offset") else None
        if self.peek() is not None:
            raise self._syntax()
        return Query(condition, order, limit, offset)

    def number(self) -> int:
        kind, text = self.take()
        if kind != "word" or not text.isdigit():
            raise self._syntax()
        return int(text)

    def field_code(self) -> str:
        kind, code = self.take()
        if kind != "word":
            raise self._syntax()
        if code not in self.types:
            raise QueryError(
                kintone_error(400, "GAIA_IQ11", f"指定したフィールド（{code}）が見つかりません。")
            )
        return code

    def disjunction(self) -> Condition:
        parts = [self.conjunction()]
        while self.word("or"):
            parts.append(self.conjunction())
        return lambda record: any(p(record) for p in parts)

    def conjunction(self) -> Condition:
        parts = [self.term()]
        while self.word("and"):
            parts.append(self.term())
        return lambda record: all(p(record) for p in parts)

    def term(self) -> Condition:
        if self.peek() == ("op", "("):
            self.take()
            inner = self.disjunction()
            if self.take() != ("op", ")"):
                raise self._syntax()
            return inner
        code = self.field_code()
        negated = self.word("not")
        if self.word("in"):
            if self.take() != ("op", "("):
                raise self._syntax()
            values = [self.literal()]
            while self.peek() == ("op", ","):
                self.take()
                values.append(self.literal())
            if self.take() != ("op", ")"):
                raise self._syntax()
            return lambda record: (record.get(code) in values) != negated
        if negated:
            raise self._syntax()
        kind, op = self.take()
        if kind != "op" or op not in ("=", "!=", "<", ">", "<=", ">="):
            raise self._syntax()
        value = self.literal()
        numeric = self.types[code] in ("NUMBER", "CALC", "RECORD_NUMBER", "__ID__")

        def compare(record: dict[str, Any]) -> bool:
            have = record.get(code)
            if have in (None, ""):
                return op == "!=" if value != "" else op == "="
            left: Any = float(have) if numeric else str(have)
            right: Any = float(value) if numeric else value
            return {
                "=": left == right,
                "!=": left != right,
                "<": left < right,
                ">": left > right,
                "<=": left <= right,
                ">=": left >= right,
            }[op]

        return compare

    def literal(self) -> str:
        kind, text = self.take()
        if kind == "string":
            return re.sub(r"\\(.)", r"\1", text[1:-1])
        if kind == "word":
            return text
        raise self._syntax()


@dataclass
class FakeKintone:
    """One kintone domain with one app. `records` hold plain values by field code; `$id` is
    added. `types` gives each field code's kintone type."""

    types: dict[str, str]
    records: list[dict[str, Any]] = field(default_factory=list)
    app: int = APP
    tokens: set[str] = field(default_factory=lambda: {DOMAIN_TOKEN})
    users: dict[str, str] = field(default_factory=lambda: {LOGIN: PASSWORD})
    guest_space: int | None = None
    failures: list[FakeResponse] = field(default_factory=list)
    cursors: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    cursor_sizes: dict[str, int] = field(default_factory=dict)
    deleted_cursors: list[str] = field(default_factory=list)
    queries: list[str] = field(default_factory=list)
    # Fail the n-th GET of a cursor (1-based) with this response, once.
    cursor_failure: tuple[int, FakeResponse] | None = None
    _cursor_gets: int = 0

    def __post_init__(self) -> None:
        self.types = {"$id": "__ID__", **self.types}
        for number, record in enumerate(self.records, start=1):
            record.setdefault("$id", str(number))

    def add(self, **values: Any) -> dict[str, Any]:
        record = {"$id": str(len(self.records) + 1), **values}
        self.records.append(record)
        return record

    def fail(self, *responses: FakeResponse) -> None:
        self.failures.extend(responses)

    # -- serving ---------------------------------------------------------------------------

    def __call__(self, request: FakeRequest) -> FakeResponse:
        if self.failures:
            return self.failures.pop(0)
        prefix = f"/k/guest/{self.guest_space}/v1/" if self.guest_space else "/k/v1/"
        if not request.path.startswith(prefix):
            if request.path.startswith(("/k/v1/", "/k/guest/")):
                return kintone_error(
                    520, "GAIA_SP01", "指定したスペース（id: ?）が見つかりません。"
                )
            return FakeResponse(404, "<html><title>404 Not Found</title></html>")
        refused = self._refused(request)
        if refused is not None:
            return refused
        try:
            return self._route(request, request.path.removeprefix(prefix))
        except QueryError as exc:
            return exc.response

    def _refused(self, request: FakeRequest) -> FakeResponse | None:
        token = request.headers.get("X-Cybozu-API-Token")
        login = request.headers.get("X-Cybozu-Authorization")
        if token is not None:
            if not set(token.split(",")) & self.tokens:
                return kintone_error(520, "GAIA_IA02", "指定したAPIトークンが正しくありません。")
            return None
        if login is not None:
            try:
                name, _, password = base64.b64decode(login).decode().partition(":")
            except ValueError:
                name, password = "", ""
            if self.users.get(name) != password:
                return kintone_error(401, "CB_WA01", "ユーザーのパスワード認証に失敗しました。")
            return None
        return kintone_error(401, "CB_AU01", "ログインしてください。")

    def _route(self, request: FakeRequest, path: str) -> FakeResponse:
        if path == "records.json" and request.method == "GET":
            return self._get_records(request)
        if path == "records/cursor.json":
            if request.method == "POST":
                return self._create_cursor(request.json() or {})
            if request.method == "GET":
                return self._read_cursor(request.arg("id") or "")
            if request.method == "DELETE":
                return self._delete_cursor((request.json() or {}).get("id", ""))
        return kintone_error(404, "CB_NO01", "指定したAPIが見つかりません。")

    def _check_app(self, app: Any) -> FakeResponse | None:
        if str(app) != str(self.app):
            return kintone_error(404, "GAIA_AP01", f"指定したアプリ（id: {app}）が見つかりません。")
        return None

    def _matching(self, text: str) -> tuple[list[dict[str, Any]], Query]:
        self.queries.append(text)
        query = QueryParser(text, self.types).parse()
        found = [r for r in self.records if query.condition(r)]
        if query.order is not None:
            name, descending = query.order
            numeric = self.types[name] in ("NUMBER", "CALC", "__ID__", "RECORD_NUMBER")
            found.sort(
                key=lambda r: float(r.get(name) or 0) if numeric else str(r.get(name) or ""),
                reverse=descending,
            )
        else:  # kintone's default order: newest record first
            found.sort(key=lambda r: int(r["$id"]), reverse=True)
        return found, query

    def _render(self, record: dict[str, Any], fields: list[str] | None) -> dict[str, Any]:
        codes = [c for c in (fields or list(self.types)) if c in self.types]
        out = {}
        for code in codes:
            if code not in record and code != "$id":
                continue  # a field the record lacks (a form changed under the test)
            value = record.get(code)
            kind = self.types[code]
            if kind in ("NUMBER", "CALC") and value is not None:
                value = str(value)
            out[code] = {"type": kind, "value": "" if value is None else value}
        return out

    def _get_records(self, request: FakeRequest) -> FakeResponse:
        bad = self._check_app(request.arg("app"))
        if bad is not None:
            return bad
        fields = [v[0] for k, v in sorted(request.query.items()) if k.startswith("fields[")]
        found, query = self._matching(request.arg("query") or "")
        limit = 100 if query.limit is None else query.limit
        offset = query.offset or 0
        if limit > 500:
            return kintone_error(
                400, "CB_VA01", "入力内容が正しくありません。limit: 500以下である必要があります。"
            )
        if offset > 10_000:
            return kintone_error(
                400,
                "CB_VA01",
                "入力内容が正しくありません。offset: 10000以下である必要があります。",
            )
        total = str(len(found)) if request.arg("totalCount") == "true" else None
        page = [self._render(r, fields or None) for r in found[offset : offset + limit]]
        return FakeResponse(200, {"records": page, "totalCount": total})

    def _create_cursor(self, body: dict[str, Any]) -> FakeResponse:
        bad = self._check_app(body.get("app"))
        if bad is not None:
            return bad
        if len(self.cursors) >= MAX_CURSORS:
            return kintone_error(
                400,
                "GAIA_TM12",
                "作成できるカーソルの上限に達しているため、カーソルを作成できません。",
            )
        size = int(body.get("size") or 100)
        if size > 500:
            return kintone_error(
                400, "CB_VA01", "入力内容が正しくありません。size: 500以下である必要があります。"
            )
        found, query = self._matching(body.get("query") or "")
        if query.limit is not None or query.offset is not None:
            return kintone_error(
                400, "GAIA_IQ26", "カーソルのクエリにlimitとoffsetは指定できません。"
            )
        cursor = str(uuid.uuid4())
        fields = body.get("fields") or None
        self.cursors[cursor] = [self._render(r, fields) for r in found]
        self.cursor_sizes[cursor] = size
        return FakeResponse(200, {"id": cursor, "totalCount": str(len(found))})

    def _read_cursor(self, cursor: str) -> FakeResponse:
        if cursor not in self.cursors:
            return kintone_error(400, "GAIA_CU01", "指定したカーソルが見つかりません。")
        self._cursor_gets += 1
        if self.cursor_failure is not None and self.cursor_failure[0] == self._cursor_gets:
            failure = self.cursor_failure[1]
            self.cursor_failure = None
            return failure
        size = self.cursor_sizes[cursor]
        page, rest = self.cursors[cursor][:size], self.cursors[cursor][size:]
        if rest:
            self.cursors[cursor] = rest
        else:  # read to its end: kintone deletes it
            del self.cursors[cursor]
        return FakeResponse(200, {"records": page, "next": bool(rest)})

    def _delete_cursor(self, cursor: str) -> FakeResponse:
        if cursor not in self.cursors:
            return kintone_error(400, "GAIA_CU01", "指定したカーソルが見つかりません。")
        del self.cursors[cursor]
        self.deleted_cursors.append(cursor)
        return FakeResponse(200, {})
