"""Names and versions the agent accepts (app, release version, sha256, user, env keys), the agent's
own version, and the order of release versions.
"""

import re

from .errors import BadInput


AGENT_VERSION = "1.1.0"


VSN_RE = re.compile(r"^[0-9A-Za-z][0-9A-Za-z._+-]{0,63}$")


APP_RE = re.compile(r"^[a-z][a-z0-9_]{0,63}$")


SHA_RE = re.compile(r"^[0-9a-f]{64}$")


USER_RE = re.compile(r"^[a-z_][a-z0-9_.-]{0,31}\$?$")


ENV_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def check_vsn(v, what="version"):
    if not isinstance(v, str) or not VSN_RE.fullmatch(v) or ".." in v:
        raise BadInput(f"invalid {what} {v!r}: must match {VSN_RE.pattern} without '..'")
    return v


def check_app(a):
    if not isinstance(a, str) or not APP_RE.fullmatch(a):
        raise BadInput(f"invalid app name {a!r}: must match {APP_RE.pattern}")
    return a


def check_sha(s):
    s = (s or "").lower()
    if not SHA_RE.fullmatch(s):
        raise BadInput(f"invalid sha256 {s!r}: need 64 hex digits")
    return s


def vsn_key(v):
    """Sort key for versions: numeric parts numerically, pre-releases before releases."""
    main, _ign, pre = v.partition("-")
    parts = []
    for p in re.split(r"[.+]", main):
        parts.append((0, int(p), "") if p.isdigit() else (1, 0, p))
    return (parts, 0 if pre else 1, pre)
