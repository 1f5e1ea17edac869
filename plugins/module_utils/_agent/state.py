"""The root's state: the lock, the JSON-lines journal, repairs of RELEASES and the boot files,
`host_state` (what runs, what is permanent, what is unpacked) that every plan depends on, and whether a
root is installed (the agent's own records) or may take a first install (new, empty or agent-made).
"""

import datetime
import errno
import fcntl
import json
import os
import pwd
import stat

from .errors import OpFailed
from .names import is_system_dir, valid_version, vsn_key
from .erlterms import check_release_names, parse_rel, permanent_version, TermError
from .files import rmtree, safe_open_dir, safe_read, safe_rmtree, safe_write


class Lock:
    """The root's exclusive lock (``.hotswap/lock``, flock): a second agent fails at once, naming the holder."""
    def __init__(self, host, cmd):
        self.host = host
        self.cmd = cmd
        self.fh = None

    def __enter__(self):
        if getattr(self.host, "lock_depth", 0):  # already held by this agent (cli.run takes it first)
            self.host.lock_depth += 1
            return self
        self.host.ensure_hs()
        path = os.path.join(self.host.hs, "lock")
        fh = os.fdopen(os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600), "a+")
        os.chmod(path, 0o600)
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise
            fh.seek(0)
            holder = fh.read().strip()
            fh.close()
            try:
                h = json.loads(holder)
                who = f"pid {h.get('pid')} running {h.get('cmd')!r} since {h.get('since')}"
            except ValueError:
                who = "an unknown process"
            raise OpFailed(f"another agent holds {path}: {who}; wait for it to finish (do not delete the lock)",
                           lock_holder=holder)
        fh.seek(0)
        fh.truncate()
        fh.write(json.dumps({"pid": os.getpid(), "cmd": self.cmd,
                             "since": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}))
        fh.flush()
        self.fh = fh
        self.host.lock_depth = 1
        return self

    def __exit__(self, *exc):
        if self.fh is None and getattr(self.host, "lock_depth", 0):
            self.host.lock_depth -= 1
            return False
        self.host.lock_depth = 0
        if self.fh:
            try:
                self.fh.seek(0)
                self.fh.truncate()
                fcntl.flock(self.fh.fileno(), fcntl.LOCK_UN)
            finally:
                self.fh.close()
        return False


JOURNAL_KEYS = ("op", "version", "from", "to", "result", "changed", "failed", "reverted", "mode",
                "host_version", "total_ms", "install_ms", "downtime_ms", "start_ms", "rpc_calls", "stage",
                "removed", "msg")


def journal(host, entry):
    """Append one operation's outcome to ``.hotswap/journal.jsonl`` (known keys only; never the settings)."""
    if not os.path.isdir(host.hs):
        return
    rec = {"ts": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds")}
    rec.update({k: entry[k] for k in JOURNAL_KEYS if k in entry and entry[k] is not None})
    try:
        path = os.path.join(host.hs, "journal.jsonl")
        with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600), "a", encoding="utf-8") as fh:
            fh.write(json.dumps(rec, sort_keys=True) + "\n")
        os.chmod(path, 0o600)
    except OSError:
        pass


def drop_stale_staging(h):
    """Staging dirs (``staging-PID``) that an agent killed mid-operation left in the agent's directory: removed
    when their agent is gone (its pid dead, or the dir older than this agent's process).  Call it holding the
    lock, before a write operation."""
    try:
        names = os.listdir(h.hs)
    except OSError:
        return []
    try:
        me = os.stat(f"/proc/{os.getpid()}").st_mtime
    except OSError:
        me = None
    dropped = []
    for n in names:
        pid = n.rpartition("-")[2]
        if not n.startswith("staging") or pid == str(os.getpid()):
            continue
        try:
            alive = pid.isdigit() and (os.kill(int(pid), 0) or True)
        except ProcessLookupError:
            alive = False
        except PermissionError:
            alive = True
        try:
            old = me is not None and os.lstat(os.path.join(h.hs, n)).st_mtime < me
        except OSError:
            continue
        if not alive or old:
            rmtree(os.path.join(h.hs, n))
            dropped.append(n)
    return dropped


def start_erl_checked(h):
    """releases/start_erl.data as {"erts", "version"}, or None when missing or when either is not a valid
    version (the file belongs to the node's user: what it names becomes a path)."""
    se = h.start_erl()
    if se and valid_version(se.get("erts")) and valid_version(se.get("version")):
        return se
    return None


def releases_from_disk(h):
    """Every complete release on disk, newest first: releases/V/APP.rel naming APP V, its boot
    script, its lib dirs and its ERTS present.  Returns parsed .rel dicts (names validated, read no-follow)."""
    out = []
    try:
        names = os.listdir(h.rel_dir)
    except OSError:
        return out
    for v in names:
        d = h.p("releases", v)
        if not valid_version(v):
            continue
        raw = safe_read(h.root, f"releases/{v}/{h.app}.rel", limit=1 << 20)
        if raw is None:
            continue
        try:
            rel = parse_rel(raw.decode("utf-8"))
        except (TermError, ValueError, UnicodeDecodeError):
            continue
        if rel["version"] != v or rel["name"] != h.app or not os.path.isfile(os.path.join(d, "start.boot")):
            continue
        if any(not os.path.isdir(h.p("lib", ln)) for ln in _rel_libs(rel)) or not os.path.isdir(h.p(f"erts-{rel['erts']}")):
            continue
        out.append(rel)
    return sorted(out, key=lambda r: vsn_key(r["version"]), reverse=True)


def _set_aside(h, name):
    """Keep a copy of a damaged releases/NAME (read without following links) under the agent's directory for
    a human (root-only, 0600); returns its path."""
    h.ensure_hs()
    data = safe_read(h.root, f"releases/{name}", limit=16 << 20)
    if data is None:
        return None
    dst = f"{name}.damaged-{datetime.datetime.now().strftime('%Y%m%dT%H%M%S')}"
    return safe_write(h.hs, dst, data, mode=0o600)


def repair_releases(h, up):
    """releases/RELEASES exists but cannot be parsed: rebuild it.  Node up: from release_handler's
    in-memory list (what it would write itself); if that is unusable, remove the file so the node
    recreates it (create_RELEASES + release_handler restart, as for a missing file).  Node down:
    from the complete releases on disk (permanent: start_erl.data's if complete, else the newest).
    Returns the list of repairs made (empty when the file is fine or missing)."""
    f = os.path.join(h.rel_dir, "RELEASES")
    if not os.path.exists(f):
        return []
    try:
        h.releases()
        return []
    except OpFailed as e:
        err = e.msg
    aside = _set_aside(h, "RELEASES")
    if up:
        try:
            r = h.rpc("dump_releases", timeout=60)
        except OpFailed as e2:
            r = {"ok": False, "error": e2.msg}
        rels = []
        for x in r.get("releases") or []:
            try:  # the node's reply becomes paths: the same name rules as for RELEASES
                check_release_names(f"release_handler's entry {x.get('version')!r}", x.get("version"), x.get("erts"),
                                    [tuple(lib) for lib in x.get("libs") or []])
                ok = isinstance(x["name"], str) and bool(x["libs"]) and x["status"] in ("permanent", "current", "old", "unpacked")
            except (TermError, TypeError, KeyError, AttributeError, IndexError):
                ok = False
            if not ok:
                rels = []
                break
            rels.append({"name": x["name"], "version": x["version"], "erts": x["erts"],
                         "status": "unpacked" if x["status"] == "current" else x["status"],
                         "libs": [tuple(lib) for lib in x["libs"]]})
        if r.get("ok") and rels and sum(1 for x in rels if x["status"] == "permanent") == 1:
            h.write_releases(rels)
            return [f"releases/RELEASES was unreadable ({err}): rewritten from release_handler's list "
                    f"({', '.join(x['version'] + ' ' + x['status'] for x in rels)}); damaged copy: {aside}"]
        safe_rmtree(h.root, "releases/RELEASES")
        return [f"releases/RELEASES was unreadable ({err}) and release_handler's list is unusable: removed, the "
                f"node recreates it from its boot release; damaged copy: {aside}"]
    disk = releases_from_disk(h)
    if not disk:
        raise OpFailed(f"{f} is unreadable ({err}) and no complete release is on disk to rebuild it from")
    se = (start_erl_checked(h) or {}).get("version")
    perm = se if any(r["version"] == se for r in disk) else disk[0]["version"]
    h.write_releases([_releases_entry(h, r, "permanent" if r["version"] == perm else "old") for r in disk])
    return [f"releases/RELEASES was unreadable ({err}): rebuilt from the releases on disk "
            f"({', '.join(r['version'] for r in disk)}; {perm} permanent); damaged copy: {aside}"]


def repair_boot_files(h):
    """Node down, before a start: make RELEASES and start_erl.data name a release that can boot.
    start_erl.data naming a version whose releases/V is gone (or incomplete) is pointed at RELEASES'
    permanent entry, or else the newest complete release on disk.  Returns the repairs made."""
    repaired = repair_releases(h, up=False)
    rels = h.releases()
    disk = {r["version"]: r for r in releases_from_disk(h)}
    if rels is None:
        if not disk:
            return repaired
        se = (start_erl_checked(h) or {}).get("version")
        newest = sorted(disk, key=vsn_key)[-1]
        perm = se if se in disk else newest
        rels = [_releases_entry(h, disk[v], "permanent" if v == perm else "old")
                for v in sorted(disk, key=vsn_key, reverse=True)]
        h.write_releases(rels)
        repaired.append(f"releases/RELEASES was missing: rebuilt from the releases on disk ({perm} permanent)")
    perm = permanent_version(rels)
    se = start_erl_checked(h)
    sev = (se or {}).get("version")
    if sev in disk and (se or {}).get("erts") == disk[sev]["erts"]:
        return repaired
    listed = [r["version"] for r in rels]
    if perm in disk:
        target = perm
    else:
        cands = sorted((v for v in disk if v in listed), key=vsn_key) or sorted(disk, key=vsn_key)
        if not cands:
            raise OpFailed(f"start_erl.data names {sev}, which is not on disk, and no complete release is: "
                           f"nothing can boot (first-install again)")
        target = cands[-1]
    if target not in listed:
        rels.append(_releases_entry(h, disk[target], "old",
                                    all(not d.startswith("/") for r in rels for _ign, _ign, d in r["libs"])))
        h.write_releases(rels)
    why = "is missing or invalid" if se is None else f"names {sev}, but releases/{sev} is missing or incomplete"
    _make_permanent_offline(h, target)
    repaired.append(f"start_erl.data {why}: now {disk[target]['erts']} {target}"
                    + (f" ({target} made permanent, was {perm})" if target != perm else ""))
    return repaired


def host_state(h):
    """What runs: RELEASES (or why it cannot be read), start_erl.data, node up, OS pid, boot, running,
    permanent, current -- the part of `status` a plan depends on, without its slower extras."""
    releases_error = None
    try:
        rels = h.releases()
    except OpFailed as e:  # report, do not crash: `hot`/`start` repair it
        rels, releases_error = None, e.msg
    se = h.start_erl()
    up = h.node_up()
    pid, boot = h.os_pid() if up else (None, None)
    perm = permanent_version(rels)
    running = current = None
    if up and releases_error:
        try:  # the file cannot tell: ask release_handler (one rpc, only in this case)
            info = h.rpc("info", timeout=30)
            running, perm = info.get("running"), info.get("permanent")
        except OpFailed:
            running = None
    if up:
        rec = h.installed_record()
        if running is None and rec and rec.get("version") != perm and rec.get("os_pid") == pid:
            try:  # an uncommitted install: RELEASES on disk never says 'current', ask the node
                info = h.rpc("info", timeout=30)
                running = info.get("running")
                perm = info.get("permanent") or perm
            except OpFailed:
                running = None
        if running is None:
            running = perm or boot or (se or {}).get("version")
        if running != perm:
            current = running
    return {"rels": rels, "releases_error": releases_error, "se": se, "up": up, "pid": pid, "boot": boot,
            "perm": perm, "running": running, "current": current}


def running_and_permanent(h, rels):
    """(running, permanent, node up, OS pid) of a root whose RELEASES was read as ``rels``: the running
    release is the one the agent last installed into this very OS process, else the permanent one (else
    the boot release).  ``host_state`` gives the fuller answer a plan needs (it may ask the node)."""
    perm = permanent_version(rels)
    if not h.node_up():
        return None, perm, False, None
    rec = h.installed_record()
    pid, boot = h.os_pid()
    running = rec["version"] if rec and rec.get("os_pid") == pid else (perm or boot)
    return running, perm, True, pid


def _make_permanent_offline(h, old):
    """With the node down, make OLD the permanent release in RELEASES and start_erl.data."""
    rels = h.releases()
    if rels is None:
        raise OpFailed("RELEASES is missing: cannot revert cold")
    entry = next((r for r in rels if r["version"] == old), None)
    if entry is None:
        raise OpFailed(f"{old} is not in RELEASES: nothing to revert to")
    for r in rels:
        if r["version"] == old:
            r["status"] = "permanent"
        elif r["status"] in ("permanent", "current"):
            r["status"] = "old"
    h.write_releases(rels)
    h.write_owned(os.path.join(h.rel_dir, "start_erl.data"), f"{entry['erts']} {old}\n")


def _rel_libs(rel):
    return [f"{a}-{v}" for a, v in rel["apps"]]


def _releases_entry(h, rel, status, relative=True):
    libs = [(a, v, f"lib/{a}-{v}" if relative else h.p("lib", f"{a}-{v}")) for a, v in rel["apps"]]
    return {"name": rel["name"], "version": rel["version"], "erts": rel["erts"], "libs": libs, "status": status}


def installed_by_agent(h):
    """The agent's own (root-owned) records say this root holds an installation: a package checksum recorded
    under unpacked/, or installed.json.  Unlike RELEASES or bin/APP, the node's user cannot delete these."""
    try:
        recs = os.listdir(os.path.join(h.hs, "unpacked"))
    except OSError:
        recs = []
    return bool(recs) or os.path.exists(os.path.join(h.hs, "installed.json"))


def check_first_install_root(h, owner, retry, create=False):
    """A first install goes only into a directory that does not exist (made here, 0750), an empty one, or
    one an interrupted first install of this agent made (``retry``); never a system directory or a user's
    home.  ``create``: make it when missing, and give the directory itself (only it) to the node's user."""
    norm, real = os.path.normpath(h.root), os.path.realpath(h.root)
    homes = {}
    for pw in pwd.getpwall():
        if pw.pw_dir and pw.pw_dir != "/":
            homes.setdefault(os.path.normpath(pw.pw_dir), pw)
    why = None
    for r in (norm, real):
        if is_system_dir(r):
            why = "is a system directory"
        elif r in homes and (homes[r].pw_uid != owner[0] or (os.path.isdir(r) and os.listdir(r))):
            why = f"is the home directory of user {homes[r].pw_name}"
    if why:
        raise OpFailed(f"hotswap_root {h.root} {why}: a first install only goes into a directory of its own "
                       f"(for example /opt/{h.app}); nothing changed", changed=False)
    try:
        st = os.lstat(h.root)
    except FileNotFoundError:
        if not create:
            return
        os.makedirs(os.path.dirname(h.root), mode=0o755, exist_ok=True)
        os.mkdir(h.root, 0o750)
        st = os.lstat(h.root)
    if not stat.S_ISDIR(st.st_mode):
        raise OpFailed(f"hotswap_root {h.root} is a symbolic link or not a directory: a first install needs a new "
                       f"or empty directory; nothing changed", changed=False)
    left = sorted(os.listdir(h.root))
    if left and not retry:
        raise OpFailed(f"hotswap_root {h.root} is not empty ({len(left)} entries: {', '.join(left[:5])}) and no "
                       f"earlier first install of this agent made it: a first install only goes into a new or "
                       f"empty directory; empty it or choose another hotswap_root; nothing changed", changed=False)
    if create:
        fd = safe_open_dir(h.root)  # O_NOFOLLOW: the directory itself, never what a link names
        try:
            if os.geteuid() == 0:
                os.fchown(fd, *owner)
            if not left:
                os.fchmod(fd, 0o750)
        finally:
            os.close(fd)
