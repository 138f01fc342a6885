"""``[repository]``: where repo-mode backups go, how their blocks are sealed, where the key is.

::

    [repository]
    path = "/srv/tinabs-repo"      # shared by every worker; made by `tinabs repo init`
    compression = "zstd"           # or "none"; level = 1..22 (default 3)
    encryption = "aes-256-gcm"     # or "none"
    key_file = "/etc/tinabs/repo.key"   # or key_env / key_secret; never inline
    gc_grace_h = 24                # blocks unmarked this long before a GC starts may be swept
    store_threads = 3              # threads that seal and write one backup's blocks

GC runs from ``[schedule.gc]`` (beat) or ``tinabs repo gc``.

The key is a secret like a pool's password: one of ``key_env``, ``key_file`` or ``key_secret``
(config/sources.py), read only when the repository is opened, never sent anywhere.
"""
from __future__ import annotations

import os

from pydantic import field_validator

from tinabs_tasks.config.base import Record, Table, number, one_of, validator
from tinabs_tasks.config.errors import problem
from tinabs_tasks.config.sources import SecretRef, only_one, ref, sources

COMPRESSIONS = ("zstd", "none")
ENCRYPTIONS = ("aes-256-gcm", "none")
#: a GC grace shorter than this could sweep a block a running backup stored but has not indexed yet
MIN_GRACE_H = 1.0


class RepositoryConfig(Record):
    """The repository as workers and commands use it (``key`` says where the key is, if encrypted)."""
    path: str
    compression: str = "zstd"
    level: int = 3
    encryption: str = "aes-256-gcm"
    key: SecretRef | None = None
    gc_grace_h: float = 24.0
    #: threads that compress, encrypt and write blocks during one backup (the stream is read by one)
    store_threads: int = 3

    @property
    def encrypted(self) -> bool:
        return self.encryption != "none"


class RepositoryTable(Table):
    """``[repository]`` as written."""
    path: str
    compression: str = "zstd"
    level: int = 3
    encryption: str = "aes-256-gcm"
    key_env: str | None = None
    key_file: str | None = None
    key_secret: str | None = None
    gc_grace_h: float = 24.0
    store_threads: int = 3

    refused = {"key": "the repository key is never inline; use key_file, key_env or key_secret "
                      "(`tinabs repo init` writes a key file)"}
    _sources = sources("key")
    _compression = validator(one_of, "compression", choices=COMPRESSIONS, quote=True)
    _encryption = validator(one_of, "encryption", choices=ENCRYPTIONS, quote=True)

    @field_validator("path", mode="before")
    @classmethod
    def _path(cls, value):
        if not isinstance(value, str) or not os.path.isabs(value):
            raise problem(f"path must be an absolute path, got {value!r}")
        return value

    @field_validator("level", mode="before")
    @classmethod
    def _level(cls, value):
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 22:
            raise problem(f"level must be a zstd level from 1 to 22, got {value!r}")
        return value

    @field_validator("store_threads", mode="before")
    @classmethod
    def _threads(cls, value):
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 32:
            raise problem(f"store_threads must be an integer from 1 to 32, got {value!r}")
        return value

    @field_validator("gc_grace_h", mode="before")
    @classmethod
    def _grace(cls, value):
        value = number(value, "gc_grace_h")
        if value < MIN_GRACE_H:
            raise problem(f"gc_grace_h must be at least {MIN_GRACE_H:g} (longer than any backup runs), got {value!r}")
        return value

    @classmethod
    def cross(cls, data: dict, context: dict) -> list[tuple[tuple, str]]:
        found = only_one(data, "key")
        keyed = any(k in data for k in ("key_env", "key_file", "key_secret"))
        if data.get("encryption", "aes-256-gcm") == "none" and keyed:
            found.append(((), 'a key is given but encryption = "none"; drop the key or encrypt'))
        elif data.get("encryption", "aes-256-gcm") != "none" and not keyed:
            found.append(((), "an encrypted repository needs its key: set key_file, key_env or key_secret "
                              "(`tinabs repo init` writes a key file), or encryption = \"none\""))
        return found

    def build(self, secrets: tuple[str, str]) -> RepositoryConfig:
        return RepositoryConfig(path=self.path, compression=self.compression, level=self.level,
                                encryption=self.encryption, key=ref(self, "key", secrets),
                                gc_grace_h=self.gc_grace_h, store_threads=self.store_threads)
