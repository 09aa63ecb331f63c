"""JSON Schema of the config file, for editors (VS Code's YAML extension and the like).

The source `settings` block is described per connector: an if/then on the `connector` name.
"""

from __future__ import annotations

from typing import Any

from dxkpi.collector.config import Config
from dxkpi.collector.registry import known_connectors, load_connector


def config_schema() -> dict[str, Any]:
    schema = Config.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "dxkpi configuration"
    defs = schema.setdefault("$defs", {})
    rules = []
    for name in known_connectors():
        settings_schema = load_connector(name).settings_model.model_json_schema(
            ref_template="#/$defs/{model}"
        )
        for def_name, definition in settings_schema.pop("$defs", {}).items():
            defs.setdefault(def_name, definition)
        key = f"{name}_settings"
        defs[key] = settings_schema
        rules.append(
            {
                "if": {"properties": {"connector": {"const": name}}},
                "then": {"properties": {"settings": {"$ref": f"#/$defs/{key}"}}},
            }
        )
    source = defs["SourceConfig"]
    source["properties"]["connector"]["enum"] = known_connectors()
    source["allOf"] = rules
    return schema
