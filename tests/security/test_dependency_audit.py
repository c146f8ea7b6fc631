"""The dependency audit (scripts/audit: pip-audit against PyPI's vulnerability data) runs with the suite.

A known vulnerability fails unless .ci/audit-ignore.txt accepts it with a reason and a date. An audit that could
not be done (service unreachable, packages it could not look up) is skipped with the audit's own reason, also under
CI=true: the vulnerability data is an outside service, not a peer the suite can start, and the network this project
is built on answers PyPI's per-release JSON API (the one pip-audit's PyPI service reads) with 404 for every
package, while OSV is not reachable at all (docs/security.md, "Dependency audit").
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
AUDIT = ROOT / "scripts" / "audit"


@pytest.mark.integration
def test_no_known_vulnerabilities_in_installed_dependencies() -> None:
    venv = Path(sys.prefix).relative_to(ROOT) if Path(sys.prefix).is_relative_to(ROOT) else Path(".venv")
    proc = subprocess.run([sys.executable, str(AUDIT)], capture_output=True, text=True, timeout=240,
                          env={**os.environ, "VENV": str(venv)}, check=False)
    report = (proc.stdout + proc.stderr).strip()
    if proc.returncode == 2:
        pytest.skip(f"the dependency audit could not be done here: {report.splitlines()[-1]}")
    assert proc.returncode == 0, f"known vulnerabilities in the installed dependencies:\n{report}"


def test_audit_ignore_file_entries_have_an_id_a_date_and_a_reason(tmp_path: Path) -> None:
    import importlib.machinery
    import importlib.util

    loader = importlib.machinery.SourceFileLoader("dcpue_audit_script", str(AUDIT))
    spec = importlib.util.spec_from_loader(loader.name, loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    module.read_ignores(ROOT / ".ci" / "audit-ignore.txt")  # the real file parses
    good = tmp_path / "good.txt"
    good.write_text("# comment\nGHSA-1234-5678-9abc  2026-01-15  only in the CLI, which dcpue never runs\n")
    assert module.read_ignores(good) == {"GHSA-1234-5678-9abc": "only in the CLI, which dcpue never runs"}
    for line in ("PYSEC-2024-1", "PYSEC-2024-1  2026-01-15", "PYSEC-2024-1  soon  because"):
        bad = tmp_path / "bad.txt"
        bad.write_text(line + "\n")
        with pytest.raises(ValueError, match="bad.txt:1"):
            module.read_ignores(bad)
