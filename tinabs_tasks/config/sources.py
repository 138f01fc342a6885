"""Where a secret is: ``SecretRef``, and the config keys that name one.

A secret (a pool's password, the SMTP login's, a webhook's URL or header, the web console's
password) is never inline: the file names an environment variable (``<stem>_env``), a file
(``<stem>_file``) or a file in the secrets directory (``<stem>_secret``), as Docker secrets and
systemd credentials provide them.  It is read only when it is needed (``SecretRef.read``).
"""
from __future__ import annotations

import os
from typing import Literal

from tinabs_tasks.config.base import Record, text, validator
from tinabs_tasks.config.errors import problem
from tinabs_tasks.config.secrets import SecretError, read_password_file, read_secret

#: where ``*_secret`` files are looked for when nothing says otherwise (Docker's secrets)
DEFAULT_SECRETS_DIR = "/run/secrets"
KINDS = ("env", "file", "secret")


class SecretRef(Record):
    """Where a secret is: an environment variable, a file, or a name in the secrets directory
    (``secrets_dir``, chosen by ``secrets_dir_from``: "TINABS_SECRETS_DIR", "the default", ...)."""
    kind: Literal["env", "file", "secret"]
    name: str
    secrets_dir: str = ""
    secrets_dir_from: str = ""

    def __init__(self, kind: str, name: str, secrets_dir: str = "", secrets_dir_from: str = "") -> None:
        super().__init__(kind=kind, name=name, secrets_dir=secrets_dir, secrets_dir_from=secrets_dir_from)

    def read(self) -> str:
        """The secret, read now; SecretError (a reason, never the value) if it cannot be used."""
        if self.kind == "env":
            value = os.environ.get(self.name)
            if not value:
                raise SecretError(f"environment variable {self.name} is not set")
            return value
        if self.kind == "file":
            return read_password_file(self.name)
        return read_secret(self.secrets_dir, self.name, self.secrets_dir_from)


def source_keys(stem: str) -> tuple[str, str, str]:
    """``password`` -> (password_env, password_file, password_secret)."""
    return tuple(f"{stem}_{kind}" for kind in KINDS)


def given(data: dict, stem: str) -> list[str]:
    """The source keys of ``stem`` the table has (env, file, secret order)."""
    return [key for key in source_keys(stem) if key in data]


def check_ref(value, key: str, kind: str, *, absolute: bool = True, instead: str = "") -> str:
    """The value of a source key (or a header's ``{ env = ... }``): a file is an absolute path
    (``absolute``), a secret a name in the secrets directory; ``instead`` is the advice after it."""
    text(value, key)
    if kind == "file" and absolute and not os.path.isabs(value):
        raise problem(f"{key} must be an absolute path, got {value!r}")
    if kind == "secret" and ("/" in value or "\0" in value or value in (".", "..")):
        raise problem(f"{key} is a file name in the secrets directory, not a path (got {value!r})" +
                      (f"; {instead}" if instead else ""))
    return value


def sources(stem: str):
    """The before-validator of a table's ``<stem>_env`` / ``<stem>_file`` / ``<stem>_secret`` keys."""
    return validator(lambda value, key: check_ref(value, key, key.rpartition("_")[2]), *source_keys(stem))


def only_one(data: dict, stem: str) -> list[tuple[tuple, str]]:
    """A table's problem (for ``cross``) when it has more than one source key of ``stem``."""
    keys = given(data, stem)
    return [((), f"give only one of {', '.join(keys)}")] if len(keys) > 1 else []


def ref(table, stem: str, secrets: tuple[str, str]) -> SecretRef | None:
    """The SecretRef a valid table's ``<stem>_*`` key names (None without one); ``secrets`` is
    (secrets directory, what chose it), which every ref made from the file carries."""
    for kind, key in zip(KINDS, source_keys(stem)):
        value = getattr(table, key)
        if value is not None:
            return SecretRef(kind, value, *secrets)
    return None
