"""`ansible-galaxy collection build` ships the collection and nothing of the test or build machinery."""
import os
import subprocess
import tarfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
GALAXY = REPO / ".venv" / "bin" / "ansible-galaxy"


def test_collection_tarball_has_no_tests_fixtures_or_build_output(tmp_path):
    p = subprocess.run([str(GALAXY), "collection", "build", "--output-path", str(tmp_path), str(REPO)],
                       capture_output=True, text=True, cwd=str(tmp_path), check=False)
    assert p.returncode == 0, p.stdout + p.stderr
    (tarball,) = tmp_path.glob("beam-hotswap-*.tar.gz")
    with tarfile.open(tarball) as tar:
        names = tar.getnames()
    tops = {n.split("/")[0] for n in names}
    assert {"plugins", "roles", "playbooks", "meta", "docs", "README.md", "MANIFEST.json"} <= tops
    assert not tops & {"tests", "bench", ".venv", ".ci", "Makefile", ".hypothesis", ".pytest_cache", ".stamp-apt"}
    assert "roles/agent/files/hotswap_agent.py" in names
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc") or "erl_crash.dump" in n]
    assert os.path.getsize(tarball) < 2 * 1024 * 1024
