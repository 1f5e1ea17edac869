"""Helpers for the privilege-separation fleet tests (tests/integration/test_privilege_fleet.py): act as the
node's unprivileged user on a fleet host, plant recording programs, watch every process's command line for
secrets, snapshot trees to prove decoys untouched, craft evil packages, and read the file table of
docs/operations.md.  Stdlib only."""
from __future__ import annotations

import io
import os
import pwd
import re
import stat
import tarfile
import threading


# ----------------------------------------------------------------------------- acting as the app user

def as_user(fleet, host, user, script, input=None, timeout=60):
    """Run a shell script on ``host`` as ``user`` (runuser: no privileges of root's kept)."""
    return fleet.run(host, ["runuser", "-u", user, "--", "/bin/sh", "-c", script], check=False,
                     input=input, timeout=timeout)


def write_as(fleet, host, user, path, content, mode="755"):
    """Create ``path`` with ``content`` as ``user`` (making its directory); returns the CompletedProcess."""
    d = os.path.dirname(path)
    return as_user(fleet, host, user, f"mkdir -p '{d}' && cat > '{path}' && chmod {mode} '{path}'", input=content)


def recorder(record, then=None):
    """A shell program that appends ``id -u`` to ``record``, then optionally execs ``then`` with its args."""
    body = f"#!/bin/sh\nid -u >> '{record}' 2>/dev/null\n"
    if then:
        body += f"exec '{then}' \"$@\"\n"
    return body


def read_record(path):
    """The uids a recording program wrote (a list of str), or None when it never ran."""
    try:
        with open(path) as f:
            return [x.strip() for x in f.read().split() if x.strip()]
    except FileNotFoundError:
        return None


def uid_of(user):
    return pwd.getpwnam(user).pw_uid


# ----------------------------------------------------------------------------- secrets in argv

class ArgvWatch:
    """Samples /proc/*/cmdline of every process on this kernel (the fleet hosts are namespaces of it) in a
    thread and keeps those whose command line holds one of ``secrets``, except the nodes' own VMs (the
    release's start script puts -setcookie on the node's command line: a documented limit), recognised by
    ``-sname``/``-name`` NODE with NODE one of ``node_names``, and run_erl."""

    def __init__(self, secrets=(), node_names=(), interval=0.01):
        self.secrets = set(secrets)
        self.node_names = set(node_names)
        self.interval = interval
        self.hits = {}          # (pid, secret label) -> argv with secrets masked
        self.samples = 0
        self._stop = threading.Event()
        self._thread = None
        self._labels = {}

    def add(self, secret, label):
        self._labels[secret] = label
        self.secrets.add(secret)

    def _is_node(self, argv):
        if argv and os.path.basename(argv[0]) == "run_erl":
            return True
        # the start script may run the VM through `sh -c "... -sname NODE ..."`: look at the words of every arg
        argv = " ".join(argv).replace("\\", "").split()
        for i, a in enumerate(argv[:-1]):
            if a in ("-sname", "--sname", "-name", "--name"):
                nxt = argv[i + 1]
                if any(nxt == n or nxt.startswith(n + "@") for n in self.node_names):
                    return True
        return False

    def scan_once(self):
        me = os.getpid()
        for d in os.listdir("/proc"):
            if not d.isdigit() or int(d) == me:
                continue
            try:
                with open(f"/proc/{d}/cmdline", "rb") as f:
                    raw = f.read()
            except OSError:
                continue
            if not raw:
                continue
            text = raw.decode("utf-8", "replace")
            found = [s for s in list(self.secrets) if s in text]
            if not found:
                continue
            argv = text.split("\0")
            if self._is_node(argv):
                continue
            masked = text
            for s in self.secrets:
                masked = masked.replace(s, "<" + self._labels.get(s, "SECRET") + ">")
            for s in found:
                self.hits.setdefault((int(d), self._labels.get(s, "secret")), masked.replace("\0", " ")[:400])
        self.samples += 1

    def _run(self):
        while not self._stop.is_set():
            try:
                self.scan_once()
            except Exception:  # a process vanishing mid-scan; never stop watching
                pass
            self._stop.wait(self.interval)

    def start(self):
        self._thread = threading.Thread(target=self._run, name="argv-watch", daemon=True)
        self._thread.start()
        return self

    def stop(self):
        self._stop.set()
        if self._thread:
            self._thread.join(5)


# ----------------------------------------------------------------------------- snapshots

def snapshot(base, skip=(), contents=False):
    """{relpath: (type, uid, gid, mode, size, mtime_ns[, content])} of everything below ``base`` (links not
    followed), leaving out relpaths in ``skip`` and everything below them."""
    base = str(base)
    out = {}
    skip = tuple(s.rstrip("/") for s in skip)

    def skipped(rel):
        return any(rel == s or rel.startswith(s + "/") for s in skip)

    for dp, dns, fns in os.walk(base):
        reld = os.path.relpath(dp, base)
        dns[:] = [d for d in dns if not skipped(os.path.normpath(os.path.join(reld, d)))]
        for n in dns + fns:
            p = os.path.join(dp, n)
            rel = os.path.normpath(os.path.join(reld, n))
            if skipped(rel):
                continue
            try:
                st = os.lstat(p)
            except FileNotFoundError:
                continue
            # a fifo or socket (run_erl's pipes) is never opened: opening a fifo waits for a writer
            kind = "l" if stat.S_ISLNK(st.st_mode) else "d" if stat.S_ISDIR(st.st_mode) else \
                "f" if stat.S_ISREG(st.st_mode) else "s"
            row = (kind, st.st_uid, st.st_gid, oct(st.st_mode), st.st_size,
                   st.st_mtime_ns if kind == "f" else 0)
            if contents and kind == "f" and st.st_size < (1 << 20):
                try:
                    with os.fdopen(os.open(p, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK), "rb") as f:
                        row += (f.read(),)
                except OSError:
                    pass
            out[rel] = row
    st = os.lstat(base)
    out["."] = ("d", st.st_uid, st.st_gid, oct(st.st_mode), 0, 0)
    return out


def diff_snapshots(before, after):
    """Lines naming what appeared, vanished or changed (owner, mode, size, content)."""
    lines = []
    for k in sorted(set(before) | set(after)):
        a, b = before.get(k), after.get(k)
        if a == b:
            continue
        if a is None:
            lines.append(f"new: {k} {b[:4]}")
        elif b is None:
            lines.append(f"gone: {k}")
        else:
            lines.append(f"changed: {k} {a[:5]} -> {b[:5]}")
    return lines


def files_holding(paths_or_dirs, needle: bytes, skip=(), max_size=1 << 20, max_depth=6):
    """Regular files (not followed through links) below the given places whose content holds ``needle``."""
    hits = []
    skip = tuple(str(s).rstrip("/") for s in skip)
    for top in paths_or_dirs:
        top = str(top)
        if not os.path.lexists(top):
            continue
        depth0 = top.rstrip("/").count("/")
        for dp, dns, fns in os.walk(top):
            if any(dp == s or dp.startswith(s + "/") for s in skip):
                dns[:] = []
                continue
            if dp.count("/") - depth0 >= max_depth:
                dns[:] = []
            for n in fns:
                p = os.path.join(dp, n)
                if any(p == s or p.startswith(s + "/") for s in skip):
                    continue
                try:
                    st = os.lstat(p)
                    if not stat.S_ISREG(st.st_mode) or st.st_size > max_size:
                        continue
                    with open(p, "rb") as f:
                        if needle in f.read():
                            hits.append(p)
                except OSError:
                    continue
    return hits


# ----------------------------------------------------------------------------- evil packages

def rewrite_version(src_pkg, dst_pkg, old_vsn, new_vsn, app, extra_members=()):
    """Copy the upgrade package ``src_pkg`` to ``dst_pkg`` as release version ``new_vsn`` (releases/OLD -> NEW,
    the .rel renamed and the release's version in it rewritten; lib/ and the applications' versions untouched, so
    the package stays installable), then append ``extra_members``:
    [(TarInfo, bytes-or-None)]."""
    with tarfile.open(src_pkg, "r:*") as tin, tarfile.open(dst_pkg, "w:gz") as tout:
        for m in tin.getmembers():
            data = tin.extractfile(m).read() if m.isfile() else None
            name = m.name
            name = name.replace(f"releases/{old_vsn}/", f"releases/{new_vsn}/")
            if name.rstrip("/") == f"releases/{old_vsn}":
                name = f"releases/{new_vsn}"
            if name == f"releases/{app}-{old_vsn}.rel":
                name = f"releases/{app}-{new_vsn}.rel"
                # the release's own version only ({"APP","OLD"}), not the application's ({APP,"OLD"})
                pat = rb'(\{\s*"' + re.escape(app.encode()) + rb'"\s*,\s*")' + re.escape(old_vsn.encode()) + rb'"'
                data = re.sub(pat, rb"\g<1>" + new_vsn.encode() + rb'"', data)
            m2 = tarfile.TarInfo(name)
            m2.type, m2.mode, m2.mtime, m2.linkname = m.type, m.mode, m.mtime, m.linkname
            if data is not None:
                m2.size = len(data)
                tout.addfile(m2, io.BytesIO(data))
            else:
                tout.addfile(m2)
        for ti, data in extra_members:
            if data is not None:
                ti.size = len(data)
                tout.addfile(ti, io.BytesIO(data))
            else:
                tout.addfile(ti)


def symlink_member(name, target):
    ti = tarfile.TarInfo(name)
    ti.type, ti.linkname, ti.mode = tarfile.SYMTYPE, target, 0o777
    return ti, None


def hardlink_member(name, target):
    ti = tarfile.TarInfo(name)
    ti.type, ti.linkname, ti.mode = tarfile.LNKTYPE, target, 0o644
    return ti, None


def dir_member(name):
    ti = tarfile.TarInfo(name)
    ti.type, ti.mode = tarfile.DIRTYPE, 0o755
    return ti, None


# ----------------------------------------------------------------------------- docs/operations.md file table

def file_table(md_text, heading="Files the collection writes on a target"):
    """Rows of the first markdown table after ``heading``: [{"cells": {col: text}, "line": raw}] with the
    header's column names lowercased.  Tolerant: any heading level, extra columns, missing trailing pipes."""
    lines = md_text.splitlines()
    start = next((i for i, line in enumerate(lines) if line.lstrip("#").strip().lower().startswith(heading.lower())
                  and line.startswith("#")), None)
    if start is None:
        return None
    i = start + 1
    while i < len(lines) and not lines[i].lstrip().startswith("|"):
        if lines[i].startswith("#"):
            return None
        i += 1
    table = []
    while i < len(lines) and lines[i].lstrip().startswith("|"):
        table.append(lines[i])
        i += 1
    if len(table) < 2:
        return None

    def cells(line):
        # split on | not inside backticks
        out, cur, tick = [], "", False
        for ch in line.strip().strip("|"):
            if ch == "`":
                tick = not tick
            if ch == "|" and not tick:
                out.append(cur.strip())
                cur = ""
            else:
                cur += ch
        out.append(cur.strip())
        return out

    header = [c.lower() for c in cells(table[0])]
    rows = []
    for line in table[2:]:
        cs = cells(line)
        rows.append({"cells": {header[j]: cs[j] if j < len(cs) else "" for j in range(len(header))}, "line": line})
    return rows


def expand_row_paths(path_cell):
    """`A/b`, `c` -> ["A/b", "A/c"]: later names in one cell are siblings of the first."""
    items = re.findall(r"`([^`]+)`", path_cell) or [path_cell.strip()]
    first = items[0].strip()
    out = [first]
    base = os.path.dirname(first.rstrip("/"))
    for it in items[1:]:
        it = it.strip()
        if "/" in it.rstrip("/") and not it.startswith("."):
            out.append(it)
        else:
            out.append(os.path.join(base, it))
    return out


def parse_mode(cell):
    m = re.search(r"\b0?([0-7]{3,4})\b", cell)
    return int(m.group(1), 8) if m else None


def parse_owner(cell):
    c = cell.replace("`", "").strip()
    return c.split()[0] if c else ""
