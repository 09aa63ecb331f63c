"""kintone: figures kept in a kintone app's records, through the REST API (see README.md)."""

from dxkpi.connectors.kintone.connector import KintoneConnector
from dxkpi.connectors.kintone.settings import KintoneSettings

CONNECTOR = KintoneConnector

__all__ = ["CONNECTOR", "KintoneConnector", "KintoneSettings"]
