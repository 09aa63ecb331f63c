"""Code the Google connectors (ga4, googleplay) share. Not a connector: the registry skips
folders whose name starts with "_"."""

from dxkpi.connectors._google.service_account import service_account_info

__all__ = ["service_account_info"]
