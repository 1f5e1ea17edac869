"""Files on the host: the node's env file, epmd's registered names, sha256 of a file, and the tar safety
rules (members that stay inside the root, no links out, no device files) used before anything is
extracted; chown and removal of trees.
"""

import hashlib
import os
import re
import shutil
import socket
import struct

from .errors import PackageRefused
from .names import ENV_KEY_RE


def parse_env(text):
    """KEY=VALUE lines; '#' comments, blank lines, optional 'export ', optional quotes."""
    env = {}
    for i, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("export "):
            line = line[7:].lstrip()
        key, sep, val = line.partition("=")
        key = key.strip()
        if not sep or not ENV_KEY_RE.fullmatch(key):
            raise ValueError(f"env line {i}: expected KEY=VALUE")
        val = val.strip()
        if len(val) >= 2 and val[0] == val[-1] and val[0] in "\"'":
            val = val[1:-1]
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
    if not (rel == "releases" or rel == "lib" or rel == top_rel or rel == f"releases/{vsn}"
            or rel.startswith(f"releases/{vsn}/") or re.match(r"^lib/[^/]+-[^/]+(/|$)", rel)):
        raise PackageRefused(f"package refused: unexpected entry {m.name!r} (an upgrade package holds only "
                             f"{top_rel}, releases/{vsn}/ and lib/NAME-VSN/); nothing changed")
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


def safe_extract(tf, members, dest):
    """Extract pre-checked members under dest ourselves: no owners, no setuid bits."""
    for m, rel in members:
        target = os.path.join(dest, rel)
        if not _inside(dest, target):
            raise PackageRefused(f"package refused: {m.name!r} escapes the staging dir")
        parent = os.path.dirname(target)
        os.makedirs(parent, exist_ok=True)
        if os.path.islink(parent) or not _inside(dest, os.path.realpath(parent)):
            raise PackageRefused(f"package refused: {m.name!r} would be written through a link")
        if m.isdir():
            os.makedirs(target, exist_ok=True)
            os.chmod(target, (m.mode & 0o755) | 0o700)
        elif m.issym():
            if os.path.lexists(target):
                os.unlink(target)
            os.symlink(m.linkname, target)
        elif m.islnk():
            src = os.path.join(dest, os.path.normpath(m.linkname))
            if not _inside(dest, src) or not os.path.isfile(src) or os.path.islink(src):
                raise PackageRefused(f"package refused: hard link {m.name!r} -> {m.linkname!r} has no safe target")
            shutil.copy2(src, target)
        else:
            if os.path.lexists(target):
                os.unlink(target)
            f = tf.extractfile(m)
            with open(target, "xb") as out:
                shutil.copyfileobj(f, out)
            os.chmod(target, (m.mode & 0o755) | 0o600)


def chown_tree(path, uid, gid):
    if os.geteuid() != 0:
        return
    for dp, dns, fns in os.walk(path):
        os.lchown(dp, uid, gid)
        for x in dns + fns:
            os.lchown(os.path.join(dp, x), uid, gid)


def rmtree(path):
    if os.path.islink(path) or os.path.isfile(path):
        os.unlink(path)
    elif os.path.isdir(path):
        shutil.rmtree(path)
