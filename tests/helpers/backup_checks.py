"""What every failure test checks after a job: one backup per good run, nothing else left."""
from __future__ import annotations

import json
from pathlib import Path

from .pool_checks import litter, tinabs_objects


def run_id(run: dict) -> str:
    """Data files are named ``<stamp>-<run>.xva`` (destination.backup_paths)."""
    return Path(run["path"]).name.split(".")[0].split("-")[1]


def files_of(dep, run: dict) -> list[Path]:
    return [p for p in dep.files() if run_id(run) in p.name]


def pool_objects_of(dep, run: dict) -> list:
    rid = run_id(run)
    return [(cls, rec.get("name_label")) for cls, objs in tinabs_objects(dep.sim.state()).items()
            for _pool, _ref, rec in objs
            if (rec.get("other_config") or {}).get("tinabs:run") == rid or str(rec.get("name_label")).endswith(rid)]


def assert_one_backup(dep, run: dict) -> None:
    """Exactly one backup of the VM from this run: one data file, one manifest, one kept copy in sr-copy."""
    assert run["state"] == "succeeded", run
    folder = Path(run["path"]).parent
    names = sorted(p.name for p in folder.iterdir() if run_id(run) in p.name)
    suffix = ".xva" if run["mode"] == "export" else ".metadata.xva"
    assert names == sorted([Path(run["manifest"]).name, Path(run["path"]).name]), names
    assert run["path"].endswith(suffix)
    manifest = json.loads(Path(run["manifest"]).read_text())
    assert manifest["run"] == run_id(run) and manifest["size"] == Path(run["path"]).stat().st_size
    kept = pool_objects_of(dep, run)
    assert len(kept) == (1 if run["mode"] == "sr-copy" else 0), kept


def assert_clean(dep, new_files) -> None:
    assert not [f for f in new_files if f.name.endswith(".partial")], new_files
    assert litter(dep.sim.state()) == {}
