"""Code the Google connectors (ga4, googleplay, gsheets) share. Not a connector: the registry
skips folders whose name starts with "_"."""

from dxkpi.connectors._google.service_account import (
    ServiceAccountSettings,
    load_key,
    service_account_info,
)

__all__ = ["ServiceAccountSettings", "load_key", "service_account_info"]
