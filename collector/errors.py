"""Every error dxkpi raises on purpose, sorted by what the caller should do.

    DxkpiError
    ├── ConfigError              the config file is wrong: every problem with file:line
    ├── UnknownConnectorError    a source names a connector that is not installed
    └── SourceError              a source failed; carries the source id and the request or file
        ├── RetryableSourceError     try again later (timeouts, 429, 5xx, connection resets)
        └── FatalSourceError         retrying will not help; a person must act
            ├── SourceAuthError          credentials refused or expired beyond refresh
            └── SourceDataError          data we cannot parse (bad file, schema change)

Messages never contain a secret: connectors build them from the request's method, path and
status, never from headers, query strings with keys, or bodies that echo credentials. What a
message quotes from data (a cell, a body's first bytes) goes through `excerpt`: short and escaped.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

EXCERPT_LIMIT = 32


def excerpt(value: object, limit: int = EXCERPT_LIMIT) -> str:
    """A short, escaped, quoted piece of data for an error message: at most `limit` characters
    of it, control characters escaped, `…` when cut. Data may be anything a file or a server
    holds (a token, a whole environment), so a message never quotes more than this."""
    text = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
    cut = len(text) > limit
    quoted = repr(text[:limit])
    return f"{quoted}… ({len(text)} characters)" if cut else quoted


class DxkpiError(Exception):
    """Base class of every error dxkpi raises on purpose."""


@dataclass(frozen=True)
class ConfigProblem:
    """One thing wrong in a config file, with where it is and what to do."""

    file: str
    line: int | None
    path: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"


class ConfigError(DxkpiError):
    def __init__(self, problems: list[ConfigProblem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


class UnknownConnectorError(DxkpiError):
    def __init__(self, name: str, known: list[str]) -> None:
        self.name = name
        self.known = known
        close = difflib.get_close_matches(name, known, n=1)
        super().__init__(
            f"unknown connector {name!r}: "
            + (f"did you mean {close[0]!r}? " if close else "did you spell that correctly? ")
            + f"Known connectors: {', '.join(sorted(known)) or '(none)'}"
        )


class SourceError(DxkpiError):
    """A source failed. `where` is the request (``GET /v2/report/daily -> 500``) or file:line."""

    retryable = False

    def __init__(self, source_id: str, message: str, *, where: str = "", hint: str = "") -> None:
        self.source_id = source_id
        self.message = message
        self.where = where
        self.hint = hint
        # The source's organisation, set by the runner (connectors do not know it).
        self.org: str | None = None
        super().__init__(self._text())

    def _text(self) -> str:
        who = f"source {self.source_id!r}"
        if self.org:
            who += f" (organisation {self.org!r})"
        text = ": ".join([who, *([self.where] if self.where else []), self.message])
        return f"{text} ({self.hint})" if self.hint else text

    def __str__(self) -> str:
        return self._text()


class RetryableSourceError(SourceError):
    """Transient: the same call may succeed later; `retry_after` is the source's own wait."""

    retryable = True

    def __init__(
        self,
        source_id: str,
        message: str,
        *,
        where: str = "",
        hint: str = "",
        retry_after: float | None = None,
    ) -> None:
        super().__init__(source_id, message, where=where, hint=hint)
        self.retry_after = retry_after


class FatalSourceError(SourceError):
    """Retrying will not help: bad config, refused credentials, unparseable data."""


class SourceAuthError(FatalSourceError):
    """The source refused our credentials (after one token refresh)."""


class SourceDataError(FatalSourceError):
    """The source's data cannot be parsed; nothing from it was stored."""
