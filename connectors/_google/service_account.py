"""Google service account key files: the JSON the Cloud console downloads, which holds the
account's private key. Errors say what is wrong with a file and never quote it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import Field, SecretStr, model_validator

from dxkpi.collector.contract import ConnectorSettings, SourceContext
from dxkpi.collector.errors import FatalSourceError


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


class ServiceAccountSettings(ConnectorSettings):
    """The settings of a connector that signs in as a Google service account."""

    # The service account's JSON key: its contents (from ${ENV}) or a file path.
    service_account_json: SecretStr | None = None
    service_account_file: str | None = None
    token_uri: str | None = Field(default=None, pattern=r"^https?://")

    @model_validator(mode="after")
    def _one_key(self) -> ServiceAccountSettings:
        if (self.service_account_json is None) == (self.service_account_file is None):
            raise ValueError("give exactly one of service_account_json or service_account_file")
        if self.service_account_json is not None:
            service_account_info(
                self.service_account_json.get_secret_value(), "service_account_json"
            )
        return self


def load_key(settings: ServiceAccountSettings, context: SourceContext) -> dict[str, Any]:
    """The key file's JSON, from the setting or the file (relative to the config's folder);
    FatalSourceError when the file cannot be read or is not a key."""
    if settings.service_account_json is not None:
        return service_account_info(
            settings.service_account_json.get_secret_value(), "service_account_json"
        )
    path = Path(settings.service_account_file or "")
    path = path if path.is_absolute() else context.base_dir / path
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise FatalSourceError(
            context.source_id,
            f"cannot read the service account key file {path} ({exc.strerror})",
            hint="check settings.service_account_file and the file's permissions",
        ) from None
    try:
        return service_account_info(text, str(path))
    except ValueError as exc:
        raise FatalSourceError(context.source_id, str(exc)) from None
