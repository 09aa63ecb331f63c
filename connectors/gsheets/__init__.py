"""gsheets: KPI figures from a range of a Google Sheets spreadsheet (see README.md)."""

from dxkpi.connectors.gsheets.connector import GsheetsConnector, GsheetsSettings

CONNECTOR = GsheetsConnector

__all__ = ["CONNECTOR", "GsheetsConnector", "GsheetsSettings"]
