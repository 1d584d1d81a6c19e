"""`greeter`: a TaskFlow plugin written in Python, built with componentize-py
against the same WIT world as the Rust plugins.

Payload: {"name": "Ada"} -> {"greeting": "Hello, Ada!", "language": "python"}
"""
import json

import wit_world
from componentize_py_types import Err
from wit_world.imports import host, types


class WitWorld(wit_world.WitWorld):
    def process(self, task: types.Task) -> bytes:
        try:
            payload = json.loads(task.payload)
            name = payload["name"]
        except (ValueError, KeyError, TypeError) as error:
            raise Err(types.TaskError_InvalidInput(f'expected {{"name": "..."}}: {error}'))
        if not isinstance(name, str) or not name:
            raise Err(types.TaskError_InvalidInput("name must be a non-empty string"))
        host.log(host.LogLevel.INFO, f"greeting {name} (attempt {task.attempt})")
        host.progress(100)
        return json.dumps({"greeting": f"Hello, {name}!", "language": "python"}).encode()
