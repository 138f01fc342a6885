"""The repository a config's ``[repository]`` names, opened with its key and checked against it.

The repository's own ``tinabs-repo.json`` says how it was made; the config says how it should
be.  They must agree on encryption (a config that asks for encryption never writes into a
plaintext repository, and the other way round); compression and its level are the config's,
for the blocks written from now on (a block's own header says how it was sealed, so blocks
written before stay readable).
"""
from __future__ import annotations

import dataclasses

from tinabs_tasks.repo.errors import RepoError
from tinabs_tasks.repo.keys import load_key
from tinabs_tasks.repo.layout import Repository, open_repository, read_config


class NoRepository(RepoError):
    """The config has no ``[repository]`` table."""


class OtherRepository(RepoError):
    """The configured repository is not the one a backup was written to."""


def open_configured(repo_cfg) -> Repository:
    """The repository of ``repo_cfg`` (a RepositoryConfig, or None), its key checked first:
    NoRepository, NotInitialised, KeyMissing, KeyUnusable, WrongKey or RepoError, each a one-line fix."""
    if repo_cfg is None:
        raise NoRepository("the config has no [repository] table; add one (path, encryption, key_file) "
                           "to use mode \"repo\" or the `tinabs repo` commands")
    made = read_config(repo_cfg.path)  # NotInitialised says `tinabs repo init PATH`
    if made.encryption != repo_cfg.encryption:
        raise RepoError(f"[repository] says encryption = \"{repo_cfg.encryption}\" but the repository at "
                        f"{repo_cfg.path} was made with \"{made.encryption}\"; set encryption = "
                        f"\"{made.encryption}\" (a repository's encryption cannot change)")
    key = load_key(repo_cfg.key) if made.encrypted else None
    repo = open_repository(repo_cfg.path, key)
    if (repo_cfg.compression, repo_cfg.level) != (made.compression, made.level):
        repo = Repository(repo.path, dataclasses.replace(made, compression=repo_cfg.compression,
                                                         level=repo_cfg.level), key)
    return repo


def check_recorded(repo: Repository, recorded: dict) -> None:
    """OtherRepository unless ``recorded`` (a manifest's ``repository``: {"path", "id"}) names
    ``repo``: a backup's id means nothing in another repository."""
    if recorded.get("id") != repo.config.id:
        raise OtherRepository(f"the backup is in repository {recorded.get('id')} at {recorded.get('path')}, but "
                              f"the config's [repository] at {repo.path} is repository {repo.config.id}; point "
                              "[repository] path at the backup's repository")


def open_recorded(repo_cfg, recorded: dict) -> Repository:
    """``open_configured``, then ``check_recorded``: the repository a manifest names, opened here."""
    repo = open_configured(repo_cfg)
    check_recorded(repo, recorded)
    return repo
