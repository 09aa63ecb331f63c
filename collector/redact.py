"""Scrubbing of secrets from text that may reach logs, errors or metrics.

Every secret the process knows (each source's `SecretStr` settings and `${ENV}` values, the
store's and broker's URL passwords) is registered once, when the runtime is resolved; from then
on `redact` removes all of them from any text, whichever source the text came from (a file
of one source may hold the token of another), and every log record is scrubbed as it is made.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterable
from typing import Any
from urllib.parse import quote, quote_plus

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

_URL_PASSWORD = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://[^:/@\s]*):[^@/\s]+@")
# Shorter values (a port, `true`) are too likely to occur in ordinary text to be masked.
_SHORTEST_SECRET = 4

# Longest first: a secret that contains another is masked whole.
_known: tuple[str, ...] = ()
_lock = threading.Lock()


def _forms(secret: str) -> set[str]:
    # A secret also travels URL-encoded, in a query string or a form body.
    return {secret, quote(secret, safe=""), quote_plus(secret, safe="")}


def register_secrets(secrets: Iterable[str]) -> None:
    """Add secrets that every later `redact` call and log record will mask."""
    global _known
    new = {form for s in secrets if s and len(s) >= _SHORTEST_SECRET for form in _forms(s)}
    with _lock:
        _known = tuple(sorted(new.union(_known), key=len, reverse=True))


def url_password(url: str) -> str | None:
    """The password in a store or broker URL, if it has one."""
    try:
        return make_url(url).password
    except (ArgumentError, ValueError):
        return None


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """Mask passwords in URLs (`scheme://user:***@host`), every registered secret and every
    given one."""
    text = _URL_PASSWORD.sub(r"\g<scheme>:***@", text)
    given = sorted((s for s in secrets if s and len(s) >= _SHORTEST_SECRET), key=len, reverse=True)
    for secret in (*given, *_known):
        text = text.replace(secret, "***")
    return text


_installed = False


def install_log_redaction() -> None:
    """Scrub every log record of this process as it is made, whoever logs it (Celery's "Task
    raised" lines and tracebacks included): the message is formatted and redacted, and so is
    the text of the exception it carries."""
    global _installed
    with _lock:
        if _installed:
            return
        _installed = True
    previous = logging.getLogRecordFactory()
    formatter = logging.Formatter()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        try:
            message = record.getMessage()
        except Exception:  # a bad format string: logging reports it when the record is emitted
            return record
        scrubbed = redact(message)
        if scrubbed != message:
            record.msg, record.args = scrubbed, ()
        if record.exc_info and record.exc_info[1] is not None:
            # Formatters reuse exc_text when it is set: the traceback is written scrubbed.
            record.exc_text = redact(formatter.formatException(record.exc_info))
        return record

    logging.setLogRecordFactory(factory)
