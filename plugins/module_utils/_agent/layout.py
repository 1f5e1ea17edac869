"""Where the agent keeps its state and who may write there: the agent's directory beside the release
root (PARENT/.hotswap/NAME, root-only), the check that nobody but root can write above it, private
directories, and the move of the state of agents before 1.2.0 out of ROOT/.hotswap (the node user's tree).
"""

import os
import shutil
import stat

from .errors import BadInput, OpFailed


def check_parents(root, app):
    """Refuse a root whose parent directories someone other than root could write: the agent's directory
    (PARENT/.hotswap/NAME) and ROOT itself must be where only root can rename them."""
    me = os.geteuid()
    d = os.path.realpath(os.path.dirname(root))
    while True:
        try:
            st = os.lstat(d)
        except OSError:
            st = None  # made by the first install, as root
        if st is not None:
            if not stat.S_ISDIR(st.st_mode):
                raise BadInput(f"{d} is not a directory: hotswap_root {root} needs a directory above it")
            open_to_others = st.st_mode & 0o022 and not st.st_mode & stat.S_ISVTX
            if st.st_uid not in (0, me) or open_to_others:
                raise BadInput(f"{d} can be written by users other than root (owner uid {st.st_uid}, mode "
                               f"{stat.S_IMODE(st.st_mode):04o}): the agent keeps its state beside hotswap_root "
                               f"{root} and runs as root, so every directory above it must belong to root and be "
                               f"writable only by root; put hotswap_root in such a directory (for example "
                               f"/opt/{app}). Nothing was changed")
        if d == "/":
            return
        d = os.path.dirname(d)


def mkdir_private(d, mode):
    """A directory of the agent's own user with exactly ``mode`` (made when missing)."""
    try:
        os.mkdir(d, mode)
    except FileExistsError:
        pass
    st = os.lstat(d)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
        raise OpFailed(f"{d} is not a directory of the agent's user (uid {st.st_uid}): remove it and re-run")
    if stat.S_IMODE(st.st_mode) != mode:
        os.chmod(d, mode)


def _legacy_fd(legacy):
    """An fd on ROOT/.hotswap when it is a real directory of the agent's user that only it can write (what
    agents before 1.2.0 made), else None.  Opened without following links: the node's user can rename
    things in ROOT."""
    try:
        fd = os.open(legacy, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError:
        return None
    st = os.fstat(fd)
    # 0711 is the new layout's PARENT/.hotswap (ROOT=PARENT holds other roots' agent directories): never it
    if st.st_uid != os.geteuid() or stat.S_IMODE(st.st_mode) & 0o022 or stat.S_IMODE(st.st_mode) == 0o711:
        os.close(fd)
        return None
    try:  # an old agent's directory holds its files directly
        if not any(stat.S_ISREG(os.stat(n, dir_fd=fd, follow_symlinks=False).st_mode)
                   for n in os.listdir(fd) if n in ("agent.py", "journal.jsonl", "env", "lock")):
            os.close(fd)
            return None
    except OSError:
        os.close(fd)
        return None
    return fd


def legacy_file(legacy, parts):
    """ROOT/.hotswap/PARTS when it is a regular file of the agent's user in such a directory, else None."""
    fd = _legacy_fd(legacy)
    if fd is None:
        return None
    try:
        st = os.stat(os.path.join(*parts), dir_fd=fd, follow_symlinks=False)
        if stat.S_ISREG(st.st_mode) and st.st_uid == os.geteuid():
            return os.path.join(legacy, *parts)
    except OSError:
        pass
    finally:
        os.close(fd)
    return None


_NOT_STATE = ("agent.py", "node.erl", "node.exs", "__pycache__", "lock", "VERSION")


def _copy_private(src_fd, dst):
    """Copy the agent's own regular files and directories under src_fd into dst (through fds, never a link;
    a file with other hard links is left: it may not be the agent's)."""
    for name in os.listdir(src_fd):
        if name in _NOT_STATE or name.startswith(("staging", ".upload-", ".")):
            continue
        st = os.stat(name, dir_fd=src_fd, follow_symlinks=False)
        if st.st_uid != os.geteuid():
            continue
        target = os.path.join(dst, name)
        if stat.S_ISDIR(st.st_mode):
            sub = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=src_fd)
            try:
                mkdir_private(target, 0o700)
                _copy_private(sub, target)
            finally:
                os.close(sub)
        elif stat.S_ISREG(st.st_mode) and st.st_nlink == 1:
            with os.fdopen(os.open(name, os.O_RDONLY | os.O_NOFOLLOW, dir_fd=src_fd), "rb") as fin:
                data = fin.read()
            if name == "journal.jsonl" and os.path.exists(target):
                with open(target, "rb") as fh:
                    data += fh.read()  # the old lines first
            elif os.path.lexists(target):
                continue
            tmp = target + ".migrating"
            with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600), "wb") as fout:
                fout.write(data)
                os.fchmod(fout.fileno(), 0o400 if name == "cookie" else 0o600)
            os.replace(tmp, target)


def migrate_legacy(legacy, hs):
    """Move the state an agent before 1.2.0 kept in ROOT/.hotswap into hs (the node keeps running), then
    remove the old directory.  Returns True when there was one."""
    fd = _legacy_fd(legacy)
    if fd is None:
        return False
    try:
        _copy_private(fd, hs)
    finally:
        os.close(fd)
    shutil.rmtree(legacy, ignore_errors=True)  # fd-based on Linux: never follows a link
    return True
