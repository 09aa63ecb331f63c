"""Google service account key files: the JSON the Cloud console downloads, which holds the
account's private key. Errors say what is wrong with a file and never quote it."""

from __future__ import annotations

import json
from typing import Any


def service_account_info(text: str, where: str) -> dict[str, Any]:
    """The parsed key file, with the fields a JWT-bearer token needs (client_email,
    private_key); otherwise ValueError naming `where` (a setting or a path) and the problem."""
    try:
        info = json.loads(text)
    except ValueError:
        raise ValueError(f"{where} is not JSON: paste the whole key file") from None
    if not isinstance(info, dict):
        raise ValueError(f"{where} is not a service account key file")
    missing = [k for k in ("client_email", "private_key") if not info.get(k)]
    if missing:
        raise ValueError(f"{where} lacks {', '.join(missing)}: use a service account JSON key")
    return info
