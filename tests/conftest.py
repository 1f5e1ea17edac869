"""Shared pytest configuration: the sample-app builds and the test fleet are session fixtures."""
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
COLLECTIONS_ROOT = REPO / ".venv" / "collections"

# Make `ansible_collections.beam.hotswap` importable (plugins/module_utils under test).
if COLLECTIONS_ROOT.is_dir() and str(COLLECTIONS_ROOT) not in sys.path:
    sys.path.insert(0, str(COLLECTIONS_ROOT))
os.environ.setdefault("ANSIBLE_COLLECTIONS_PATH", str(COLLECTIONS_ROOT))

# deploy.yml / rollback.yml runs without the settle window unless a test sets hotswap_settle_seconds
# (hotswap_testlib/ansible_run.py says which tests do, and why)
from hotswap_testlib import ansible_run  # noqa: E402  (tests/ is on sys.path: pytest.ini pythonpath)

ansible_run.SETTLE_UNLESS_SET = 0

pytest_plugins = [
    "hotswap_testlib.pytest_sample",
    "hotswap_testlib.pytest_fleet",
    "hotswap_testlib.pytest_counts",
    "hotswap_testlib.pytest_noskip",
]
