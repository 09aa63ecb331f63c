"""sql: KPI figures from a read-only SELECT against an organisation's own database (README.md)."""

from dxkpi.connectors.sql.connector import SqlConnector

CONNECTOR = SqlConnector

__all__ = ["CONNECTOR", "SqlConnector"]
