"""UiPath Orchestrator connector: robot runs and manual time saved per process per day."""

from connectors.uipath._connector import UiPathConnector, UiPathSettings

CONNECTOR = UiPathConnector

__all__ = ["CONNECTOR", "UiPathConnector", "UiPathSettings"]
