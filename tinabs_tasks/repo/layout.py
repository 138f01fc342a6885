"""A repository on disk: its config file, ``init_repository``, ``open_repository``, ``Repository``.

Layout under the repository's path::

    tinabs-repo.json     the config: format version, compression and level, encryption, the
                         repository's random id (the HKDF salt), creation time, and the key check
    blocks/XXXX/<id>     the block store (blocks.py)
    indexes/             one index per backup (written by index.py)
    gc.lock              held by a running GC (so that two never sweep at once; backups never take it)

The key check is HMAC-SHA256 of a fixed label under a subkey of the master key: opening with a
wrong key fails at once with ``WrongKey``, before anything is read or written, and the config
reveals nothing about the key.  The config is written last at init, so a half-made repository
is not one.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import os
import time
from dataclasses import asdict, dataclass

from tinabs_tasks.repo.atomic import write_atomic
from tinabs_tasks.repo.blocks import BLOCKS_DIR, BlockStore
from tinabs_tasks.repo.codec import Codec, SealError
from tinabs_tasks.repo.errors import KeyMissing, NotInitialised, RepoCorrupt, RepoError, WrongKey
from tinabs_tasks.repo.keys import check_key_length, derive_subkeys

CONFIG_NAME = "tinabs-repo.json"
INDEX_DIR = "indexes"
FORMAT = "tinabs-repository"
FORMAT_VERSION = 1
COMPRESSIONS = ("zstd", "none")
ENCRYPTIONS = ("aes-256-gcm", "none")
_KEY_CHECK_LABEL = b"tinabs-repo key check"


@dataclass(frozen=True)
class RepoConfig:
    """What ``tinabs-repo.json`` holds."""
    id: str
    created: str
    compression: str
    level: int
    encryption: str
    key_check: str
    format: str = FORMAT
    version: int = FORMAT_VERSION

    @property
    def encrypted(self) -> bool:
        return self.encryption != "none"


class Repository:
    """An opened repository: its blocks, where indexes go, and sealing as configured."""

    def __init__(self, path: str, config: RepoConfig, key: bytes | None):
        self.path = path
        self.config = config
        subkeys = derive_subkeys(key, bytes.fromhex(config.id)) if config.encrypted else None
        self._codec = Codec(config.compression, config.level, subkeys.encryption if subkeys else None)
        self.blocks = BlockStore(path, self._codec, subkeys.block_id if subkeys else None)

    def __repr__(self) -> str:
        return f"Repository({self.path!r}, {self.config.compression}, {self.config.encryption})"

    def index_dir(self) -> str:
        return os.path.join(self.path, INDEX_DIR)

    def seal(self, plaintext: bytes, *, aad: bytes) -> bytes:
        """``plaintext`` compressed and encrypted as configured, bound to ``aad`` (e.g. the index's
        name: a sealed index moved under another name does not open); unencrypted, a SHA-256
        trailer still catches damage."""
        return self._codec.seal(plaintext, aad)

    def open_sealed(self, sealed: bytes, *, aad: bytes, what: str = "sealed data") -> bytes:
        """The plaintext ``seal`` sealed with this ``aad``; RepoCorrupt naming ``what`` otherwise."""
        try:
            return self._codec.open(sealed, aad)
        except SealError as exc:
            raise RepoCorrupt(f"{what} in repository {self.path} is damaged: {exc}") from None

    def write_atomic(self, rel_path: str, data: bytes) -> None:
        """Write ``data`` to ``rel_path`` (under the repository) whole or not at all: temp name in the
        same directory, fsync, rename, fsync the directory; parents are made.  RepoFull on a full disk."""
        parts = rel_path.split("/")
        if os.path.isabs(rel_path) or any(p in ("", ".", "..") for p in parts):
            raise RepoError(f"{rel_path!r} is not a path inside the repository")
        path = os.path.join(self.path, *parts)
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        write_atomic(path, data, mode=0o600)


def key_check(key: bytes, repo_id: str) -> str:
    subkeys = derive_subkeys(key, bytes.fromhex(repo_id))
    return hmac.new(subkeys.key_check, _KEY_CHECK_LABEL, hashlib.sha256).hexdigest()


def init_repository(path: str, *, compression: str = "zstd", level: int = 3,
                    encryption: str = "aes-256-gcm", key: bytes | None) -> Repository:
    """Make a new repository at ``path`` (created if absent; an existing directory must be empty)."""
    if compression not in COMPRESSIONS:
        raise RepoError(f"compression is one of {', '.join(COMPRESSIONS)}, not {compression!r}")
    if not isinstance(level, int) or isinstance(level, bool) or not 1 <= level <= 22:
        raise RepoError(f"zstd level is 1 to 22, not {level!r}")
    if encryption not in ENCRYPTIONS:
        raise RepoError(f"encryption is one of {', '.join(ENCRYPTIONS)}, not {encryption!r}")
    if encryption == "none" and key is not None:
        raise RepoError("a key was given for a repository without encryption; "
                        "drop the key, or use encryption = \"aes-256-gcm\"")
    if encryption != "none":
        if key is None:
            raise KeyMissing(f"an encrypted repository needs a key: make one with `tinabs repo init {path}` "
                             "(it writes a key file) or give key_file / key_env / key_secret")
        check_key_length(key)
    config_path = os.path.join(path, CONFIG_NAME)
    if os.path.exists(config_path):
        raise RepoError(f"{path} is already a tinabs repository; use it, or choose another path")
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
        strangers = sorted(set(os.listdir(path)) - {BLOCKS_DIR, INDEX_DIR})
        if strangers:
            raise RepoError(f"{path} is not empty ({', '.join(strangers[:3])}{', ...' if len(strangers) > 3 else ''}); "
                            "a repository needs an empty or new directory")
        for sub in (BLOCKS_DIR, INDEX_DIR):
            os.makedirs(os.path.join(path, sub), mode=0o700, exist_ok=True)
    except (PermissionError, NotADirectoryError, FileExistsError) as exc:
        raise RepoError(f"cannot make a repository at {path}: {exc.strerror}") from None
    repo_id = os.urandom(16).hex()
    config = RepoConfig(id=repo_id, created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                        compression=compression, level=level, encryption=encryption,
                        key_check=key_check(key, repo_id) if key is not None else "")
    write_atomic(config_path, (json.dumps(asdict(config), indent=2) + "\n").encode(), mode=0o600)
    return Repository(path, config, key)


def read_config(path: str) -> RepoConfig:
    """The config of the repository at ``path``; NotInitialised / RepoCorrupt say the fix."""
    config_path = os.path.join(path, CONFIG_NAME)
    try:
        with open(config_path, "rb") as f:
            raw = json.loads(f.read())
    except FileNotFoundError:
        why = "no such directory" if not os.path.isdir(path) else f"no {CONFIG_NAME} in it"
        raise NotInitialised(f"{path} is not a tinabs repository ({why}); "
                             f"make one with: tinabs repo init {path}") from None
    except PermissionError:
        raise RepoError(f"cannot read {config_path}: permission denied; run tinabs as the repository's owner") from None
    except (OSError, ValueError) as exc:
        raise RepoCorrupt(f"{config_path} is unreadable or not JSON ({exc.__class__.__name__}); "
                          "restore it from a copy (it holds no secret)") from None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise RepoCorrupt(f"{config_path} is not a tinabs repository config; restore it from a copy")
    if not isinstance(raw.get("version"), int) or raw["version"] > FORMAT_VERSION:
        raise RepoError(f"repository {path} has format version {raw.get('version')!r}; this tinabs reads "
                        f"version {FORMAT_VERSION}: upgrade tinabs")
    try:
        config = RepoConfig(**{k: raw[k] for k in RepoConfig.__dataclass_fields__})
        bytes.fromhex(config.id)
    except (KeyError, TypeError, ValueError):
        raise RepoCorrupt(f"{config_path} lacks a field or has a bad one; restore it from a copy") from None
    if config.compression not in COMPRESSIONS or config.encryption not in ENCRYPTIONS:
        raise RepoError(f"repository {path} uses {config.compression}/{config.encryption}, "
                        "which this tinabs does not know: upgrade tinabs")
    return config


def open_repository(path: str, key: bytes | None) -> Repository:
    """The repository at ``path``, its key checked before anything else is done (KeyMissing,
    WrongKey); a key given for an unencrypted repository is not used."""
    config = read_config(path)
    if not config.encrypted:
        return Repository(path, config, None)
    if key is None:
        raise KeyMissing(f"repository {path} is encrypted and no key was given: set key_file, key_env "
                         "or key_secret in [repository] to the key `tinabs repo init` made")
    check_key_length(key)
    if not hmac.compare_digest(key_check(key, config.id), config.key_check):
        raise WrongKey(f"the key given is not the key of repository {path} (its key check does not match); "
                       "configure the key file `tinabs repo init` wrote for it")
    return Repository(path, config, key)
