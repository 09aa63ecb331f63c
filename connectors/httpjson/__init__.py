"""httpjson: figures from any JSON endpoint, extracted with JMESPath (see README.md)."""

from dxkpi.connectors.httpjson.connector import HttpJsonConnector
from dxkpi.connectors.httpjson.settings import HttpJsonSettings

CONNECTOR = HttpJsonConnector

__all__ = ["CONNECTOR", "HttpJsonConnector", "HttpJsonSettings"]
