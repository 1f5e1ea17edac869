"""What the suite needs from the machine, and one way to say it is missing.

A missing tool fails the test that needs it (``pytest.fail``), naming the tool, the Debian package
that brings it and the command that installs everything (``make setup``).  The suite never skips:
``hotswap_testlib.pytest_noskip`` turns any skip into a failure.
"""
from __future__ import annotations

import os
import shutil

import pytest

# tool -> the Debian package that installs it (all listed in the Makefile's APT_PKGS)
PACKAGES = {
    "erl": "erlang-nox", "erlc": "erlang-nox", "mix": "elixir", "elixir": "elixir", "elixirc": "elixir",
    "rebar3": "rebar3", "sshd": "openssh-server", "ssh": "openssh-client", "ssh-keygen": "openssh-client",
    "ip": "iproute2", "unshare": "util-linux", "nsenter": "util-linux", "mount": "mount",
    "systemd-analyze": "systemd", "git": "git", "debootstrap": "debootstrap",
}
_PATHS = {"sshd": "/usr/sbin/sshd"}


def missing(*tools: str) -> list[str]:
    """The tools among ``tools`` that this machine lacks."""
    out = []
    for t in tools:
        path = _PATHS.get(t)
        found = os.access(path, os.X_OK) if path else shutil.which(t) is not None
        if not found:
            out.append(t)
    return out


def require(*tools: str) -> None:
    """Fail the calling test (never skip) when a tool is missing, saying what installs it."""
    gone = missing(*tools)
    if gone:
        pkgs = sorted({PACKAGES.get(t, t) for t in gone})
        pytest.fail(f"missing on this machine: {', '.join(gone)} (Debian package {', '.join(pkgs)}); "
                    "run `make setup` as root, which installs everything the suite needs", pytrace=False)


def require_root(why: str) -> None:
    """Fail the calling test when not running as root."""
    if os.geteuid() != 0:
        pytest.fail(f"this test needs root ({why}); run the suite as root (`make test`)", pytrace=False)
