"""`{{name}}`: a TaskFlow plugin. Payload: {"name": "Ada"} -> {"greeting": "Hello, Ada!"}."""
import json

import wit_world
from componentize_py_types import Err
from wit_world.imports import host, types


class WitWorld(wit_world.WitWorld):
    def process(self, task: types.Task) -> bytes:
        try:
            name = json.loads(task.payload)["name"]
        except (ValueError, KeyError, TypeError) as error:
            raise Err(types.TaskError_InvalidInput(f'expected {{"name": "..."}}: {error}'))
        host.log(host.LogLevel.INFO, f"greeting {name}")
        host.progress(100)
        return json.dumps({"greeting": f"Hello, {name}!"}).encode()
