"""csvfile: KPI figures from CSV and .xlsx files, including RPA run logs (see README.md)."""

from connectors.csvfile.connector import CsvFileConnector

CONNECTOR = CsvFileConnector

__all__ = ["CONNECTOR", "CsvFileConnector"]
