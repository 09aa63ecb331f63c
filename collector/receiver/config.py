"""The `receiver:` section of the config: where it listens, its limits, webhooks and clients.

```yaml
receiver:
  listen: 0.0.0.0:9811
  webhooks:
    - {source: zoom_main, secret: "${ZOOM_WEBHOOK_SECRET_TOKEN}"}   # POST /webhooks/zoom_main
  clients:                                                          # POST /api/v1/observations
    - id: dx_office                       # also the `source` of the figures it pushes
      token_sha256: "${DX_OFFICE_TOKEN_SHA256}"
      metrics:
        - {name: e_application_forms, unit: forms, labels: [municipality]}
```

Secrets (`secret`, `token_sha256`) are `${ENV}` references like every secret; a client's token is
kept only as its SHA-256, so the config never holds a usable credential.
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr

from dxkpi.collector.contract import MetricSpec
from dxkpi.collector.durations import Duration

IDENTIFIER = r"^[a-z][a-z0-9_]*$"
# A source's id: plain, or `<organisation>.<template>` for a source expanded from a template.
QUALIFIED_ID = r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)?$"
SECRET_FIELDS = {"webhooks": "secret", "clients": "token_sha256"}
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class WebhookConfig(_Model):
    # The source whose series the events feed: its connector verifies and reads them with the
    # same settings its pull uses. The URL is /webhooks/<source>.
    source: str = Field(pattern=QUALIFIED_ID)
    secret: SecretStr
    # A signed request older (or newer) than this is refused: a captured one cannot be replayed.
    replay_window: Duration = timedelta(minutes=5)


class PushMetric(_Model):
    name: str = Field(pattern=IDENTIFIER)
    unit: str = Field(min_length=1)
    aggregation: Literal["sum", "last", "none"] = "sum"
    labels: list[str] = Field(default_factory=list)
    help: str = ""

    def spec(self) -> MetricSpec:
        return MetricSpec(
            self.name,
            self.help or f"{self.name} (pushed)",
            self.unit,
            tuple(self.labels),
            self.aggregation,
        )


class ClientConfig(_Model):
    id: str = Field(pattern=IDENTIFIER)
    token_sha256: SecretStr
    metrics: list[PushMetric] = Field(min_length=1)


class RateLimit(_Model):
    # A token bucket per remote address: `per_second` sustained, `burst` at once.
    per_second: float = Field(default=1000.0, gt=0)
    burst: int = Field(default=2000, ge=1)


class ReceiverConfig(_Model):
    listen: str = "127.0.0.1:9811"
    # Larger bodies are refused (413) before they are read whole.
    max_body_bytes: int = Field(default=1_048_576, ge=1024)
    # Waitress worker threads: requests handled at once (a slow client holds none). Each waits
    # on the commit of its event's batch, so more threads make larger batches: 32 take several
    # hundred events a second on two cores (bench/, receiver).
    threads: int = Field(default=32, ge=1, le=256)
    # Rows in one push request (a request is stored whole or not at all).
    max_rows: int = Field(default=10_000, ge=1)
    rate_limit: RateLimit = RateLimit()
    # The address of the TLS reverse proxy in front (or "*"): its X-Forwarded-For then names the
    # caller, so the rate limit is per caller rather than one bucket for the proxy.
    trusted_proxy: str | None = None
    webhooks: list[WebhookConfig] = Field(default_factory=list)
    clients: list[ClientConfig] = Field(default_factory=list)


def check_receiver(loaded: Any, raw: dict[str, Any], problem: Any) -> None:
    """What the schema cannot see: secrets written inline, token hashes that are not SHA-256,
    webhooks of unknown sources or of connectors without webhooks, and client ids that clash
    with sources. Declares each client's metrics (as its source's) for the KPI checks."""
    from dxkpi.collector.registry import load_webhook

    receiver: ReceiverConfig = loaded.config.receiver
    raw_receiver = raw.get("receiver") or {}
    for section, key in SECRET_FIELDS.items():
        for i, item in enumerate(raw_receiver.get(section) or []):
            value = item.get(key) if isinstance(item, dict) else None
            if value is not None and not re.match(r"^\$\{[A-Za-z_][A-Za-z0-9_]*\}$", str(value)):
                problem(
                    f"receiver.{section}[{i}].{key}",
                    "secrets are never written inline: put the value in an environment "
                    "variable and write `${VAR_NAME}` here",
                )
    sources = {s.id: s for s in loaded.config.sources}
    for i, hook in enumerate(receiver.webhooks):
        where = f"receiver.webhooks[{i}].source"
        source = sources.get(hook.source)
        if source is None:
            problem(where, f"no source {hook.source!r}; a webhook feeds a configured source")
            continue
        if load_webhook(source.connector) is None:
            problem(where, f"connector {source.connector!r} takes no webhooks")
    if len({h.source for h in receiver.webhooks}) != len(receiver.webhooks):
        problem("receiver.webhooks", "a source has two webhooks")
    seen: set[str] = set()
    for i, client in enumerate(receiver.clients):
        where = f"receiver.clients[{i}]"
        if client.id in sources or client.id in seen:
            problem(f"{where}.id", f"{client.id!r} is already a source or client id")
        seen.add(client.id)
        if not _SHA256.match(client.token_sha256.get_secret_value().strip().lower()):
            problem(
                f"{where}.token_sha256",
                "must be the token's SHA-256 in hex (64 characters): "
                'printf %s "$TOKEN" | sha256sum',
            )
        loaded.metric_specs[client.id] = {m.name: m.spec() for m in client.metrics}
