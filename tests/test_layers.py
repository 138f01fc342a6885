"""The shape of tinabs_tasks/: its layers (import-linter's contracts in pyproject.toml), the size of
its modules and their docstrings.

The contracts say which package may import which (the core never imports backup, restore, tasks,
cli or web; the producers never import tasks/; config and sim import nothing else of the
package; ...); pyproject.toml explains each and the few imports they excuse.  `lint-imports` reads
them from pyproject.toml and checks every import, those inside functions too.
"""
from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "tinabs_tasks"
MAX_LINES = 400

#: Modules over MAX_LINES that other engineers are splitting now.  This list must shrink to empty:
#: never add to it (split the module instead); remove an entry as soon as its module is split
#: (test_module_size fails while a listed module is within the limit, or gone).
KNOWN_OVERSIZED: set[str] = set()  # none left: every module is under the limit


def _modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def _rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def test_layers_contracts_are_kept():
    """Given the contracts in pyproject.toml ([tool.importlinter])
    When lint-imports (from this venv) checks tinabs_tasks/
    Then every contract is kept."""
    lint = Path(sys.executable).parent / "lint-imports"
    assert lint.exists(), f"{lint} is missing: install the test extra (make venv, or pip install -e '.[test]')"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([str(lint), "--no-cache"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120, stdin=subprocess.DEVNULL)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"lint-imports exited {proc.returncode}:\n{out}"


def test_module_size():
    """Given every Python module under tinabs_tasks/ (the simulator's datamodel JSON is no module)
    Then none is over 400 lines, except the known offenders being split now, and each of those
    still is (else it must leave the list)."""
    sizes = {_rel(p): len(p.read_text(encoding="utf-8").splitlines()) for p in _modules()}
    over = {m: n for m, n in sizes.items() if n > MAX_LINES}
    new = sorted(f"{m} ({over[m]} lines)" for m in over.keys() - KNOWN_OVERSIZED)
    stale = sorted(m for m in KNOWN_OVERSIZED if m not in over)
    problems = []
    if new:
        problems.append(f"modules over {MAX_LINES} lines (split them): " + ", ".join(new))
    if stale:
        problems.append("no longer over the limit, or gone; remove from KNOWN_OVERSIZED in tests/test_layers.py: "
                        + ", ".join(stale))
    assert not problems, "\n".join(problems)


def test_every_module_has_a_docstring():
    """Given every Python module under tinabs_tasks/ (packages' __init__.py included)
    Then each opens with a docstring."""
    missing = [_rel(p) for p in _modules() if not ast.get_docstring(ast.parse(p.read_text(encoding="utf-8")))]
    assert not missing, "modules without a docstring: " + ", ".join(missing)
