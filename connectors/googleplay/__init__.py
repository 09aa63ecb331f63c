"""Google Play connector: daily first-time downloads and uninstalls from the installs reports."""

from dxkpi.connectors.googleplay._connector import GooglePlayConnector, GooglePlaySettings

CONNECTOR = GooglePlayConnector

__all__ = ["CONNECTOR", "GooglePlayConnector", "GooglePlaySettings"]
