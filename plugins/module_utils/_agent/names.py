"""Names and versions, for the agent and the controller alike: the rules for a release name, a release
version, a sha256, a user and an env key (one copy of each rule: the playbooks' input check, the build,
the modules and the agent all use these), the agent's own version, and the order of release versions.
"""

import os
import re

from .errors import BadInput


AGENT_VERSION = "1.3.0"

# a release version: letters, digits and . _ + - (never "..": versions become paths)
VSN_RE = re.compile(r"^[0-9A-Za-z][0-9A-Za-z._+-]{0,63}\Z")
# a release name (the `releases:` key in mix.exs): an Erlang atom written bare
APP_RE = re.compile(r"^[a-z][a-z0-9_]{0,62}\Z")
SHA_RE = re.compile(r"^[0-9a-f]{64}\Z")
USER_RE = re.compile(r"^[a-z_][a-z0-9_.-]{0,31}\$?\Z")
ENV_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*\Z")
# a release root as the controller accepts it: absolute, plain characters, not /, no ".."
ROOT_RE = re.compile(r"^/[A-Za-z0-9._/-]*\Z")


SYSTEM_DIRS = {"/", "/opt", "/usr", "/usr/local", "/usr/bin", "/usr/sbin", "/usr/lib", "/usr/share", "/etc", "/var",
               "/var/lib", "/var/tmp", "/var/log", "/srv", "/home", "/root", "/tmp", "/bin", "/sbin", "/boot", "/dev",
               "/proc", "/sys", "/run", "/mnt", "/media", "/snap"}


def is_system_dir(path, real=True):
    """True for a directory of the operating system (SYSTEM_DIRS, /lib*, /usr/lib*), by its path (and, on the
    host, its real path): never a release root."""
    paths = {os.path.normpath(path)} | ({os.path.realpath(path)} if real else set())
    return any(r in SYSTEM_DIRS or re.fullmatch(r"/(usr/)?lib[^/]*", r) is not None for r in paths)


def valid_version(v):
    """True for a release version (see VSN_RE)."""
    return isinstance(v, str) and VSN_RE.match(v) is not None and ".." not in v


def valid_user(u):
    """True for a user the node may run as: a system user name (see USER_RE), never root."""
    return isinstance(u, str) and USER_RE.match(u) is not None and u != "root"


def valid_app(a):
    """True for a release name (see APP_RE)."""
    return isinstance(a, str) and APP_RE.match(a) is not None


def valid_root(root):
    """True for a release root the controller accepts (see ROOT_RE)."""
    return isinstance(root, str) and ROOT_RE.match(root) is not None and os.path.normpath(root) not in ("/", "//") \
        and ".." not in root.split("/") and not is_system_dir(root, real=False)


def state_dir(root):
    """The agent's own directory for a release root: ``PARENT/.hotswap/NAME`` beside ROOT, never inside it
    (ROOT belongs to the node's user, who could rename anything in it); root-owned, like PARENT."""
    root = os.path.normpath(root)
    return os.path.join(os.path.dirname(root), ".hotswap", os.path.basename(root))


def legacy_state_dir(root):
    """Where agents before 1.2.0 kept their state: ROOT/.hotswap, inside the node user's tree."""
    return os.path.join(os.path.normpath(root), ".hotswap")


def check_vsn(v, what="version"):
    if not valid_version(v):
        raise BadInput(f"invalid {what} {v!r}: must match {VSN_RE.pattern} without '..'")
    return v


def check_app(a):
    if not valid_app(a):
        raise BadInput(f"invalid app name {a!r}: must match {APP_RE.pattern}")
    return a


def check_sha(s):
    s = (s or "").lower()
    if not SHA_RE.fullmatch(s):
        raise BadInput(f"invalid sha256 {s!r}: need 64 hex digits")
    return s


def plan_state_key(up, running, permanent):
    """The host state a plan is made from, in one string (``up:2.0.0:1.0.0``): the controller sends the
    key of the facts it planned from (--expect-state), the agent compares it with the host's own."""
    return "%s:%s:%s" % ("up" if up else "down", running or "-", permanent or "-")


def vsn_key(v):
    """Sort key for versions: numeric parts numerically, pre-releases before releases."""
    main, _ign, pre = v.partition("-")
    parts = []
    for p in re.split(r"[.+]", main):
        parts.append((0, int(p), "") if p.isdigit() else (1, 0, p))
    return (parts, 0 if pre else 1, pre)
