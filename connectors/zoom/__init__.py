"""Zoom connector: meetings, participants and meeting time per day, optionally per department."""

from connectors.zoom.connector import ZoomConnector, ZoomSettings, duration_seconds

CONNECTOR = ZoomConnector

__all__ = ["CONNECTOR", "ZoomConnector", "ZoomSettings", "duration_seconds"]
