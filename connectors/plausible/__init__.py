"""Plausible connector: page views and visitors per day from Plausible Analytics."""

from dxkpi.connectors.plausible.connector import PlausibleConnector, PlausibleSettings

CONNECTOR = PlausibleConnector

__all__ = ["CONNECTOR", "PlausibleConnector", "PlausibleSettings"]
