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


# ports of the controller's address on the fleet bridge used by the Hex mirror
HEX_MIRROR_PORT = 8470


@pytest.fixture(scope="session")
def hex_repo(tmp_path_factory):
    """The local Hex repository (hexrepo.py): every library of shared/thirdparty, built once per run."""
    from hotswap_testlib import hexrepo
    return hexrepo.session_repo(tmp_path_factory)


@pytest.fixture(scope="session")
def hex_mirror(fleet, hex_repo, tmp_path_factory):
    """The repository served on the fleet bridge, and a build user's Mix/Hex homes configured for it the
    way a user points Hex at a mirror. Yields ``{"url", "build_env", "repo", "log"}``: pass ``build_env`` as
    ``hotswap_build_env`` (the build host is a namespace of this machine: the paths are the same there)."""
    from hotswap_testlib import hexrepo
    log: list[str] = []
    url, stop = hexrepo.serve(hex_repo, fleet.controller_address, HEX_MIRROR_PORT, log=log)
    try:
        home = tmp_path_factory.mktemp("builduser")
        env = hexrepo.configure_build_user(home / ".mix", home / ".hex", url, hex_repo)
        yield {"url": url, "build_env": env, "repo": hex_repo, "log": log}
    finally:
        stop()
