"""Zoom connector: meetings, participants and meeting time per day, optionally per department."""

from dxkpi.connectors.zoom.connector import ZoomConnector, ZoomSettings, duration_seconds
from dxkpi.connectors.zoom.webhook import ZoomWebhook

CONNECTOR = ZoomConnector

# The handler of its vendor's webhooks (collector/events.py): the receiver finds it here.
WEBHOOK = ZoomWebhook

__all__ = [
    "CONNECTOR",
    "WEBHOOK",
    "ZoomConnector",
    "ZoomSettings",
    "ZoomWebhook",
    "duration_seconds",
]
