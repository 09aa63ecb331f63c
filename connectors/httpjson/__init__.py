"""httpjson: figures from any JSON endpoint, extracted with JMESPath (see README.md)."""

from connectors.httpjson.connector import HttpJsonConnector
from connectors.httpjson.settings import HttpJsonSettings

CONNECTOR = HttpJsonConnector

__all__ = ["CONNECTOR", "HttpJsonConnector", "HttpJsonSettings"]
