"""Files on the host: the node's env file, epmd's registered names, sha256 of a file, and the tar safety
rules (members that stay inside the root, no links out, no device files) used before anything is
extracted; chown and removal of trees.

Everything below the release root belongs to the node's user and is hostile input to the root agent:
writes, reads, renames and removals there go through the dir-fd helpers below (``safe_open_dir``,
``safe_write``, ``safe_read``, ``safe_rmtree``, ``safe_rename``), which never follow a symbolic link below
the root and chown only what they created (fchown/lchown).
"""

import errno
import hashlib
import lzma
import os
import re
import shutil
import socket
import stat
import struct
import tarfile
import zlib

from .errors import OpFailed, PackageRefused
from .names import ENV_KEY_RE


def parse_env(text):
    """KEY=VALUE lines ('#' comments and blank lines skipped, an optional 'export ' prefix): the key must
    match exactly (no surrounding blanks), the value is kept byte-exact (everything after the first '=',
    quotes and blanks included), as the agent writes it."""
    env = {}
    for i, line in enumerate(text.split("\n"), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if line.startswith("export "):
            line = line[7:]
        key, sep, val = line.partition("=")
        if not sep or not ENV_KEY_RE.fullmatch(key) or "\0" in val:
            raise ValueError(f"env line {i}: expected KEY=VALUE (KEY letters, digits and _, nothing around it)")
        env[key] = val
    return env


def epmd_names(host="127.0.0.1", port=None, timeout=1.0):
    """{name: port} registered with epmd (NAMES_REQ); None when epmd is not reachable."""
    port = port or int(os.environ.get("ERL_EPMD_PORT") or 4369)
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.sendall(struct.pack(">HB", 1, 110))
            data = b""
            while True:
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
    except OSError:
        return None
    names = {}
    for line in data[4:].decode("utf-8", "replace").splitlines():
        m = re.match(r"^name (\S+) at port (\d+)$", line.strip())
        if m:
            names[m.group(1)] = int(m.group(2))
    return names


def _inside(root, path):
    root = os.path.normpath(root)
    path = os.path.normpath(path)
    return path == root or path.startswith(root + os.sep)


def inside(root, path, real=True):
    """True when ``path`` is ``root`` or below it; with ``real`` both are resolved first (realpath), so a
    symbolic link anywhere in ``path`` that leads out of ``root`` makes it False."""
    if real:
        root, path = os.path.realpath(root), os.path.realpath(path)
    return _inside(root, path)


_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


def _rel_parts(root, rel):
    """``rel`` (relative to root, or an absolute path below root) as a list of names; no '..'."""
    if os.path.isabs(rel):
        if not _inside(root, rel):
            raise OpFailed(f"{rel} is not inside {root}: refused")
        rel = os.path.relpath(os.path.normpath(rel), os.path.normpath(root))
    parts = [x for x in rel.split("/") if x not in ("", ".")]
    if ".." in parts:
        raise OpFailed(f"{os.path.join(root, rel)}: a path with '..' below {root} is refused")
    return parts


def _link_refused(path, root, e):
    if e.errno in (errno.ELOOP, errno.ENOTDIR, errno.EMLINK):
        return OpFailed(f"{path} is a symbolic link or not a directory: the agent never follows links below "
                        f"{root} (remove or rename it, then re-run)", path=path)
    return OpFailed(f"cannot open {path}: {e.strerror}", path=path)


def safe_open_dir(root, rel="", create=False, mode=0o750, owner=None):
    """A file descriptor (the caller closes it) for the directory ROOT/rel, opened one component at a time
    with openat(O_NOFOLLOW|O_DIRECTORY): a symbolic link at the root or anywhere below it is refused
    (OpFailed naming the path).  ``create``: missing components are made (``mode``; chowned to ``owner``
    when we are root, via the new directory's own fd)."""
    parts = _rel_parts(root, rel)
    try:
        fd = os.open(root, _DIR_FLAGS)
    except OSError as e:
        raise _link_refused(root, root, e) from None
    path = root
    try:
        for name in parts:
            path = os.path.join(path, name)
            try:
                nfd = os.open(name, _DIR_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                if not create:
                    raise OpFailed(f"{path} does not exist", path=path) from None
                try:
                    os.mkdir(name, mode, dir_fd=fd)
                except FileExistsError:
                    pass
                try:
                    nfd = os.open(name, _DIR_FLAGS, dir_fd=fd)
                except OSError as e:
                    raise _link_refused(path, root, e) from None
                if owner is not None and os.geteuid() == 0:
                    os.fchown(nfd, *owner)
                os.fchmod(nfd, mode)
            except OSError as e:
                raise _link_refused(path, root, e) from None
            os.close(fd)
            fd = nfd
    except BaseException:
        os.close(fd)
        raise
    return fd


def safe_write(root, rel, data, owner=None, mode=0o644, create_dirs=False):
    """Write ``data`` (str: UTF-8, or bytes) to ROOT/rel atomically without following any symbolic link
    below ROOT: a temp file with a random name is created in the (no-follow opened) directory with
    O_CREAT|O_EXCL|O_NOFOLLOW, written, fsynced, fchmod ``mode``, fchown ``owner`` (when we are root and an
    owner is given), renamed over the name through the dir fd, and the dir fsynced.  A symbolic link
    planted at the name is replaced, never written through.  On failure the temp file is removed."""
    parts = _rel_parts(root, rel)
    if not parts:
        raise OpFailed(f"safe_write: no file name below {root}")
    if isinstance(data, str):
        data = data.encode("utf-8")
    dfd = safe_open_dir(root, "/".join(parts[:-1]), create=create_dirs, owner=owner)
    name = parts[-1]
    tmp = f".{name}.hotswap-tmp-{os.urandom(6).hex()}"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW | getattr(os, "O_CLOEXEC", 0),
                     0o600, dir_fd=dfd)
        try:
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
                os.fsync(fd)
                os.fchmod(fd, mode)
                if owner is not None and os.geteuid() == 0:
                    os.fchown(fd, *owner)
            finally:
                os.close(fd)
            os.rename(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
        except BaseException:
            try:
                os.unlink(tmp, dir_fd=dfd)
            except OSError:
                pass
            raise
        try:
            os.fsync(dfd)
        except OSError:
            pass
    finally:
        os.close(dfd)
    return os.path.join(root, *parts)


def safe_read(root, rel, limit=None):
    """Bytes of the regular file ROOT/rel, read without following a symbolic link anywhere below ROOT;
    None when it is missing, a link, or not a regular file."""
    try:
        parts = _rel_parts(root, rel)
        dfd = safe_open_dir(root, "/".join(parts[:-1]))
    except OpFailed:
        return None
    try:
        fd = os.open(parts[-1], os.O_RDONLY | _NOFOLLOW | getattr(os, "O_NONBLOCK", 0), dir_fd=dfd)
    except OSError:
        return None
    finally:
        os.close(dfd)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        with os.fdopen(fd, "rb", closefd=False) as fh:
            return fh.read() if limit is None else fh.read(limit)
    finally:
        os.close(fd)


def _rm_at(dfd, name):
    """Remove ``name`` in the directory ``dfd`` (a tree, recursively through dir fds; links themselves)."""
    try:
        st = os.lstat(name, dir_fd=dfd)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(st.st_mode):
        os.unlink(name, dir_fd=dfd)
        return
    fd = os.open(name, _DIR_FLAGS, dir_fd=dfd)
    try:
        for child in os.listdir(fd):
            _rm_at(fd, child)
    finally:
        os.close(fd)
    os.rmdir(name, dir_fd=dfd)


def safe_rmtree(root, rel):
    """Remove ROOT/rel (file, link or tree) without following any symbolic link: the parent is opened
    no-follow from ROOT, the tree is walked through dir fds.  A missing path is fine."""
    parts = _rel_parts(root, rel)
    if not parts:
        raise OpFailed(f"refusing to remove the root {root} itself")
    try:
        dfd = safe_open_dir(root, "/".join(parts[:-1]))
    except OpFailed:
        if not os.path.lexists(os.path.join(root, *parts[:-1])):
            return
        raise
    try:
        _rm_at(dfd, parts[-1])
    finally:
        os.close(dfd)


def safe_rename(src_root, src_rel, dst_root, dst_rel):
    """rename(SRC_ROOT/src_rel, DST_ROOT/dst_rel) through no-follow opened parent dirs."""
    sp, dp = _rel_parts(src_root, src_rel), _rel_parts(dst_root, dst_rel)
    sfd = safe_open_dir(src_root, "/".join(sp[:-1]))
    try:
        dfd = safe_open_dir(dst_root, "/".join(dp[:-1]))
        try:
            os.rename(sp[-1], dp[-1], src_dir_fd=sfd, dst_dir_fd=dfd)
        finally:
            os.close(dfd)
    finally:
        os.close(sfd)


def lchown_tree_at(root, rel, uid, gid, top=True):
    """Chown ROOT/rel and everything below it to uid:gid (when we are root) without following any link:
    lchown on each entry, walking through no-follow dir fds (``top=False``: not ROOT/rel itself)."""
    if os.geteuid() != 0:
        return
    parts = _rel_parts(root, rel)
    fd = safe_open_dir(root, "/".join(parts))

    def walk(dfd, me=True):
        if me:
            os.fchown(dfd, uid, gid)
        for name in os.listdir(dfd):
            st = os.lstat(name, dir_fd=dfd)
            if stat.S_ISDIR(st.st_mode):
                cfd = os.open(name, _DIR_FLAGS, dir_fd=dfd)
                try:
                    walk(cfd)
                finally:
                    os.close(cfd)
            else:
                os.chown(name, uid, gid, dir_fd=dfd, follow_symlinks=False)
    try:
        walk(fd, top)
    finally:
        os.close(fd)


def member_rel(m):
    """Generic tar entry checks (shared by upgrade packages and full tarballs): no control
    characters, no absolute paths, no '..', no devices/fifos, no links leading outside.
    Returns the normalised relative path ('' for the archive root)."""
    name = m.name
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in name + (m.linkname or "")):
        raise PackageRefused(f"package refused: entry {name!r} has control characters in its name; nothing changed")
    if name.startswith("/") or name.startswith("\\") or re.match(r"^[A-Za-z]:", name):
        raise PackageRefused(f"package refused: absolute path entry {name!r}; nothing changed")
    parts = [p for p in name.replace("\\", "/").split("/") if p not in ("", ".")]
    if ".." in name.replace("\\", "/").split("/"):
        raise PackageRefused(f"package refused: entry {name!r} contains '..'; nothing changed")
    if not parts:
        return ""
    if m.ischr() or m.isblk() or m.isfifo() or not (m.isfile() or m.isdir() or m.issym() or m.islnk()):
        raise PackageRefused(f"package refused: entry {name!r} is a device/fifo/special file; nothing changed")
    rel = "/".join(parts)
    if m.issym() or m.islnk():
        target = m.linkname
        if not target:
            raise PackageRefused(f"package refused: link {name!r} has an empty target; nothing changed")
        if target.startswith("/") or (m.islnk() and ".." in target.split("/")):
            raise PackageRefused(f"package refused: link {name!r} -> {target!r} leads outside the root; nothing changed")
        base = "/r"
        dest = os.path.normpath(os.path.join(base, os.path.dirname(rel), target)) if m.issym() \
            else os.path.normpath(os.path.join(base, target))
        if not _inside(base, dest):
            raise PackageRefused(f"package refused: link {name!r} -> {target!r} leads outside the root; nothing changed")
    return rel


def check_member(m, app, vsn):
    """Raise PackageRefused (exit 2, nothing changed) unless the tar member is safe and belongs in an
    upgrade package."""
    rel = member_rel(m)
    if not rel:
        return None
    top_rel = f"releases/{app}-{vsn}.rel"
    if not (rel in ("releases", "lib", "bin", top_rel, f"releases/{vsn}") or rel.startswith((f"releases/{vsn}/", "bin/"))
            or re.match(r"^lib/[^/]+-[^/]+(/|$)", rel)):
        raise PackageRefused(f"package refused: unexpected entry {m.name!r} (an upgrade package holds only "
                             f"{top_rel}, releases/{vsn}/, lib/NAME-VSN/ and bin/); nothing changed")
    return rel


def check_full_member(m, app, vsn):
    """Raise PackageRefused (exit 2, nothing changed) unless the tar member is safe and belongs in a full
    `mix release` tarball of app vsn: bin/, erts-*/, lib/NAME-VSN/, releases/VSN/, releases/COOKIE,
    releases/start_erl.data."""
    rel = member_rel(m)
    if not rel:
        return None
    if not (rel in ("bin", "lib", "releases", "releases/COOKIE", "releases/start_erl.data",
                    f"releases/{vsn}", f"releases/{app}-{vsn}.rel")
            or rel.startswith(("bin/", f"releases/{vsn}/"))
            or re.match(r"^erts-[0-9][0-9A-Za-z._-]*(/|$)", rel)
            or re.match(r"^lib/[^/]+-[^/]+(/|$)", rel)):
        raise PackageRefused(f"package refused: unexpected entry {m.name!r} (a full release of {app} {vsn} holds "
                             f"bin/, erts-*/, lib/NAME-VSN/, releases/{vsn}/, releases/COOKIE and "
                             f"releases/start_erl.data); nothing changed")
    if rel in ("releases/COOKIE", "releases/start_erl.data") and not m.isfile():
        raise PackageRefused(f"package refused: {m.name!r} must be a regular file; nothing changed")
    return rel


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _norm(name):
    return "/".join(x for x in name.replace("\\", "/").split("/") if x not in ("", "."))


def check_links(members):
    """Archive-wide link rules over [(member, rel)] (each already passed member_rel): no member of any kind
    below a symlink member; a symlink's target, resolved against the archive's own symlinks, stays inside;
    a hard link names a regular-file member that comes earlier (exact normalised name); no name twice
    when one of them is a link."""
    syms = {rel: m.linkname for m, rel in members if m.issym()}
    seen, files = {}, set()
    for m, rel in members:
        parts = rel.split("/")
        for i in range(1, len(parts)):
            if "/".join(parts[:i]) in syms:
                raise PackageRefused(f"package refused: entry {m.name!r} lies below the symbolic link "
                                     f"{'/'.join(parts[:i])!r} of the package; nothing changed")
        if rel in seen and (m.issym() or m.islnk() or seen[rel]):
            raise PackageRefused(f"package refused: entry {m.name!r} appears twice, once as a link; nothing changed")
        seen[rel] = m.issym() or m.islnk()
        if m.islnk() and _norm(m.linkname) not in files:
            raise PackageRefused(f"package refused: hard link {m.name!r} -> {m.linkname!r} does not name a regular "
                                 f"file earlier in the package; nothing changed")
        if m.issym():
            _resolve_sym(rel, syms, m)
        if m.isfile():
            files.add(rel)


def _resolve_sym(rel, syms, m):
    """Follow the symlink member ``rel`` through the archive's own symlinks; refuse when it leaves the root."""
    todo, path, hops = m.linkname.split("/"), rel.split("/")[:-1], 0
    while todo:
        x = todo.pop(0)
        if x in ("", "."):
            continue
        if x == "..":
            if not path:
                raise PackageRefused(f"package refused: link {m.name!r} -> {m.linkname!r} leads outside the root "
                                     f"(through the package's own links); nothing changed")
            path.pop()
            continue
        path.append(x)
        target = syms.get("/".join(path))
        if target is not None:
            hops += 1
            if hops > 40 or target.startswith("/"):
                raise PackageRefused(f"package refused: link {m.name!r} -> {m.linkname!r} loops or leads outside "
                                     f"the root; nothing changed")
            path.pop()
            todo = target.split("/") + todo


def package_damaged(package, e):
    return PackageRefused(f"package {package} is truncated or damaged ({type(e).__name__}: {e}): re-upload it; "
                          f"nothing changed")


READ_ERRORS = (tarfile.TarError, EOFError, zlib.error, lzma.LZMAError)


def safe_extract(tf, members, dest):
    """Extract pre-checked members under dest (a private, root-only staging dir) ourselves, through
    no-follow dir fds: no owners, no setuid/setgid/sticky bits, hard links copied from the regular file
    they name (never through a link)."""
    check_links(members)
    for m, rel in members:
        parts = rel.split("/")
        dfd = safe_open_dir(dest, "/".join(parts[:-1]), create=True, mode=0o700)
        name = parts[-1]
        try:
            if m.isdir():
                try:
                    os.mkdir(name, 0o700, dir_fd=dfd)
                except FileExistsError:
                    pass
                fd = safe_open_dir(dest, rel)
                os.fchmod(fd, (m.mode & 0o755) | 0o700)
                os.close(fd)
                continue
            try:
                os.unlink(name, dir_fd=dfd)
            except FileNotFoundError:
                pass
            if m.issym():
                os.symlink(m.linkname, name, dir_fd=dfd)
                continue
            if m.islnk():
                src_parts = _norm(m.linkname).split("/")
                sfd = safe_open_dir(dest, "/".join(src_parts[:-1]))
                try:
                    fin = os.open(src_parts[-1], os.O_RDONLY | _NOFOLLOW, dir_fd=sfd)
                finally:
                    os.close(sfd)
                src, mode = os.fdopen(fin, "rb"), stat.S_IMODE(os.fstat(fin).st_mode)
            else:
                src, mode = tf.extractfile(m), m.mode
            out = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW, 0o600, dir_fd=dfd)
            with src, os.fdopen(out, "wb") as fo:
                try:
                    shutil.copyfileobj(src, fo)
                except READ_ERRORS as e:
                    raise package_damaged(getattr(tf, "name", "?"), e) from None
                os.fchmod(fo.fileno(), (mode & 0o755) | 0o600)
        finally:
            os.close(dfd)


def rmtree(path):
    if os.path.islink(path) or os.path.isfile(path):
        os.unlink(path)
    elif os.path.isdir(path):
        shutil.rmtree(path)
