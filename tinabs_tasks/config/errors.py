"""Config errors: ConfigError carries every problem of a file, each said in tinabs' words.

The config models (base.py) raise their problems as pydantic errors of type ``tinabs`` whose
context holds the message; ``problems_of`` turns a ValidationError into lines of the shape
``{path}: [{table}] {message}`` (``{path}: {message}`` at the top level).  ``unknown_keys``
groups a table's unknown keys into one problem, with a "did you mean" for each near miss.
"""
from __future__ import annotations

import difflib
import re
from collections.abc import Iterable

from pydantic import ValidationError
from pydantic_core import PydanticCustomError

#: a schedule entry's name, which labels its problems once it is a good one
NAME = re.compile(r"[A-Za-z0-9_-]+")


class ConfigError(Exception):
    """A config problem a user can fix; ``problems`` says each what and where, one line each."""

    def __init__(self, problems: str | Iterable[str]):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("\n".join(self.problems))

    def __str__(self) -> str:
        return "\n".join(self.problems)

    def __reduce__(self):  # pickled (a task's exception) with its list, not its text
        return type(self), (self.problems,)


def problem(message: str, *, table: bool = False, kind: str = "") -> PydanticCustomError:
    """A problem to raise from a validator: about the key being validated, or (``table``) the table."""
    return PydanticCustomError("tinabs", "{message}", {"message": message, "table": table, "kind": kind})


def several(problems: list[PydanticCustomError]) -> Exception:
    """Raised from a validator: every one of ``problems``, not only the first."""
    return problems[0] if len(problems) == 1 else merged([((), p) for p in problems])


def did_you_mean(unknown: list[str], allowed: Iterable[str]) -> str:
    """" — did you mean X?" for the unknown keys close to an allowed one ("" when none is)."""
    allowed = sorted(allowed)
    guesses = {key: match[0] for key in unknown if (match := difflib.get_close_matches(key, allowed, n=1))}
    if not guesses:
        return ""
    if len(unknown) == 1:
        return f" — did you mean {guesses[unknown[0]]}?"
    return " — did you mean " + ", ".join(f"{good} (for {bad})" for bad, good in guesses.items()) + "?"


def unknown_keys(unknown: list[str], allowed: Iterable[str]) -> str:
    unknown, allowed = sorted(unknown), sorted(allowed)
    return f"unknown key(s) {', '.join(unknown)}{did_you_mean(unknown, allowed)}; allowed: {', '.join(allowed)}"


def merged(*parts: list) -> ValidationError:
    """One ValidationError of every problem in ``parts``, in order: each part is a list of pydantic's
    errors (as ``exc.errors()`` gives them) or of (loc, problem) pairs."""
    details = []
    for part in parts:
        for item in part:
            if isinstance(item, tuple):
                loc, p = item
                details.append({"type": p, "loc": loc, "input": None})
            elif item["type"] == "tinabs":
                details.append({"type": PydanticCustomError("tinabs", "{message}", item["ctx"]),
                                "loc": item["loc"], "input": item.get("input")})
            else:
                details.append({"type": item["type"], "loc": item["loc"], "input": item.get("input"),
                                **({"ctx": item["ctx"]} if "ctx" in item else {})})
    return ValidationError.from_exception_data("tinabs", details)


def problems_of(exc: ValidationError, raw: dict, path: str, prefix: tuple = ()) -> list[str]:
    """One line per problem of the file at ``path`` (``raw`` as read: it names array entries)."""
    lines: list[str] = []
    for e in exc.errors():
        loc = prefix + tuple(e["loc"])
        if e["type"] == "tinabs":
            ctx = e["ctx"]
            message, where = ctx["message"], loc if ctx.get("table") else loc[:-1]
            if ctx.get("kind") == "not_table" and len(loc) == 1:
                message, where = f"`{loc[0]}` must be a table ([{loc[0]}])", ()
        elif e["type"] == "missing":
            message, where = f"missing required key `{loc[-1]}`", loc[:-1]
        else:  # a check the models forgot: still one line, with pydantic's words
            message, where = f"`{loc[-1]}`: {e['msg']}", loc[:-1]
        table = label(where, raw)
        line = f"{path}: {table} {message}" if table else f"{path}: {message}"
        if line not in lines:
            lines.append(line)
    return lines


def label(loc: tuple, raw) -> str:
    """``[pools.pool-a]``; ``[[schedule.backups]] "w"`` for an array's entry (``#1`` while it has no
    good name); "" for the top level."""
    if not loc:
        return ""
    keys: list[str] = []
    node = raw
    for part in loc:
        if isinstance(part, int):
            entry = node[part] if isinstance(node, list) and 0 <= part < len(node) else None
            name = entry.get("name") if isinstance(entry, dict) else None
            tag = f'"{name}"' if isinstance(name, str) and NAME.fullmatch(name) else f"#{part + 1}"
            return f"[[{'.'.join(keys)}]] {tag}"
        keys.append(str(part))
        node = node.get(part) if isinstance(node, dict) else None
    return f"[{'.'.join(keys)}]"
