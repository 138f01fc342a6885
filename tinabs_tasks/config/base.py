"""The two kinds of config models, and the checks their values share.

A ``Table`` is one table of the file as written (its fields are the file's keys): pydantic
validates every table of a file in one pass, and each of its problems is raised in tinabs'
words (errors.problem).  A table's unknown keys are one problem, with "did you mean";
``cross`` names the problems between keys (two sources of one password...), seen from the keys
the table has, so they are reported together with the problems of single keys.  A ``Record``
is what the rest of tinabs reads (a Config, a PoolConfig, ...): frozen, built from valid tables.
"""
from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError

from tinabs_tasks.config.errors import merged, problem, unknown_keys

MODES = ("export", "sr-copy", "repo")


class Record(BaseModel):
    """A frozen value the rest of tinabs reads; equal when its fields are."""
    model_config = ConfigDict(frozen=True, extra="forbid")


class Table(BaseModel):
    """A table of the config file, validated whole: see the module's docstring."""
    model_config = ConfigDict(frozen=True, extra="forbid")
    #: keys that are not allowed and say why (e.g. an inline password): key -> message
    refused: ClassVar[dict[str, str]] = {}

    @classmethod
    def refusal(cls, key: str) -> str | None:
        return cls.refused.get(key)

    @classmethod
    def cross(cls, data: dict, context: dict) -> list[tuple[tuple, str]]:
        """Problems between keys, as (loc below this table, message); () is the table itself."""
        return []

    @classmethod
    def allowed_keys(cls) -> set[str]:
        return {field.alias or name for name, field in cls.model_fields.items()}

    @model_validator(mode="wrap")
    @classmethod
    def _whole_table(cls, data: Any, handler, info):
        if isinstance(data, BaseModel):  # a default, or a record given whole
            return handler(data)
        if not isinstance(data, dict):
            raise problem("must be a table", table=True, kind="not_table")
        allowed = cls.allowed_keys()
        unknown = [k for k in data if k not in allowed]
        found: list[tuple[tuple, PydanticCustomError]] = []
        plain = [k for k in unknown if cls.refusal(k) is None]
        if plain:
            found.append(((), problem(unknown_keys(plain, allowed), table=True)))
        for message in dict.fromkeys(cls.refusal(k) for k in unknown if k not in plain):
            found.append(((), problem(message, table=True)))
        later = [(loc, problem(message, table=True)) for loc, message in cls.cross(data, info.context or {})]
        clean = {k: v for k, v in data.items() if k in allowed}
        if not found and not later:
            return handler(clean)
        errors = []
        try:
            handler(clean)
        except ValidationError as exc:
            errors = exc.errors()
        # unknown keys first, then the problems of single keys, then those between keys
        raise merged(found, errors, later)


# -- checks of single values: each returns the value to keep, or raises a problem ------------------

def validator(check, *fields: str, check_fields: bool | None = None, **options):
    """A table's before-validator of ``fields``: ``check(value, the field's name, **options)``."""
    def validate(cls, value, info):
        return check(value, info.field_name, **options)
    return field_validator(*fields, mode="before", check_fields=check_fields)(classmethod(validate))


def flag(value, key: str, *, got: bool = True, backticks: bool = False):
    """A bool (true or false in the file)."""
    if not isinstance(value, bool):
        shown = f"`{key}`" if backticks else key
        raise problem(f"{shown} must be true or false" + (f", got {value!r}" if got else ""))
    return value


def text(value, key: str):
    """A non-empty string."""
    if not isinstance(value, str) or not value.strip():
        raise problem(f"`{key}` must be a non-empty string")
    return value


def number(value, key: str, *, integer: bool = False, got: bool = True):
    """A non-negative number (``integer``: a whole one); never a bool."""
    if isinstance(value, bool) or not isinstance(value, int if integer else (int, float)) or value < 0:
        kind = "a non-negative integer" if integer else "a non-negative number"
        raise problem(f"{key} must be {kind}" + (f", got {value!r}" if got else ""))
    return value if integer else float(value)


def one_of(value, key: str, choices: tuple[str, ...], quote: bool = False):
    if value not in choices:
        shown = ", ".join(repr(c) if quote else c for c in choices)
        raise problem(f"{key} must be one of {shown}, got {value!r}")
    return value


def http_url(value, key: str):
    """An http:// or https:// URL (a non-empty string first)."""
    text(value, key)
    if not value.startswith(("http://", "https://")):
        raise problem(f"{key} must be an http:// or https:// URL, got {value!r}")
    return value
