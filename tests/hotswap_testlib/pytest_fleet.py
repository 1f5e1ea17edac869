"""pytest plugin: a session-scoped test fleet (3 targets + build1).

Enable with ``pytest_plugins = ["hotswap_testlib.pytest_fleet"]`` (tests/ on sys.path) or
``-p hotswap_testlib.pytest_fleet``.  Skips fleet tests only when not root or ``ip netns`` is
unusable; any other failure to bring the fleet up is an error.
"""

from __future__ import annotations

import os

import pytest

from hotswap_testlib.fleet import Fleet, usable


def fleet_skip_reason() -> str | None:
    ok, why = usable()
    return None if ok else why


@pytest.fixture(scope="session")
def fleet_available():
    """Fail (with the reason and what to install) if netns fleets can't be built here."""
    why = fleet_skip_reason()
    if why:
        pytest.fail(f"the test fleet cannot run here: {why}; run the suite as root after `make setup`",
                    pytrace=False)


@pytest.fixture(scope="session")
def fleet(fleet_available, tmp_path_factory):
    """Session fleet: build1 + target1..3, prefix ``hsw`` (or $HOTSWAP_FLEET_PREFIX, so that concurrent
    sessions do not tear down each other's fleet); torn down at session end."""
    prefix = os.environ.get("HOTSWAP_FLEET_PREFIX", "hsw")
    f = Fleet(tmp_path_factory.mktemp("fleet"), targets=3, build=True, prefix=prefix)
    f.up()
    try:
        yield f
    finally:
        f.down()
