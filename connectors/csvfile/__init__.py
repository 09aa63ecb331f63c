"""csvfile: KPI figures from CSV and .xlsx files, including RPA run logs (see README.md)."""

from dxkpi.connectors.csvfile.connector import CsvFileConnector
from dxkpi.connectors.csvfile.upload import parse_upload

CONNECTOR = CsvFileConnector

# How the push API reads an uploaded CSV (collector/events.py, UploadParser).
UPLOAD = parse_upload

__all__ = ["CONNECTOR", "UPLOAD", "CsvFileConnector", "parse_upload"]
