"""Google Analytics 4 connector: page views (optionally per page) and active users per day."""

from dxkpi.connectors.ga4.connector import Ga4Connector, Ga4Settings

CONNECTOR = Ga4Connector

__all__ = ["CONNECTOR", "Ga4Connector", "Ga4Settings"]
