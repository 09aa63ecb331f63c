"""App Store Connect connector: first-time downloads and updates per app per day."""

from dxkpi.connectors.appstore._connector import AppStoreConnector, AppStoreSettings

CONNECTOR = AppStoreConnector

__all__ = ["CONNECTOR", "AppStoreConnector", "AppStoreSettings"]
