"""Read a tinabs config, change it as a dict, write it back: enough TOML for tinabs' flat tables."""
from __future__ import annotations

import json
import tomllib
from pathlib import Path


def read(path) -> dict:
    with open(path, "rb") as fh:
        return tomllib.load(fh)


def _value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)  # a JSON string is a valid TOML basic string
    raise TypeError(f"no TOML for {v!r}")


def dumps(data: dict) -> str:
    """Scalars first, then ``[table]`` and ``[table."sub"]`` (tinabs nests at most twice)."""
    lines = [f"{k} = {_value(v)}" for k, v in data.items() if not isinstance(v, dict)]
    for key, table in data.items():
        if not isinstance(table, dict):
            continue
        scalars = {k: v for k, v in table.items() if not isinstance(v, dict)}
        if scalars or not table:
            lines += ["", f"[{key}]"] + [f"{k} = {_value(v)}" for k, v in scalars.items()]
        for sub, inner in table.items():
            if isinstance(inner, dict):
                lines += ["", f"[{key}.{json.dumps(sub)}]"] + [f"{k} = {_value(v)}" for k, v in inner.items()]
    return "\n".join(lines) + "\n"


def write(path, data: dict) -> Path:
    Path(path).write_text(dumps(data))
    return Path(path)
