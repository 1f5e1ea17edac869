# -*- coding: utf-8 -*-
# Copyright (c) beam.hotswap contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Dependencies of a build: the build user's Hex, the environment mix runs in, mix.lock.

The build runs mix as the build user, with that user's Mix and Hex homes (``~/.mix``, ``~/.hex``, or
``MIX_HOME``/``HEX_HOME``/``MIX_ARCHIVES`` from ``hotswap_build_env``), so Hex finds the repositories
and mirror the user configured (``mix hex.repo``, ``HEX_MIRROR``). Fetched dependencies are kept per
``mix.lock`` content: a changed lock gets a fresh dependency directory, never a previous one.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import hashlib
import os
import re
import shutil

# set by the build itself: a user value would build something else than the release it publishes
RESERVED_ENV = frozenset(["MIX_ENV", "MIX_DEPS_PATH", "MIX_BUILD_PATH", "MIX_BUILD_ROOT", "MIX_TARGET",
                          "MIX_EXS", "MIX_LOCKFILE"])
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_LOCK_LINE = re.compile(r'^\s*"?([A-Za-z0-9_]+)"?:\s*\{:(hex|git|path)\s*,(.*)$')
KEEP_DEPS_DIRS = 3

HEX_HINT = ("install Hex for the build user on the build host (`mix local.hex` as that user, or set "
            "hotswap_hex_archive to a Hex .ez file on the controller and the build installs it), or point "
            "MIX_HOME/MIX_ARCHIVES in hotswap_build_env at the Mix home that has it")
REPO_HINT = ("check that the build host can reach the Hex repository, or point it at a mirror or private "
             "repository: `mix hex.repo set hexpm --url URL [--public-key KEY]` (or `mix hex.repo add NAME URL`) "
             "as the build user, or HEX_MIRROR / HEX_HOME in hotswap_build_env")


class DepsError(Exception):
    """A dependency problem with what to do about it."""


def check_env(env):
    """``hotswap_build_env`` as a dict of strings; raises DepsError naming a bad entry."""
    if env is None:
        return {}
    if not isinstance(env, dict):
        raise DepsError("hotswap_build_env must be a mapping of environment variable names to values")
    out = {}
    for k, v in env.items():
        k = str(k)
        if not _ENV_NAME.match(k):
            raise DepsError("hotswap_build_env: %r is not an environment variable name (letters, digits, _)" % k)
        if k in RESERVED_ENV:
            raise DepsError("hotswap_build_env: %s is set by the build itself (it builds MIX_ENV=prod with its "
                            "own dependency and build directories); remove it" % k)
        if isinstance(v, (dict, list)) or v is None:
            raise DepsError("hotswap_build_env: %s must be a string" % k)
        v = str(v).lower() if isinstance(v, bool) else str(v)
        if "\0" in v or "\n" in v:
            raise DepsError("hotswap_build_env: the value of %s holds a NUL or newline" % k)
        out[k] = v
    return out


def archives_dir(env, base=None):
    """Where mix looks for archives with ``env`` laid over ``base`` (the build's process environment)."""
    base = os.environ if base is None else base

    def get(name):
        return env.get(name) if name in env else base.get(name)
    if get("MIX_ARCHIVES"):
        return get("MIX_ARCHIVES")
    home = get("MIX_HOME")
    if not home:
        if get("MIX_XDG"):
            home = os.path.join(get("XDG_DATA_HOME") or os.path.join(get("HOME") or "~", ".local", "share"), "mix")
        else:
            home = os.path.join(get("HOME") or os.path.expanduser("~"), ".mix")
    return os.path.join(os.path.expanduser(home), "archives")


def hex_installed(env, base=None):
    """The installed Hex archive's directory name (``hex-2.5.1``), or None."""
    d = archives_dir(env, base)
    try:
        names = sorted(n for n in os.listdir(d) if n == "hex" or n.startswith("hex-"))
    except OSError:
        return None
    return names[-1] if names else None


def parse_lock(text):
    """{dependency: (scm, rest of its line)} from a mix.lock (one entry per line, as mix writes it)."""
    out = {}
    for line in (text or "").splitlines():
        m = _LOCK_LINE.match(line)
        if m:
            out[m.group(1)] = (m.group(2), m.group(3).strip().rstrip(","))
    return out


def read_lock(src):
    try:
        with open(os.path.join(src, "mix.lock"), "rb") as f:
            return f.read()
    except OSError:
        return None


def hex_deps(lock_bytes):
    entries = parse_lock((lock_bytes or b"").decode("utf-8", "replace"))
    return sorted(n for n, entry in entries.items() if entry[0] == "hex")


def lock_drift(before, after):
    """Names of dependencies whose lock entry mix changed while fetching (sorted)."""
    a = parse_lock((before or b"").decode("utf-8", "replace"))
    b = parse_lock((after or b"").decode("utf-8", "replace"))
    return sorted(n for n in set(a) | set(b) if a.get(n) != b.get(n))


def deps_dir(work_root, lock_bytes):
    """The dependency directory for this lock content (fetched deps are never shared between locks);
    older ones beyond the last few are removed."""
    key = hashlib.sha256(lock_bytes).hexdigest()[:16] if lock_bytes is not None else "no-lock"
    root = os.path.join(work_root, "deps")
    path = os.path.join(root, key)
    os.makedirs(path, exist_ok=True)
    os.utime(path, None)
    others = sorted((os.path.getmtime(os.path.join(root, n)), n) for n in os.listdir(root) if n != key)
    for old in others[:max(0, len(others) - (KEEP_DEPS_DIRS - 1))]:
        shutil.rmtree(os.path.join(root, old[1]), ignore_errors=True)
    return path


_NO_HEX = ("Could not find Hex", "Could not find an SCM for dependency", "Shall I install Hex",
           "The task \"hex.", "module Hex.")
_UNREACHABLE = ("econnrefused", "nxdomain", "ehostunreach", "enetunreach", ":timeout", "{:failed_connect",
                "tls_alert", "Request failed")


def explain_failure(output, lock_bytes):
    """A clear message for a failed ``mix deps.get`` (or compile) whose output says why, else None."""
    m = re.search(r"Registry checksum mismatch against lock \(([^)]*)\)", output)
    if m:
        return ("the Hex repository serves %s with other content than mix.lock recorded (checksum mismatch): a "
                "mirror that is not a faithful copy, or a package published again; check the repository the build "
                "host uses, or update the dependency on purpose (`mix deps.update`) and commit mix.lock" % m.group(1))
    if any(s in output for s in _NO_HEX):
        names = hex_deps(lock_bytes)
        what = ("Hex dependencies (%s)" % ", ".join(names[:6] + (["..."] if len(names) > 6 else []))
                if names else "dependencies that need Hex to resolve")
        return "the project has %s but Hex is not installed for the build user: %s" % (what, HEX_HINT)
    low = output.lower()
    about_hex = any(w in low for w in ("hex", "registry", "package", "repo"))
    if about_hex and any(s.lower() in low for s in _UNREACHABLE):
        return "could not fetch the project's Hex dependencies: %s" % REPO_HINT
    m = re.search(r"Unknown package (\S+) in lockfile|No package with name (\S+)", output)
    if m:
        return ("the Hex repository the build host uses has no package %s: if it is private, add its repository "
                "(`mix hex.repo add NAME URL`) or organisation for the build user; else %s"
                % (m.group(1) or m.group(2), REPO_HINT))
    return None
