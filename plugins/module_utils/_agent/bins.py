"""The start scripts (ROOT/bin) of each release the host holds: kept by the agent under its own bin/VSN
(from full packages, and from upgrade packages, which carry them too), and made ROOT/bin whenever the
release that boots changes.  A mix release's bin/APP is the same for every version (it reads
start_erl.data); relx's names the version it boots (REL_VSN), so after a hot upgrade is made permanent,
or a host goes back to an older release, ROOT/bin must be that release's or the next start boots another.
"""

import hashlib
import os
import stat

from .files import rmtree, safe_open_dir, safe_rename, safe_rmtree
from .packages import copy_tree_nofollow


def save_bin(h, vsn, force=False):
    """Keep a copy of the bin/ that boots vsn under the agent's bin/VSN (restored on a cold switch back).
    ROOT/bin is the node user's: it is read through no-follow fds, links copied as links, and only files
    owned by the node's user (never a hard link to someone else's file)."""
    if not vsn or not os.path.isdir(h.p("bin")) or os.path.islink(h.p("bin")):
        return None
    dst = os.path.join(h.hs, "bin", vsn)
    if force and os.path.isdir(dst) and not _tree_same(dst, h.p("bin")):
        rmtree(dst)
    if not os.path.isdir(dst):
        h.ensure_hs()
        os.close(safe_open_dir(h.hs, "bin", create=True, mode=0o700))
        rmtree(dst + ".tmp")
        copy_tree_nofollow(h.root, "bin", h.hs, f"bin/{vsn}.tmp",
                           uid_only=h.tree_owner()[0] if os.geteuid() == 0 else None)
        os.rename(dst + ".tmp", dst)
    return dst


def _hash_nofollow(p):
    """sha256 of the regular file p (O_NOFOLLOW|O_NONBLOCK: never a link's target, never blocks on a fifo)."""
    try:
        fd = os.open(p, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    except OSError:
        return None
    with os.fdopen(fd, "rb") as fh:
        return hashlib.sha256(fh.read()).hexdigest() if stat.S_ISREG(os.fstat(fd).st_mode) else None


def _tree_same(a, b):
    def listing(d):
        out = {}
        for dp, dns, fns in os.walk(d):
            for f in fns + [x for x in dns if os.path.islink(os.path.join(dp, x))]:
                p = os.path.join(dp, f)
                st = os.lstat(p)
                out[os.path.relpath(p, d)] = os.readlink(p) if stat.S_ISLNK(st.st_mode) else \
                    _hash_nofollow(p) if stat.S_ISREG(st.st_mode) else f"special {st.st_mode:o}"
        return out
    return os.path.isdir(a) and os.path.isdir(b) and not os.path.islink(b) and listing(a) == listing(b)


def swap_bin(h, src, owner):
    """Replace ROOT/bin with a copy of src, a root-owned tree (atomic rename of the directory, through
    no-follow dir fds; new entries chowned to owner). Returns True if changed."""
    if not src or not os.path.isdir(src) or _tree_same(src, h.p("bin")):
        return False
    safe_rmtree(h.root, "bin.hotswap-new")
    copy_tree_nofollow(os.path.dirname(src), os.path.basename(src), h.root, "bin.hotswap-new", owner=owner)
    safe_rmtree(h.root, "bin.hotswap-old")
    if os.path.lexists(h.p("bin")):
        safe_rename(h.root, "bin", h.root, "bin.hotswap-old")
    safe_rename(h.root, "bin.hotswap-new", h.root, "bin")
    safe_rmtree(h.root, "bin.hotswap-old")
    return True


def boot_bin(h):
    """Make ROOT/bin the start scripts of the release start_erl.data names, when the agent keeps them and
    they differ.  Returns True when ROOT/bin was replaced."""
    vsn = (h.start_erl() or {}).get("version")
    src = os.path.join(h.hs, "bin", vsn) if vsn else None
    if not src or not os.path.isdir(src):
        return False
    return swap_bin(h, src, h.tree_owner())
