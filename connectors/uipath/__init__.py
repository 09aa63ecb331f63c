"""UiPath Orchestrator connector: robot runs and manual time saved per process per day."""

from dxkpi.connectors.uipath._connector import UiPathConnector, UiPathSettings
from dxkpi.connectors.uipath.webhook import UiPathWebhook

CONNECTOR = UiPathConnector

# The handler of its vendor's webhooks (collector/events.py): the receiver finds it here.
WEBHOOK = UiPathWebhook

__all__ = ["CONNECTOR", "WEBHOOK", "UiPathConnector", "UiPathSettings", "UiPathWebhook"]
