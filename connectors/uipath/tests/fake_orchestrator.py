"""A fake UiPath Automation Cloud: identity token endpoint and Orchestrator `GET /odata/Jobs`,
built from UiPath's public docs.

- "External Applications (OAuth)": `POST /{org}/identity_/connect/token` with the form
  `grant_type=client_credentials&client_id=&client_secret=&scope=` answers
  `{"access_token", "expires_in": 3600, "token_type": "Bearer", "scope"}`, or 400
  `{"error": "invalid_client" | "invalid_scope"}`.
- Orchestrator API guide, "Jobs requests" and "Building API requests": OData v4 on
  `/{org}/{tenant}/orchestrator_/odata/Jobs` with `$filter`, `$select`, `$orderby`, `$top`,
  `$skip`, `$count=true` (-> `@odata.count`); folder-scoped entities need the header
  `X-UIPATH-OrganizationUnitId`. Errors are `{"message", "errorCode", "traceId"}`: 401 "You are
  not authenticated!", 403 "You are not authorized!", 400 errorCode 1101 without a folder.
- "Rate limits": 100 `GET /odata/Jobs` per minute per tenant, 429 with `Retry-After` beyond it.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from dxkpi.collector.testing import FakeRequest, FakeResponse

TESTDATA = Path(__file__).parent / "testdata"
FOLDER_HEADER = "X-UIPATH-OrganizationUnitId"
MAX_TOP = 1000


def recorded_jobs() -> list[dict[str, Any]]:
    """Jobs as GET /odata/Jobs returns them (no $select), with the folder they belong to."""
    data: list[dict[str, Any]] = json.loads((TESTDATA / "jobs.json").read_text(encoding="utf-8"))
    return data


def job(job_id: int, process: str, state: str, end: str, folder: int = 201) -> dict[str, Any]:
    """A job in Orchestrator's shape; `end` is an ISO time in UTC ending with Z."""
    return {
        "Key": str(uuid.UUID(int=job_id)),
        "StartTime": end,
        "EndTime": end,
        "State": state,
        "JobPriority": "Normal",
        "Source": "Manual",
        "SourceType": "Manual",
        "BatchExecutionKey": str(uuid.UUID(int=job_id + 1)),
        "Info": "Job completed" if state == "Successful" else "Job stopped",
        "CreationTime": end,
        "StartingScheduleId": None,
        "ReleaseName": process,
        "Type": "Unattended",
        "HostMachineName": "RPA-VM-01",
        "OrganizationUnitId": folder,
        "Id": job_id,
    }


def orchestrator_error(status: int, message: str, code: int = 0) -> FakeResponse:
    body = {"message": message, "errorCode": code, "traceId": uuid.uuid4().hex}
    return FakeResponse(status, body)


@dataclass
class FakeOrchestrator:
    """One organization/tenant with its jobs; `handle` is the loopback handler.

    `script` answers the next Jobs requests (after auth) to inject failures. `clock` drives token
    expiry and the rate limit; tests share it with the connector so waits move both.
    """

    jobs: list[dict[str, Any]] = field(default_factory=recorded_jobs)
    organization: str = "pref-example"
    tenant: str = "DefaultTenant"
    client_id: str = "6f2c1f7a-1d1b-4c1e-9a4e-2b0b7f4c9d10"
    client_secret: str = "zQ8!sample-app-secret-value"
    scopes: frozenset[str] = frozenset({"OR.Jobs.Read", "OR.Jobs", "OR.Folders.Read"})
    folders: frozenset[int] = frozenset({201, 202})
    token_lifetime: int = 3600
    rate_limit: int = 100
    script: list[FakeResponse] = field(default_factory=list)
    clock: Callable[[], float] = time.time
    tokens: dict[str, float] = field(default_factory=dict)
    token_forms: list[dict[str, str]] = field(default_factory=list)
    jobs_requests: deque[float] = field(default_factory=deque)
    throttled: int = 0

    @property
    def jobs_path(self) -> str:
        return f"/{self.organization}/{self.tenant}/orchestrator_/odata/Jobs"

    def handle(self, request: FakeRequest) -> FakeResponse:
        if request.path == f"/{self.organization}/identity_/connect/token":
            return self._token(request)
        if request.path != self.jobs_path or request.method != "GET":
            return orchestrator_error(404, "Not Found")
        if not self._authenticated(request.headers.get("Authorization", "")):
            return orchestrator_error(401, "You are not authenticated!")
        limited = self._rate_limited()
        if limited is not None:
            return limited
        if self.script:
            return self.script.pop(0)
        folder = request.headers.get(FOLDER_HEADER)
        if folder is None:
            return orchestrator_error(400, "A folder is required for this action.", 1101)
        if not folder.isdigit() or int(folder) not in self.folders:
            return orchestrator_error(
                400, "Folder does not exist or the user does not have access to the folder.", 1100
            )
        return self._jobs(request, int(folder))

    # -- identity --------------------------------------------------------------------------

    def _token(self, request: FakeRequest) -> FakeResponse:
        form = {k: v[0] for k, v in request.form().items()}
        self.token_forms.append(form)
        if form.get("grant_type") != "client_credentials":
            return FakeResponse(400, {"error": "unsupported_grant_type"})
        if (
            form.get("client_id") != self.client_id
            or form.get("client_secret") != self.client_secret
        ):
            return FakeResponse(400, {"error": "invalid_client"})
        asked = set(form.get("scope", "").split())
        if not asked or not asked <= self.scopes:
            return FakeResponse(400, {"error": "invalid_scope"})
        token = f"eyJ.fake.{uuid.uuid4().hex}"
        self.tokens[token] = self.clock() + self.token_lifetime
        body = {
            "access_token": token,
            "expires_in": self.token_lifetime,
            "token_type": "Bearer",
            "scope": " ".join(sorted(asked)),
        }
        return FakeResponse(200, body)

    def _authenticated(self, authorization: str) -> bool:
        expires = self.tokens.get(authorization.removeprefix("Bearer "))
        return expires is not None and self.clock() < expires

    def expire_tokens(self) -> None:
        self.tokens = dict.fromkeys(self.tokens, 0.0)

    def _rate_limited(self) -> FakeResponse | None:
        now = self.clock()
        while self.jobs_requests and self.jobs_requests[0] <= now - 60:
            self.jobs_requests.popleft()
        if len(self.jobs_requests) >= self.rate_limit:
            self.throttled += 1
            wait = int(self.jobs_requests[0] + 60 - now) + 1
            response = orchestrator_error(429, "Too many requests. Please retry later.", 1015)
            response.headers["Retry-After"] = str(wait)
            return response
        self.jobs_requests.append(now)
        return None

    # -- OData -------------------------------------------------------------------------------

    def _jobs(self, request: FakeRequest, folder: int) -> FakeResponse:
        try:
            top = int(request.arg("$top") or MAX_TOP)
            skip = int(request.arg("$skip") or 0)
            if top > MAX_TOP:
                raise ValueError(f"The limit of {MAX_TOP} for the top query has been exceeded.")
            matches = compile_filter(request.arg("$filter") or "")
        except ValueError as exc:
            return orchestrator_error(400, f"The query specified in the URI is not valid. {exc}")
        rows = [j for j in self.jobs if j["OrganizationUnitId"] == folder and matches(j)]
        order = (request.arg("$orderby") or "Id asc").split()
        rows.sort(key=lambda j: j[order[0]], reverse=order[-1] == "desc")
        page = rows[skip : skip + top]
        select = request.arg("$select")
        if select:
            names = [n.strip() for n in select.split(",")]
            page = [{n: j.get(n) for n in names} for j in page]
        body: dict[str, Any] = {
            "@odata.context": f"https://cloud.uipath.com{self.jobs_path.rsplit('/', 1)[0]}"
            "/$metadata#Jobs",
            "value": page,
        }
        if request.arg("$count") == "true":
            body["@odata.count"] = len(rows)
        return FakeResponse(200, body)


# A minimal OData v4 $filter: comparisons joined by `and`/`or`, with parentheses. Enough for
# what Orchestrator clients send: `EndTime ge 2026-11-01T00:00:00Z and (State eq 'Faulted')`.
_TOKEN = re.compile(r"\s*(\(|\)|'(?:[^']|'')*'|[^\s()]+)")


def compile_filter(text: str) -> Callable[[dict[str, Any]], bool]:
    tokens = _TOKEN.findall(text)
    position = 0

    def peek() -> str | None:
        return tokens[position] if position < len(tokens) else None

    def take() -> str:
        nonlocal position
        if position >= len(tokens):
            raise ValueError("unexpected end of $filter")
        position += 1
        return str(tokens[position - 1])

    def expression() -> Callable[[dict[str, Any]], bool]:
        parts = [conjunction()]
        while peek() == "or":
            take()
            parts.append(conjunction())
        return lambda row: any(p(row) for p in parts)

    def conjunction() -> Callable[[dict[str, Any]], bool]:
        parts = [comparison()]
        while peek() == "and":
            take()
            parts.append(comparison())
        return lambda row: all(p(row) for p in parts)

    def comparison() -> Callable[[dict[str, Any]], bool]:
        if peek() == "(":
            take()
            inner = expression()
            if take() != ")":
                raise ValueError("unbalanced parentheses in $filter")
            return inner
        name, op, raw = take(), take(), take()
        if op not in _OPERATORS:
            raise ValueError(f"unknown operator {op!r} in $filter")
        value = _literal(raw)
        compare = _OPERATORS[op]
        return lambda row: compare(_comparable(row.get(name), value), value)

    if not tokens:
        return lambda row: True
    predicate = expression()
    if position != len(tokens):
        raise ValueError(f"unexpected {tokens[position]!r} in $filter")
    return predicate


_OPERATORS: dict[str, Callable[[Any, Any], bool]] = {
    "eq": lambda a, b: a == b,
    "ne": lambda a, b: a != b,
    "gt": lambda a, b: a is not None and a > b,
    "ge": lambda a, b: a is not None and a >= b,
    "lt": lambda a, b: a is not None and a < b,
    "le": lambda a, b: a is not None and a <= b,
}


def _literal(raw: str) -> Any:
    if raw.startswith("'"):
        return raw[1:-1].replace("''", "'")
    if raw == "null":
        return None
    if re.fullmatch(r"\d{4}-\d{2}-\d{2}T[\d:.]+(Z|[+-]\d{2}:\d{2})", raw):
        return datetime.fromisoformat(raw)
    if re.fullmatch(r"-?\d+(\.\d+)?", raw):
        return float(raw)
    raise ValueError(f"cannot read the literal {raw!r} (strings need single quotes)")


def _comparable(field_value: Any, literal: Any) -> Any:
    if isinstance(literal, datetime) and isinstance(field_value, str):
        return datetime.fromisoformat(field_value)
    return field_value
