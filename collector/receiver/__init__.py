"""The receiver: vendor webhooks and the push API, stored durably before the 2xx.

`config` (the `receiver:` section of the YAML), `push` (reading pushed figures), `app` (the WSGI
application: routes, limits, self-metrics), `serve` (waitress). Vendor-specific verification and
mapping live in each connector's `webhook.py` behind `dxkpi.collector.events.WebhookHandler`.
"""
