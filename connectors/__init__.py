"""Built-in connectors: one folder per source. A folder `connectors/<name>/` whose package
exposes `CONNECTOR` is the connector named `<name>`; nothing else registers it."""
