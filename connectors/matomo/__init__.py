"""Matomo connector: visits and page views per day from a self-hosted Matomo."""

from dxkpi.connectors.matomo.connector import MatomoConnector, MatomoSettings

CONNECTOR = MatomoConnector

__all__ = ["CONNECTOR", "MatomoConnector", "MatomoSettings"]
