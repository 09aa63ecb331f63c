"""Scrubbing of secrets from text that may reach logs, errors or metrics."""

from __future__ import annotations

import re
from collections.abc import Iterable

_URL_PASSWORD = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://[^:/@\s]*):[^@/\s]+@")


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """Mask passwords in URLs (`scheme://user:***@host`) and every given secret value."""
    text = _URL_PASSWORD.sub(r"\g<scheme>:***@", text)
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, "***")
    return text
