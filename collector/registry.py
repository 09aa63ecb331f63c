"""Finds connectors by name: built-in ones by folder under `connectors/`, others by entry point.

Folders starting with "_" hold code shared by several connectors and are not connectors.

Nothing is imported until a connector is asked for, so a broken connector only breaks the
sources that use it.
"""

from __future__ import annotations

import importlib
import pkgutil
from functools import cache
from importlib.metadata import entry_points
from typing import Any

from dxkpi.collector.contract import Connector
from dxkpi.collector.errors import UnknownConnectorError
from dxkpi.collector.events import AnyWebhookHandler, UploadParser, WebhookHandler

BUILTIN_PACKAGE = "dxkpi.connectors"
ENTRY_POINT_GROUP = "dxkpi.connectors"


def _builtin_names() -> list[str]:
    try:
        package = importlib.import_module(BUILTIN_PACKAGE)
    except ImportError:
        return []
    return [
        m.name
        for m in pkgutil.iter_modules(package.__path__)
        if m.ispkg and not m.name.startswith("_")
    ]


def known_connectors() -> list[str]:
    names = set(_builtin_names())
    names.update(ep.name for ep in entry_points(group=ENTRY_POINT_GROUP))
    return sorted(names)


@cache
def load_connector(name: str) -> type[Connector]:  # type: ignore[type-arg]
    """Return the connector class registered under `name`, or raise UnknownConnectorError."""
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name == name:
            cls = ep.load()
            break
    else:
        if name not in _builtin_names():
            raise UnknownConnectorError(name, known_connectors())
        module = importlib.import_module(f"{BUILTIN_PACKAGE}.{name}")
        cls = getattr(module, "CONNECTOR", None)
    if not (isinstance(cls, type) and issubclass(cls, Connector)):
        raise TypeError(
            f"connector {name!r}: its package must set CONNECTOR to a subclass of "
            "dxkpi.collector.contract.Connector"
        )
    return cls


@cache
def load_webhook(name: str) -> type[AnyWebhookHandler] | None:
    """The webhook handler class a connector's package sets as `WEBHOOK`, or None when it takes
    no webhooks."""
    connector = load_connector(name)  # the same errors for an unknown name
    module = importlib.import_module(
        connector.__module__.rpartition(".")[0] or connector.__module__
    )
    handler = getattr(module, "WEBHOOK", None)
    if handler is None:
        return None
    if not (isinstance(handler, type) and issubclass(handler, WebhookHandler)):
        raise TypeError(
            f"connector {name!r}: WEBHOOK must be a subclass of "
            "dxkpi.collector.events.WebhookHandler"
        )
    return handler


@cache
def load_upload(name: str) -> UploadParser | None:
    """The upload parser a connector's package sets as `UPLOAD`, or None."""
    parser: UploadParser | None = _package_attribute(name, "UPLOAD")
    return parser


def _package_attribute(name: str, attribute: str) -> Any:
    """An attribute of the package of connector `name` (None if it has none)."""
    connector = load_connector(name)  # the same errors for an unknown name
    package = connector.__module__.rpartition(".")[0] or connector.__module__
    return getattr(importlib.import_module(package), attribute, None)
