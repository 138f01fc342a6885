"""`tinabs repo init [PATH]` and `tinabs repo key generate FILE`: a new repository, a new key.

init makes the repository at [repository] path (or PATH) with the config's compression, level
and encryption.  Its key comes from where [repository] says:

* ``key_file``: used if the file exists; made (random, mode 0600) if it does not.  A key file
  made for a repository that then could not be made is removed again: nothing was ever
  encrypted with it, and a stray key file would be taken for the key of a repository.
* ``key_env`` / ``key_secret``: must already hold a key: ``tinabs repo key generate FILE``
  makes one in a file, whose content goes into the variable or the secrets directory.

The key is never printed (only where it is); a new key's line says, loudly, that losing it loses
every backup in the repository.
"""
from __future__ import annotations

import os
import sys

from tinabs_tasks.cli.common import UserError, load_config, printable
from tinabs_tasks.cli.repo import print_json, user_error
from tinabs_tasks.repo import keys
from tinabs_tasks.repo.errors import KeyUnusable, RepoError
from tinabs_tasks.repo.layout import init_repository

KEEP_SAFE = ("KEEP A COPY OF THIS KEY FILE SAFE, AWAY FROM THIS HOST AND THE REPOSITORY (a password "
             "manager, a safe): without it every backup in the repository is lost for good; nobody "
             "can recover or reset it")


def add_init_arguments(parser) -> None:
    parser.add_argument("path", nargs="?", metavar="PATH",
                        help="where to make it (default: [repository] path); a new or empty directory")
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def add_key_arguments(parser) -> None:
    sub = parser.add_subparsers(dest="key_command", required=True, metavar="COMMAND")
    gen = sub.add_parser("generate", help="write a new random repository key to FILE (mode 0600)",
                         description="Write a new random repository key (64 hex digits) to FILE, mode "
                                     "0600; FILE must not exist.  For key_env / key_secret: put its "
                                     "content there, then run `tinabs repo init`.")
    gen.add_argument("file", metavar="FILE", help="the key file to make (must not exist)")


def run_key(args) -> int:
    path = os.path.abspath(args.file)
    try:
        keys.generate_key_file(path)
    except RepoError as exc:
        raise user_error(exc) from None
    print(f"wrote a new repository key to {printable(path)} (mode 0600)")
    print(f"tinabs: {KEEP_SAFE}", file=sys.stderr)
    return 0


def run_init(args) -> int:
    cfg = load_config(args)
    repo_cfg = cfg.repository
    if repo_cfg is None:
        from tinabs_tasks.cli.common import check_repository
        check_repository(cfg)  # raises the one-line "the config has no [repository] table; add one"
    path = os.path.abspath(args.path or repo_cfg.path)
    made_key_file = None
    key = None
    if repo_cfg.encrypted:
        key, made_key_file = _key(repo_cfg.key)
    try:
        repo = init_repository(path, compression=repo_cfg.compression, level=repo_cfg.level,
                               encryption=repo_cfg.encryption, key=key)
    except BaseException as exc:
        if made_key_file:  # nothing was encrypted with it: leave no key of no repository behind
            os.unlink(made_key_file)
        if isinstance(exc, RepoError):
            raise user_error(exc) from None
        raise
    config = repo.config
    if args.json:
        print_json({"path": path, "id": config.id, "compression": config.compression, "level": config.level,
                    "encryption": config.encryption, "key_file_created": made_key_file,
                    "configured_path": path == os.path.abspath(repo_cfg.path)})
    else:
        how = f"{config.compression}" + (f" level {config.level}" if config.compression != "none" else "")
        print(f"made repository {printable(path)} ({how}, encryption {config.encryption}), id {config.id}")
        if made_key_file:
            print(f"wrote its new key to {printable(made_key_file)} (mode 0600)")
        if path != os.path.abspath(repo_cfg.path):
            print(f"[repository] path is {printable(repo_cfg.path)}: set path = \"{printable(path)}\" to use this one")
    if made_key_file:  # on stderr too, so that `--json | ...` cannot swallow it
        print(f"tinabs: NEW KEY {made_key_file}: {KEEP_SAFE}", file=sys.stderr)
    return 0


def _key(ref) -> tuple[bytes, str | None]:
    """(the key, the key file made for it or None); UserError when the key cannot be had."""
    try:
        if ref is not None and ref.kind == "file" and not os.path.lexists(ref.name):
            parent = os.path.dirname(ref.name)
            if not os.path.isdir(parent):
                raise UserError(f"repository: key_file {ref.name}: its directory {parent} does not exist; "
                                "make it (mode 0700), or set key_file elsewhere")
            return keys.generate_key_file(ref.name), ref.name
        return keys.load_key(ref), None
    except KeyUnusable as exc:
        hint = ""
        if ref is not None and ref.kind != "file":
            hint = ("; make a key with `tinabs repo key generate FILE` and put the file's content in "
                    f"{keys.describe(ref)} (or set key_file instead: init writes the key there)")
        raise UserError(f"repository: {exc}{hint}") from None
    except RepoError as exc:
        raise user_error(exc) from None
