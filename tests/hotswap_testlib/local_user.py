"""A node user for tests that run the agent on this machine (not in a fleet host): the agent never runs
anything from a release tree as root, so a local release root belongs to this user, and every directory
above it must be reachable by it (pytest makes its base temp dir 0700) and writable by root only."""

import os
import pwd
import subprocess
from pathlib import Path

USER = "hotswap_t"


def ensure_user():
    """Create the test's node user once (a system user: no home, no shell)."""
    try:
        pwd.getpwnam(USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", USER],
                       check=True, capture_output=True, text=True, timeout=60)
    return USER


def open_parents(path):
    """Make every directory from /tmp down to ``path`` (which must exist) traversable (0755, root's)."""
    path = Path(path).resolve()
    for d in [path, *path.parents]:
        if d == Path("/tmp") or d == Path("/"):
            break
        os.chmod(d, 0o755)
    return path


def chown_tree(root):
    """Give a release tree laid out by a test to the node user (links not followed)."""
    pw = pwd.getpwnam(ensure_user())
    for dp, dns, fns in os.walk(root):
        os.lchown(dp, pw.pw_uid, pw.pw_gid)
        for x in dns + fns:
            os.lchown(os.path.join(dp, x), pw.pw_uid, pw.pw_gid)
