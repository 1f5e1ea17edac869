# -*- coding: utf-8 -*-
# Copyright (c) beam.hotswap contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Build on the build host: mix release, appups, relup, packages, manifest, store.

The store keeps every published version as ``STORE/APP/VSN/`` with the retained release tree
(``release/``), the full tarball, the upgrade package and ``manifest.json``. Relups are always built
from retained trees, never by rebuilding an old ref.

The store is private to the build user (the user the build runs as: mix runs as that same user, so it
owns everything below the store): ``STORE``, ``STORE/APP`` and every directory the build makes are 0700,
the files it writes (tarballs, manifest) 0600. The full tarball and the release tree hold the release's
default cookie (``releases/COOKIE``); what mix makes below ``STORE/APP`` keeps mix's modes (they go into
the tarballs as they are) and is shut off from other users by the 0700 directories above it.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import glob
import gzip
import hashlib
import json
import os
import re
import shutil
import stat
import tarfile
import tempfile
import time

from ansible_collections.beam.hotswap.plugins.module_utils import _appup, _beam, _deps
from ansible_collections.beam.hotswap.plugins.module_utils._agent import fingerprint as _fingerprint
from ansible_collections.beam.hotswap.plugins.module_utils._agent import erlterms
from ansible_collections.beam.hotswap.plugins.module_utils._agent.errors import PackageRefused
from ansible_collections.beam.hotswap.plugins.module_utils._agent.files import member_rel, sha256_file
from ansible_collections.beam.hotswap.plugins.module_utils._agent.names import valid_app, valid_version
from ansible_collections.beam.hotswap.plugins.module_utils._manifest import SCHEMA

SOURCE_EXCLUDE = frozenset(["_build", "deps", ".git", ".elixir_ls", "node_modules", ".hotswap"])
PRIVATE_DIR = 0o700
PRIVATE_FILE = 0o600
# a cookie shorter than this is not hidden in the build's output (it would mask ordinary words there)
MIN_SECRET = 8


class BuildError(Exception):
    """A build that cannot go on; the message says what is wrong and what to do."""


def check_name(app):
    if not valid_app(app):
        raise BuildError("hotswap_app %r is not a valid release name: use lower-case letters, digits and "
                         "underscores, starting with a letter (as in `releases: [my_app: ...]`)" % (app,))


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _strip_ansi(text):
    return _ANSI.sub("", text)


def project_tool(src):
    """``mix`` (a mix.exs) or ``rebar3`` (a rebar.config with a relx section) for the project in ``src``;
    BuildError naming what to do for anything else."""
    if os.path.isfile(os.path.join(src, "mix.exs")):
        return "mix"
    path = os.path.join(src, "rebar.config")
    if os.path.isfile(path):
        with open(path, encoding="utf-8", errors="replace") as f:
            text = "\n".join(line.split("%", 1)[0] for line in f.read().splitlines())
        if re.search(r"\{\s*relx\s*,", text):
            return "rebar3"
        raise BuildError("rebar.config in the source has no relx section: add one naming the release, e.g. "
                         "{relx, [{release, {my_app, \"0.1.0\"}, [my_app, sasl]}]}")
    raise BuildError("no mix.exs and no rebar.config in the source: hotswap_source must be the root of a Mix "
                     "project or of a rebar3 project with a relx release")


def check_version(vsn, what="version"):
    if not valid_version(vsn):
        raise BuildError("%s %r is not a valid release version: use letters, digits and . _ + - only "
                         "(for example 1.4.2)" % (what, vsn))


# -- private files and directories (the store on the build host, the artifacts and reports on the controller)

def make_private(path, check=False):
    """Take the group and other permission bits off ``path`` (a link is never followed nor changed);
    True when it had any (in check mode: when it would be changed). A missing path is left alone.
    Raises OSError (EPERM) when the path belongs to another user."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    if stat.S_ISLNK(st.st_mode) or not stat.S_IMODE(st.st_mode) & 0o077:
        return False
    if check:
        if os.geteuid() not in (0, st.st_uid):
            raise PermissionError(1, "Operation not permitted", path)
        return True
    mode = stat.S_IMODE(st.st_mode) & ~0o077
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        # not readable by its owner (a file without the r bit): chmod by name (lstat said: no link)
        os.chmod(path, mode)
        return True
    try:
        fst = os.fstat(fd)
        if (fst.st_dev, fst.st_ino) != (st.st_dev, st.st_ino):
            return False        # replaced meanwhile: the next run looks again
        os.fchmod(fd, mode)
    finally:
        os.close(fd)
    return True


def dedicated_dir(path, entry_ok):
    """Whether ``path`` is a directory of the collection's own, so that its mode is ours to set: never ``/``, a
    top-level directory (``/srv``, ``/opt``, ``/tmp``), a sticky one or the home directory, and every entry in it
    passes ``entry_ok(name, full path)`` (a store directory set to ``/var/lib`` keeps its mode)."""
    norm = os.path.normpath(os.path.abspath(path))
    if os.path.dirname(norm) in ("/", "//") or norm in ("/", "//", os.path.normpath(os.path.expanduser("~"))):
        return False
    try:
        st = os.lstat(norm)
    except OSError:
        return False
    if not stat.S_ISDIR(st.st_mode) or st.st_mode & stat.S_ISVTX:
        return False
    return all(entry_ok(n, os.path.join(norm, n)) for n in os.listdir(norm))


def private_makedirs(path):
    """``os.makedirs(path, exist_ok=True)`` where every directory it creates is 0700; directories that are
    there already are left as they are."""
    if os.path.isdir(path):
        return path
    parent = os.path.dirname(os.path.normpath(path))
    if parent and parent != path and not os.path.isdir(parent):
        private_makedirs(parent)
    try:
        os.mkdir(path, PRIVATE_DIR)
    except FileExistsError:
        if not os.path.isdir(path):
            raise
        return path
    os.chmod(path, PRIVATE_DIR)     # whatever the umask
    return path


def open_private(path, binary=False):
    """A new file object writing ``path`` (created or truncated) with mode 0600."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0),
                 PRIVATE_FILE)
    try:
        os.fchmod(fd, PRIVATE_FILE)  # a file that was there keeps its mode through O_CREAT
    except BaseException:
        os.close(fd)
        raise
    return os.fdopen(fd, "wb" if binary else "w")


def write_private(path, text):
    """Write ``text`` to ``path`` (0600) through a temporary file renamed over it."""
    with open_private(path + ".tmp") as f:
        f.write(text)
    os.replace(path + ".tmp", path)


def tree_digest(root, exclude=SOURCE_EXCLUDE):
    """A digest of a source tree's content (paths, executable bits, bytes); noise dirs excluded."""
    h = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in exclude)
        for fn in sorted(filenames):
            full = os.path.join(dirpath, fn)
            if os.path.islink(full) or not os.path.isfile(full):
                continue
            rel = os.path.relpath(full, root)
            h.update(rel.encode("utf-8") + b"\0")
            h.update(b"x" if os.access(full, os.X_OK) else b"-")
            h.update(sha256_file(full).encode("ascii"))
    return h.hexdigest()


def deterministic_tar(out_path, base_dir, members):
    """Write a gzip'd tar of ``members`` (paths relative to ``base_dir``) that is byte-identical
    for identical content: sorted entries, zero mtimes and owners."""
    def reset(ti):
        ti.mtime = 0
        ti.uid = ti.gid = 0
        ti.uname = ti.gname = ""
        return ti

    entries = []
    for m in members:
        full = os.path.join(base_dir, m)
        entries.append(m)
        if os.path.isdir(full) and not os.path.islink(full):
            for dirpath, dirnames, filenames in os.walk(full):
                dirnames.sort()
                for name in dirnames + sorted(filenames):
                    entries.append(os.path.relpath(os.path.join(dirpath, name), base_dir))
    tmp = out_path + ".tmp"
    with open_private(tmp, binary=True) as raw:
        with gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz:
            with tarfile.open(fileobj=gz, mode="w", format=tarfile.GNU_FORMAT) as tar:
                for rel in sorted(set(entries)):
                    tar.add(os.path.join(base_dir, rel), arcname=rel, recursive=False, filter=reset)
    os.replace(tmp, out_path)


def read_rel(path):
    """Parse a ``.rel`` file: returns (name, vsn, erts_vsn, {app: vsn})."""
    with open(path) as f:
        rel = erlterms.parse_rel(f.read())
    return rel["name"], rel["version"], rel["erts"], dict(rel["apps"])


def release_fingerprint(rel_dir, app, vsn):
    """What decides hot or cold for a built release tree."""
    name, rvsn, erts, apps = read_rel(os.path.join(rel_dir, "releases", vsn, app + ".rel"))
    files = {}
    for rel in ("releases/%s/vm.args" % vsn, "releases/%s/env.sh" % vsn, "releases/%s/sys.config.src" % vsn,
                "releases/%s/vm.args.src" % vsn, "bin/%s" % app):
        full = os.path.join(rel_dir, rel)
        if os.path.isfile(full):
            with open(full, "rb") as f:
                data = f.read()
            if rel.startswith("bin/"):
                # relx's start script names its own version (REL_VSN="1.0.0"): the same script otherwise
                data = data.replace(b'"%s"' % vsn.encode(), b'"@VSN@"')
            files[rel.replace("/%s/" % vsn, "/VSN/")] = hashlib.sha256(data).hexdigest()
    nifs = {}
    lib = os.path.join(rel_dir, "lib")
    for app_dir in sorted(os.listdir(lib)) if os.path.isdir(lib) else []:
        priv = os.path.join(lib, app_dir, "priv")
        app_name = app_dir.rsplit("-", 1)[0]
        for dirpath, _dirs, filenames in os.walk(priv):
            for fn in filenames:
                if fn.endswith(".so"):
                    full = os.path.join(dirpath, fn)
                    nifs["lib/%s/%s" % (app_name, os.path.relpath(full, os.path.join(lib, app_dir)))] = sha256_file(full)
    return {"erts": erts, "apps": apps, "files": files, "nifs": nifs}


class Store(object):
    """The build host's artifact store for one app."""

    def __init__(self, root, app):
        self.base = root
        self.root = os.path.join(root, app)
        self.app = app

    def ensure(self, *parts):
        """Make ``STORE/APP/PARTS...`` (and the store itself) when missing, each directory 0700."""
        return private_makedirs(os.path.join(self.root, *parts))

    def secure(self, check=False):
        """Take the group and other permission bits off what an older collection left open: the store, STORE/APP,
        each entry of it (versions, staging and work directories) and what sits directly in those (tarballs,
        manifest.json, release/, appups/, src/, deps/). What lies deeper (mix's release tree, sources,
        dependencies) keeps its modes, shut off by these directories. Returns (changed paths, warnings); in
        check mode nothing is changed and the paths are those that would be."""
        fixed, warnings = [], []
        todo = [self.root]
        if dedicated_dir(self.base, self._store_entry):
            todo.insert(0, self.base)
        elif os.path.isdir(self.base) and os.stat(self.base).st_mode & 0o007:
            warnings.append("the build store %s is open to other users and holds more than the stores of applications, "
                            "so the build leaves its mode alone; %s in it is private (0700): use a directory of its "
                            "own for hotswap_build_store (the default /var/lib/hotswap/store) to hide which "
                            "applications it holds" % (self.base, self.root))
        if os.path.isdir(self.root) and not os.path.islink(self.root):
            for n in sorted(os.listdir(self.root)):
                p = os.path.join(self.root, n)
                todo.append(p)
                if os.path.isdir(p) and not os.path.islink(p):
                    todo.extend(os.path.join(p, m) for m in sorted(os.listdir(p)))
        for p in todo:
            try:
                if make_private(p, check):
                    fixed.append(p)
            except OSError as e:
                if p == self.base:
                    # an administrator's shared store directory (group access is theirs to give): STORE/APP
                    # below it is private all the same
                    if os.lstat(p).st_mode & 0o007:
                        warnings.append("the build store %s is open to other users and the build user cannot change "
                                        "that (%s); %s below it is private (0700) all the same: chmod o-rwx %s "
                                        "to hide which applications it holds" % (p, e.strerror, self.root, p))
                else:
                    warnings.append("%s is open to other users and the build user cannot make it private (%s): "
                                    "chown -R it to the build user (or chmod go-rwx it)" % (p, e.strerror))
        return fixed, warnings

    def _store_entry(self, name, path):
        """An application's store in the store directory: STORE/APP/ with a work tree or published versions."""
        if not valid_app(name) or os.path.islink(path) or not os.path.isdir(path):
            return False
        return name == self.app or os.path.isdir(os.path.join(path, ".work")) or \
            any(os.path.isfile(os.path.join(path, v, "manifest.json")) for v in os.listdir(path))

    def vdir(self, vsn):
        return os.path.join(self.root, vsn)

    def release_dir(self, vsn):
        return os.path.join(self.vdir(vsn), "release")

    def manifest_path(self, vsn):
        return os.path.join(self.vdir(vsn), "manifest.json")

    def manifest(self, vsn):
        p = self.manifest_path(vsn)
        if not os.path.exists(p):
            return None
        with open(p) as f:
            return json.load(f)

    def versions(self):
        if not os.path.isdir(self.root):
            return []
        return sorted(v for v in os.listdir(self.root)
                      if not v.startswith(".") and os.path.exists(self.manifest_path(v)))

    def find_digest(self, digest):
        for v in self.versions():
            m = self.manifest(v)
            if m and m.get("source_digest") == digest:
                return v
        return None

    def retained(self, vsn):
        return os.path.isdir(os.path.join(self.release_dir(vsn), "releases", vsn))

    # Staging directories sit next to the versions, hidden (a leading dot) and named ``.KIND@VSN@random``
    # ('@' is never part of a version): a version appears under its own name only complete.
    def staging(self, vsn, kind):
        self.ensure()
        return tempfile.mkdtemp(prefix=".%s@%s@" % (kind, vsn), dir=self.root)

    def leftovers(self, vsn):
        """Staging directories of ``vsn`` (an interrupted build or extension left them)."""
        if not os.path.isdir(self.root):
            return []
        return sorted(os.path.join(self.root, n) for n in os.listdir(self.root)
                      if n.startswith(".") and "@%s@" % vsn in n and n.split("@")[1:2] == [vsn])

    def clear_staging(self, vsn):
        for p in self.leftovers(vsn):
            shutil.rmtree(p, ignore_errors=True)

    def replace(self, vsn, stage):
        """Put the complete ``stage`` in place of the published ``vsn`` (two renames; the old one is
        restored if the second fails)."""
        vdir = self.vdir(vsn)
        old = tempfile.mkdtemp(prefix=".old@%s@" % vsn, dir=self.root)
        os.rmdir(old)
        os.rename(vdir, old)
        try:
            os.rename(stage, vdir)
        except BaseException:
            os.rename(old, vdir)
            raise
        shutil.rmtree(old, ignore_errors=True)


def _app_dirs(rel_dir):
    """``{app: (vsn, lib dir)}`` for the applications the release's ``.rel`` names."""
    with open(os.path.join(rel_dir, "releases", "start_erl.data")) as f:
        vsn = f.read().split()[1]
    rel = [fn for fn in os.listdir(os.path.join(rel_dir, "releases", vsn)) if fn.endswith(".rel")]
    apps = read_rel(os.path.join(rel_dir, "releases", vsn, rel[0]))[3]
    return dict((name, (v, os.path.join(rel_dir, "lib", "%s-%s" % (name, v)))) for name, v in apps.items())


def app_mod(ebin_dir, name):
    """The Application callback module (``mod`` in ``NAME.app``) of a built application, or None."""
    path = os.path.join(ebin_dir, name + ".app")
    try:
        with open(path) as f:
            terms = erlterms.parse_terms(f.read())
    except (OSError, erlterms.TermError):
        return None
    for term in terms:
        if isinstance(term, tuple) and len(term) == 3 and isinstance(term[2], list):
            for item in term[2]:
                if isinstance(item, tuple) and len(item) == 2 and item[0] == "mod":
                    mod = item[1]
                    if isinstance(mod, tuple) and mod and isinstance(mod[0], str):
                        return str(mod[0])
    return None


def _app_vsn(app_file):
    """The ``vsn`` of an ``.app`` file, or None."""
    try:
        with open(app_file) as f:
            terms = erlterms.parse_terms(f.read())
    except (OSError, UnicodeDecodeError, erlterms.TermError):
        return None
    for term in terms:
        if isinstance(term, tuple) and len(term) == 3 and isinstance(term[2], list):
            for item in term[2]:
                if isinstance(item, tuple) and len(item) == 2 and item[0] == "vsn":
                    return item[1] if isinstance(item[1], str) else None
    return None


def _consolidated(rel_dir, vsn):
    return _beam.read_ebin(os.path.join(rel_dir, "releases", vsn, "consolidated"))


class EdgePlan(object):
    def __init__(self, base):
        self.base = base
        self.reasons = []
        self.app_edges = []       # AppEdge list
        self.consolidated_up = []
        self.consolidated_down = []
        self.not_applied = []     # what a hot upgrade over this edge leaves undone (human strings)
        self.notes = []           # what it does beyond loading code (human strings)
        self.warnings = []        # what may go wrong although the edge is hot (human strings)
        self.appups = {}          # {app: "project" | "shipped" | "generated"}: where each changed app's appup comes from

    @property
    def hot(self):
        return not self.reasons


def shipped_appup(ebin_dir, name):
    """The appup application ``name`` ships in ``ebin_dir`` (``NAME.appup`` that beam.hotswap did not write), as
    (parsed terms or None, error or None); (None, None) when it ships none."""
    path = os.path.join(ebin_dir, name + ".appup")
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        return None, None
    except (OSError, UnicodeDecodeError) as e:
        return None, "cannot be read (%s)" % e
    if text.startswith(_appup.GENERATED_MARK):
        return None, None
    try:
        return erlterms.parse_terms(text), None
    except erlterms.TermError as e:
        return None, "is not a list of Erlang terms file:consult reads (%s)" % e


STATE_INFO = "state-info.json"


def built_ebin(lib_dirs, name, vsn):
    """The ebin directory of application ``name`` at ``vsn`` in the first of the build's ``lib_dirs`` that holds
    that version (mix: ``_build/prod/lib``; rebar3: its profiles' lib and checkouts directories), or None."""
    for lib_dir in lib_dirs:
        ebin = os.path.join(lib_dir, name, "ebin")
        if os.path.isfile(os.path.join(ebin, name + ".app")) and _app_vsn(os.path.join(ebin, name + ".app")) == vsn:
            return ebin
    return None


def save_state_infos(lib_dirs, rel_dir, vdir):
    """Write ``vdir/state-info.json``: what the debug info of each application's process modules says about their
    state (:func:`_beam.state_infos`), read from what the build compiled (:func:`built_ebin`; the release's copies
    are stripped), for the application versions the release ``rel_dir`` holds. Later edges from or to this
    version compare them."""
    out = {}
    for name, (vsn, _d) in sorted(_app_dirs(rel_dir).items()):
        if name in _appup.SYSTEM_APPS:
            continue
        ebin = built_ebin(lib_dirs, name, vsn)
        infos = _beam.state_infos(ebin) if ebin else {}
        if infos:
            out[name] = {"vsn": vsn, "modules": dict((m, i.to_json()) for m, i in sorted(infos.items()))}
    write_private(os.path.join(vdir, STATE_INFO), json.dumps(out, indent=1, sort_keys=True))


REHEARSE_FILE = "hotswap_rehearse.config"


def rehearse_plan(vdir, new_dir, vsn):
    """{(direction, base): (modules to rehearse, passthrough modules)} for each edge of the relup in ``new_dir``, and
    ``releases/VSN/hotswap_rehearse.config`` written with it for the node: of the modules whose ``code_change`` the
    relup runs, those whose code_change returns the state it is given (``use GenServer``'s default, per the build's
    debug info) need no rehearsal on the host; the others (custom, absent, or unknown without debug info) do."""
    relup = os.path.join(new_dir, "releases", vsn, "relup")
    if not os.path.exists(relup):
        return {}
    with open(relup, encoding="utf-8") as f:
        [(_v, ups, downs)] = erlterms.parse_terms(f.read())
    try:
        with open(os.path.join(vdir, STATE_INFO)) as f:
            infos = json.load(f)
    except (OSError, ValueError):
        infos = {}
    cc = {}
    for app in infos.values():
        for mod, info in (app.get("modules") or {}).items():
            cc[mod] = info.get("code_change")
    out, terms = {}, []
    for direction, entries in (("up", ups), ("down", downs)):
        for base, _descr, instrs in entries:
            mods = []
            for i in instrs:
                if isinstance(i, tuple) and i and i[0] == "code_change":
                    mods += [m[0] if isinstance(m, tuple) else m for m in i[-1]]
            mods = sorted(set(str(m) for m in mods))
            keep = [m for m in mods if cc.get(m) != "passthrough"]
            out[(direction, str(base))] = (keep, [m for m in mods if m not in keep])
            terms.append((erlterms.Atom(direction), str(base), [erlterms.Atom(m) for m in keep]))
    # like the relup beside it: part of the release, read by the node (its user), nothing secret
    with open(os.path.join(new_dir, "releases", vsn, REHEARSE_FILE), "w", encoding="utf-8") as f:
        f.write(erlterms.format_term((erlterms.Atom("rehearse"), terms)) + ".\n")
    return out


def load_state_infos(vdir, name, vsn):
    """{module: StateInfo} of application ``name`` at ``vsn`` from ``vdir/state-info.json`` ({} when absent)."""
    try:
        with open(os.path.join(vdir, STATE_INFO)) as f:
            entry = json.load(f).get(name) or {}
    except (OSError, ValueError):
        return {}
    if entry.get("vsn") != vsn:
        return {}
    return dict((m, _beam.StateInfo.from_json(d)) for m, d in (entry.get("modules") or {}).items())


def plan_edge(store, app, new_vsn, new_dir, base, user_appups, children_of=None):
    """Work out one edge ``base -> new_vsn``: verdict, reasons and per-app instructions.

    Each changed application's appup is, in this order: the project's own ``rel/appups/APP/VSN.appup``
    (``user_appups``), the ``ebin/APP.appup`` the application ships in the new release (used as written), or the
    one generated from the compiled code. A project or shipped appup without an entry for the base's version of
    the application makes the edge cold, naming it.

    ``children_of(rel_dir, apps)`` -> {app: child specs text or None, "why:" + app: reason}: the children
    each application's start/2 starts in that release (learned in a scratch VM); used to reconcile a
    dependency whose Application module changed."""
    plan = EdgePlan(base)
    if not store.retained(base):
        plan.reasons.append("no base release retained for %s on the build host: a hot edge needs the "
                            "release tree that is running; deploy cold once" % base)
        return plan
    base_dir = store.release_dir(base)
    old_fp = release_fingerprint(base_dir, app, base)
    new_fp = release_fingerprint(new_dir, app, new_vsn)
    plan.reasons.extend(_appup.verdict(old_fp, new_fp))
    if plan.reasons:
        return plan
    old_apps, new_apps = _app_dirs(base_dir), _app_dirs(new_dir)
    old_cons, new_cons = _consolidated(base_dir, base), _consolidated(new_dir, new_vsn)
    skip = frozenset(new_cons) | frozenset(old_cons)
    for name in sorted(set(new_apps) & set(old_apps)):
        ov, odir = old_apps[name]
        nv, ndir = new_apps[name]
        old_mods = _beam.read_ebin(os.path.join(odir, "ebin"))
        new_mods = _beam.read_ebin(os.path.join(ndir, "ebin"))
        if ov == nv:
            differ = _appup.changed_modules(old_mods, new_mods)
            if differ or set(old_mods) != set(new_mods):
                raise BuildError("application %s changed (%s) but kept version %s: bump its version so the "
                                 "new code gets its own lib/%s-VSN directory"
                                 % (name, ", ".join(differ[:5]) or "modules added/removed", nv, name))
            continue
        edge = _appup.app_edge(name, ov, nv, old_mods, new_mods, skip=skip)
        user = user_appups.get(name)
        shipped, shipped_err = (None, None) if user is not None else shipped_appup(os.path.join(ndir, "ebin"), name)
        edge.appup = _appup.PROJECT if user is not None else \
            _appup.SHIPPED if (shipped is not None or shipped_err) else _appup.GENERATED
        plan.appups[name] = edge.appup
        o_mod, n_mod = app_mod(os.path.join(odir, "ebin"), name), app_mod(os.path.join(ndir, "ebin"), name)
        notes = _appup.application_module_notes(name, o_mod, n_mod, old_mods, new_mods)
        if notes and name != app and o_mod and n_mod and children_of is not None and edge.appup == _appup.GENERATED:
            # a dependency's Application module changed: its top supervisor gets the children the new
            # start/2 starts (and the old ones back on the way down), learned from both releases
            new_kids, old_kids = children_of(new_dir, (name,)), children_of(base_dir, (name,))
            if new_kids.get(name) and old_kids.get(name):
                edge.up.append(_appup.children_step(name, new_kids[name]))
                edge.down.append(_appup.children_step(name, old_kids[name]))
                plan.notes.append("%s: its Application module changed; the children of its supervision tree are "
                                  "made what %s starts (%s), and put back on a rollback" % (
                                      name, nv, _appup.children_diff(old_kids[name], new_kids[name])))
                notes = []
            else:
                why = new_kids.get("why:" + name) or old_kids.get("why:" + name) or "unknown"
                notes = [n + " (its children could not be learned: %s)" % why for n in notes]
        plan.not_applied.extend(notes)
        if edge.appup != _appup.GENERATED:
            where = "the project's appup rel/appups/%s/%s.appup" % (name, nv) if user is not None else \
                "the appup %s %s ships (lib/%s-%s/ebin/%s.appup)" % (name, nv, name, nv, name)
            if shipped_err:
                plan.reasons.append("%s %s: systools cannot use it, and an appup an application ships is never "
                                    "regenerated; override it with rel/appups/%s/%s.appup" % (where, shipped_err, name, nv))
                continue
            try:
                up, down = _appup.find_edge(user if user is not None else shipped, ov)
            except ValueError as e:
                plan.reasons.append("%s: %s" % (where, e))
                continue
            if up is None or down is None:
                plan.reasons.append("%s has no %s for %s %s (the version the base runs)%s" % (
                    where, "entry" if up is None and down is None else "up entry" if up is None else "down entry",
                    name, ov, "" if user is not None else
                    ": the library does not support a hot upgrade from it; add rel/appups/%s/%s.appup to the "
                    "project to upgrade it hot anyway" % (name, nv)))
                continue
            edge.up, edge.down = up, down
            _appup.describe(edge)
        if edge.appup == _appup.GENERATED:
            # processes whose state the new code reads differently: a generated appup would break them
            state_reasons, state_warnings = _appup.state_checks(
                name, nv, old_mods, new_mods, _appup.changed_modules(old_mods, new_mods),
                load_state_infos(os.path.dirname(base_dir.rstrip("/")), name, ov),
                load_state_infos(os.path.dirname(new_dir.rstrip("/")), name, nv))
            plan.reasons.extend(state_reasons)
            plan.warnings.extend(state_warnings)
        gaps = _appup.coverage_gaps(old_mods, new_mods, edge.up, skip=skip)
        if gaps and edge.appup == _appup.SHIPPED:
            # the library's own file is used as written: say what it leaves on the old code, never go hot silently
            plan.warnings.append("%s: the appup %s %s ships does not name changed modules %s: a hot upgrade leaves "
                                 "them on their old code; add rel/appups/%s/%s.appup to the project, or deploy with "
                                 "hotswap_mode=cold" % (name, name, nv, ", ".join(gaps), name, nv))
        elif gaps:
            plan.reasons.append("appup for %s does not cover changed modules: %s" % (name, ", ".join(gaps)))
        plan.app_edges.append(edge)
    plan.consolidated_up = sorted(m for m in new_cons if m not in old_cons or old_cons[m].digest != new_cons[m].digest)
    plan.consolidated_down = sorted(m for m in old_cons if m not in new_cons or old_cons[m].digest != new_cons[m].digest)
    if (plan.consolidated_up or plan.consolidated_down) and not plan.app_edges:
        plan.reasons.append("consolidated protocols changed but no application version did")
    elif (plan.consolidated_up or plan.consolidated_down) and \
            all(e.appup == _appup.SHIPPED for e in plan.app_edges):
        plan.reasons.append("consolidated protocols changed but every changed application uses the appup it ships "
                            "(%s), which beam.hotswap never rewrites: no appup can reload them"
                            % ", ".join(e.app for e in plan.app_edges))
    return plan


def write_appups(new_dir, new_vsn, app_order, plans):
    """Write one ``.appup`` per changed application, holding an entry for every hot base; an application that uses
    the appup it ships keeps it as it is (never written)."""
    by_app = {}
    for plan in plans:
        if not plan.hot:
            continue
        ours = [e for e in plan.app_edges if e.appup != _appup.SHIPPED]
        last = max(ours, key=lambda e: app_order.index(e.app) if e.app in app_order else -1, default=None)
        for edge in ours:
            up, down = list(edge.up), list(edge.down)
            if edge is last:
                if plan.consolidated_up:
                    up.append(_appup.consolidated_step(new_vsn, plan.consolidated_up))
                if plan.consolidated_down:
                    down.append(_appup.consolidated_step(plan.base, plan.consolidated_down))
            entry = by_app.setdefault(edge.app, (edge.new_vsn, [], []))
            entry[1].append((edge.old_vsn, up))
            entry[2].append((edge.old_vsn, down))
    written = []
    apps = _app_dirs(new_dir)
    for name, (vsn, ups, downs) in sorted(by_app.items()):
        # one entry per old application version (two bases may share it)
        ups = list(dict(ups).items())
        downs = list(dict(downs).items())
        path = os.path.join(apps[name][1], "ebin", name + ".appup")
        with open(path, "w") as f:
            f.write(_appup.GENERATED_MARK + "\n" + erlterms.format_term((vsn, ups, downs)) + ".\n")
        written.append(path)
    return written


# After make_relup: with Paths (the code path) and Out (the relup's directory) bound, and Good the bases
# it made edges from, rewrites Out/relup.
RELUP_DEFER_ERL = r"""
%% A module that runs a process of its own with sys (it exports system_continue/3: Cowboy's connection
%% processes, Ranch's connections supervisor) and that no instruction suspends moves to new code with its
%% old state whenever it answers a system message after its load -- and release_handler sends one to
%% every process a supervisor lists as a supervisor each time it looks for the processes to suspend or
%% stop.  Such loads go after the script's last suspend/stop/code_change/resume/start: those processes
%% stay on the code they started with and end on it.
Beam = fun(M) -> [F || P <- Paths, F <- [filename:join(P, atom_to_list(M) ++ ".beam")], filelib:is_regular(F)] end,
Special = fun(M) ->
    case Beam(M) of
        [F | _] -> case beam_lib:chunks(F, [exports]) of
                       {ok, {_, [{exports, Es}]}} -> lists:member({system_continue, 3}, Es);
                       _ -> false
                   end;
        [] -> false
    end
end,
Defer = fun(Is) ->
    Susp = [case S of {SM, _} -> SM; SM -> SM end || {suspend, Ss} <- Is, S <- Ss],
    Idx = lists:zip(lists:seq(1, length(Is)), Is),
    Last = lists:max([0 | [N || {N, I} <- Idx, is_tuple(I), lists:member(element(1, I), [suspend, stop, code_change, resume, start])]]),
    Moved = [N || {N, {load, {M, _, _}}} <- Idx, N < Last, not lists:member(M, Susp), Special(M)],
    case Moved of
        [] -> Is;
        _ -> [I || {N, I} <- Idx, N =< Last, not lists:member(N, Moved)] ++ [lists:nth(N, Is) || N <- Moved]
             ++ [I || {N, I} <- Idx, N > Last]
    end
end,
case Good of
    [] -> ok;
    _ ->
        RelupFile = filename:join(Out, "relup"),
        {ok, [{RV, Ups, Downs}]} = file:consult(RelupFile),
        Fix = fun(Es) -> [{V, D, Defer(Is)} || {V, D, Is} <- Es] end,
        ok = file:write_file(RelupFile, io_lib:format("~p.~n", [{RV, Fix(Ups), Fix(Downs)}]))
end,
"""

RELUP_ERL = r"""
{ok, [{New, Bases, Paths, Out}]} = file:consult(os:getenv("HOTSWAP_RELUP_ARGS")),
Try = fun(Bs) -> catch systools:make_relup(New, Bs, Bs, [{path, Paths}, {outdir, Out}, silent, no_warn_sasl]) end,
Msg = fun({error, M, E}) -> (catch M:format_error(E)); (Other) -> io_lib:format("~tp", [Other]) end,
Line = fun(S) -> re:replace(lists:flatten(io_lib:format("~ts", [S])), "\\s+", " ", [global, {return, list}, unicode]) end,
Res = case Try(Bases) of
  {ok, _, _, _} -> [{B, ok} || B <- Bases];
  _ -> [{B, case Try([B]) of {ok, _, _, _} -> ok; Err -> {error, Line(Msg(Err))} end} || B <- Bases]
end,
Good = [B || {B, ok} <- Res],
case Good of [] -> ok; Bases -> ok; _ -> {ok, _, _, _} = Try(Good) end,
""" + RELUP_DEFER_ERL + r"""[case R of
   {B, ok} -> io:format("RELUP\t~s\tok~n", [B]);
   {B, {error, S}} -> io:format("RELUP\t~s\terror\t~ts~n", [B, S])
 end || R <- Res],
halt(0).
"""


# Evaluates each project application's src/APP.appup.src (file:script, no bindings) into the release's ebin.
APPUP_SRC_ERL = r"""
{ok, [Todo]} = file:consult(os:getenv("HOTSWAP_APPUP_SRC")),
Txt = fun(S) -> re:replace(unicode:characters_to_list(S), "\\s+", " ", [global, {return, list}, unicode]) end,
Line = fun(T) -> Txt(io_lib:format("~tP", [T, 12])) end,
[case catch file:script(Src) of
   {ok, {V, Up, Down} = T} when is_list(V), is_list(Up), is_list(Down) ->
     ok = file:write_file(Dst, io_lib:format("~p.~n", [T])),
     io:format("APPUP\t~s\tok~n", [Src]);
   {ok, Other} -> io:format("APPUP\t~s\terror\t~ts~n", [Src, Line(Other)]);
   {error, Why} -> io:format("APPUP\t~s\terror\t~ts~n", [Src, Txt(file:format_error(Why))]);
   Crash -> io:format("APPUP\t~s\terror\t~ts~n", [Src, Line(Crash)])
 end || {Src, Dst} <- Todo],
halt(0).
"""


# Starts each application (with what it needs) and prints its top supervisor's child specs.
_CHILDREN_SCRIPT = """
[begin
   R = try
         {ok, _} = application:ensure_all_started(A),
         {Sup, _} = application_master:get_child(application_controller:get_master(A)),
         Ids = [Id || {Id, _, _, _} <- supervisor:which_children(Sup)],
         {ok, [element(2, supervisor:get_childspec(Sup, Id)) || Id <- Ids]}
       catch C:E -> {error, {C, E}}
       end,
   case R of
     {ok, Specs} -> io:format("CHILDREN\t~s\t~w~n", [A, Specs]);
     {error, Why} -> io:format("NOCHILDREN\t~s\t~P~n", [A, Why, 12])
   end
 end || A <- [%s]],
halt(0).
"""


class Builder(object):
    """One build: ``run`` executes an argv list and returns (rc, stdout, stderr)."""

    def __init__(self, run, store_root, app, log=None, env=None, hex_archive=None, secret=None):
        check_name(app)
        self.run = run
        # called with each secret the build comes to know (the release's cookie), so that the caller hides
        # it in everything it shows (AnsibleModule.no_log_values.add)
        self.secret = secret or (lambda value: None)
        self.store = Store(store_root, app)
        self.app = app
        self.log = log or (lambda msg: None)
        try:
            self.user_env = _deps.check_env(env)
        except _deps.DepsError as e:
            raise BuildError(str(e))
        self.hex_archive = hex_archive
        self.hex_installed = None   # set when this build installed Hex from hex_archive
        self.tool = "mix"           # what built the release: mix or rebar3 (relx)
        self.warnings = []

    # -- probe ---------------------------------------------------------------------------------
    def published(self, digest):
        return self.store.find_digest(digest)

    # -- source --------------------------------------------------------------------------------
    def workdir(self):
        return os.path.join(self.store.root, ".work", "src")

    def stage_archive(self, archive):
        """Lay the source out in the stable work dir (keeping deps/ fetched for mix.lock; _build is rebuilt)."""
        wd = self.store.ensure(".work", "src")
        for name in os.listdir(wd):
            if name != "_build":
                p = os.path.join(wd, name)
                shutil.rmtree(p) if os.path.isdir(p) and not os.path.islink(p) else os.unlink(p)
        with tarfile.open(archive, "r:*") as tar:
            for m in tar.getmembers():
                try:
                    member_rel(m)  # the agent's tar rules: no absolute paths, no '..', no devices, ...
                except PackageRefused as e:
                    raise BuildError("source archive refused: %s" % e.msg.replace("package refused: ", ""))
                if m.issym() or m.islnk():
                    raise BuildError("source archive entry %r is a link: the source is packed without links"
                                     % m.name)
            tar.extractall(wd)  # checked above; extractall keeps the files' times, as mix expects
        os.chmod(wd, PRIVATE_DIR)   # an entry "." would have given it the archive's mode
        return wd

    def stage_git(self, url, ref):
        wd = self.workdir()
        parent = self.store.ensure(".work")
        keep = {}
        for name in ("_build",):
            if os.path.isdir(os.path.join(wd, name)):
                keep[name] = os.path.join(parent, "." + name + ".keep")
                shutil.rmtree(keep[name], ignore_errors=True)
                os.rename(os.path.join(wd, name), keep[name])
                os.chmod(keep[name], PRIVATE_DIR)   # mix's mode; left here when the ref does not exist
        shutil.rmtree(wd, ignore_errors=True)
        rc, out, err = self.run(["git", "clone", "--quiet", "--no-checkout", url, wd])
        if rc != 0:
            raise BuildError("git clone of %s failed: %s" % (url, (err or out).strip()))
        os.chmod(wd, PRIVATE_DIR)
        # a clone has local branches only for the default branch: other branches are origin/REF
        commit = None
        for cand in (ref, "origin/" + ref):
            rc, out, err = self.run(["git", "-C", wd, "rev-parse", "--verify", "--quiet", "--end-of-options",
                                     cand + "^{commit}"])
            if rc == 0 and out.strip():
                commit = out.strip()
                break
        rc, out, err = (1, "", "no such branch, tag or commit") if commit is None else \
            self.run(["git", "-C", wd, "checkout", "--quiet", "--detach", commit])
        if rc != 0:
            raise BuildError("git ref %r does not exist in %s: pass an existing branch, tag or commit as "
                             "hotswap_source_ref (%s)" % (ref, url, (err or out).strip()))
        for name, tmp in keep.items():
            os.rename(tmp, os.path.join(wd, name))
        return wd

    # -- children of applications ------------------------------------------------------------
    def children_of(self, rel_dir, apps):
        """{app: child specs text} of the top supervisor each app's start/2 starts in ``rel_dir``, from a
        scratch VM on the build host (the release's own code; no config beyond the .app files); for an
        app that cannot be learned, "why:APP" holds the reason. Cached per release tree."""
        cache = self.__dict__.setdefault("_children", {})
        want = [a for a in apps if (rel_dir, a) not in cache]
        if want:
            ebins = sorted(glob.glob(os.path.join(rel_dir, "lib", "*", "ebin")))
            script = _CHILDREN_SCRIPT % ",".join("'%s'" % a for a in want)
            rc, out, err = self.run(["erl", "-noshell", "-noinput", "-pa"] + ebins + ["-eval", script])
            got = {}
            for line in (out or "").splitlines():
                parts = line.split("\t", 2)
                if len(parts) == 3 and parts[0] in ("CHILDREN", "NOCHILDREN"):
                    got[parts[1]] = (parts[0], parts[2])
            for a in want:
                kind, text = got.get(a, ("NOCHILDREN", "the scratch VM gave no answer (exit %s): %s"
                                         % (rc, (err or out or "").strip()[-300:])))
                if kind == "CHILDREN" and any(x in text for x in ("#Fun<", "#Ref<", "#Port<", "<0.")):
                    kind, text = "NOCHILDREN", "its child specs hold funs, pids or references"
                cache[(rel_dir, a)] = (kind, text)
        res = {}
        for a in apps:
            kind, text = cache[(rel_dir, a)]
            if kind == "CHILDREN":
                res[a] = text
            else:
                res["why:" + a] = text
        return res

    # -- build ---------------------------------------------------------------------------------
    def mix(self, src, args, env, lock=None):
        rc, out, err = self.run(["mix"] + args, cwd=src, env=env)
        if rc != 0:
            text = (out + "\n" + err).strip()
            why = _deps.explain_failure(text, lock)
            head = why + "\n" if why else ""
            raise BuildError("%s`mix %s` failed (exit %d):\n%s" % (head, " ".join(args), rc, text[-4000:]))
        return out

    def mix_env(self, lock):
        """The environment mix runs in: the build user's own (Mix and Hex homes, Hex repositories),
        ``hotswap_build_env`` over it, and the build's fixed parts."""
        env = dict(self.user_env)
        self.store.ensure(".work", "deps")
        env.update({"MIX_ENV": "prod", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8",
                    "MIX_DEPS_PATH": _deps.deps_dir(os.path.join(self.store.root, ".work"), lock)})
        return env

    def fetch_deps(self, src, env, lock):
        """``mix deps.get`` for prod, exactly as mix.lock says; Hex installed first from the archive the
        user gave when the lock needs it and the build user has none."""
        if not _deps.hex_installed(env) and (self.hex_archive or _deps.hex_deps(lock)):
            # Hex also reads the requirements of path dependencies' own mix.exs, so the archive the user
            # gave is installed whenever the build user has none, lock or not
            if not self.hex_archive:
                raise BuildError(_deps.explain_failure("Could not find Hex", lock))
            self.mix(src, ["archive.install", self.hex_archive, "--force"], env)
            self.hex_installed = _deps.hex_installed(env)
            if not self.hex_installed:
                raise BuildError("installing Hex from %s left no Hex archive in %s: is it a Hex archive named hex-VERSION.ez?"
                                 % (self.hex_archive, _deps.archives_dir(env)))
        self.mix(src, ["deps.get", "--only", "prod"], env, lock)
        after = _deps.read_lock(src)
        if lock is not None:
            drift = _deps.lock_drift(lock, after)
            if drift:
                raise BuildError("mix.lock does not match mix.exs: fetching the dependencies changed the locked %s "
                                 "(%s); run `mix deps.get` in the project, commit the updated mix.lock and "
                                 "deploy again" % ("entry" if len(drift) == 1 else "entries", ", ".join(drift)))
        elif _deps.hex_deps(after):
            self.warnings.append("the project has no mix.lock: its Hex dependencies (%s) were resolved at build "
                                 "time; commit a mix.lock to build the same versions every time"
                                 % ", ".join(_deps.hex_deps(after)))

    def build(self, src, digest, bases=(), expect_version=None):
        """Build the release in ``src`` (a Mix project, or a rebar3 project with a relx section) and publish
        it; returns (changed, manifest)."""
        tool = project_tool(src)
        existing = self.published(digest)
        if existing:
            return self.extend_edges(existing, bases)
        rel = self.build_mix(src) if tool == "mix" else self.build_rebar3(src)
        self.note_cookie(rel)
        with open(os.path.join(rel, "releases", "start_erl.data")) as f:
            erts, vsn = f.read().split()
        check_version(vsn, "the project's version")
        where = "mix.exs" if tool == "mix" else "the relx section of rebar.config"
        if expect_version and expect_version != vsn:
            raise BuildError("hotswap_version is %s but the project builds version %s: bump the version in "
                             "%s or drop hotswap_version" % (expect_version, vsn, where))
        if self.store.manifest(vsn):
            raise BuildError("version %s of %s is already published with different content (source digest "
                             "differs): published versions are immutable; bump the version in %s, or "
                             "discard the published one first (hotswap_build_discard: [%s]) if no host runs it"
                             % (vsn, self.app, where, vsn))
        self.tool = tool
        return True, self.publish(rel, vsn, digest, bases, src)

    def build_mix(self, src):
        """``mix release APP`` for prod; returns the release directory."""
        lock = _deps.read_lock(src)
        env = self.mix_env(lock)
        self.fetch_deps(src, env, lock)
        rel = os.path.join(src, "_build", "prod", "rel", self.app)
        # Every build compiles everything afresh, dependencies included: mix decides what is stale from
        # file times, and a source that keeps its own (a `git archive` export, a vendored library with
        # upstream dates, `cp -a`) would otherwise ship the previous build's dependency code or .app files.
        # A published version is never rebuilt (the store is keyed on the source digest).
        shutil.rmtree(os.path.join(src, "_build", "prod"), ignore_errors=True)
        try:
            self.mix(src, ["do", "compile,", "release", self.app, "--overwrite", "--quiet"], env, lock)
        except BuildError as e:
            self.note_cookie(rel)   # a release that failed after its cookie was written: hide it in the message
            if "Unknown release" in str(e) or "unknown release" in str(e):
                raise BuildError("the project defines no release named %s: set hotswap_app to one of the "
                                 "names under `releases:` in mix.exs\n%s" % (self.app, e))
            raise
        return rel

    def build_rebar3(self, src):
        """``rebar3 as prod release -n APP`` with Debian's rebar3: always a self-contained release
        (dev_mode off: relx would otherwise link the lib dirs back into _build); returns the release dir."""
        env = dict(self.user_env)
        env.update({"LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "REBAR_COLOR": "none", "TERM": "dumb"})
        # compiled output is rebuilt every time (as for mix): rebar3 too judges staleness by file times
        for pattern in ("_build/prod", "_build/*/checkouts", "_build/*/lib/*/ebin"):
            for path in glob.glob(os.path.join(src, pattern)):
                shutil.rmtree(path, ignore_errors=True)
        rel = os.path.join(src, "_build", "prod", "rel", self.app)
        args = ["as", "prod", "release", "-n", self.app, "--dev-mode", "false"]
        rc, out, err = self.run(["rebar3"] + args, cwd=src, env=env)
        text = _strip_ansi((out or "") + "\n" + (err or "")).strip()
        if rc != 0 or not os.path.isfile(os.path.join(rel, "releases", "start_erl.data")):
            self.note_cookie(rel)
            if re.search(r"No releases exist in the system for|release .*not found", text, re.I):
                raise BuildError("the project defines no relx release named %s: set hotswap_app to the name in a "
                                 "{release, {NAME, VSN}, Apps} entry of rebar.config's relx section\n%s"
                                 % (self.app, text[-4000:]))
            raise BuildError("`rebar3 %s` failed (exit %d):\n%s" % (" ".join(args), rc, text[-4000:]))
        self.keep_attributes(src, rel)
        self.compile_appup_srcs(src, rel)
        outside = [os.path.relpath(os.path.join(d, n), rel) for d, dns, fns in os.walk(rel)
                   for n in dns + fns if os.path.islink(os.path.join(d, n))]
        if outside:
            raise BuildError("the relx release holds symbolic links (%s): it must be self-contained; drop "
                             "{dev_mode, true} from the prod profile" % ", ".join(sorted(outside)[:5]))
        return rel

    def run_erl(self, script, term, var):
        """Run the Erlang expressions ``script`` in a fresh VM, ``term`` in a file that the environment variable
        ``var`` names (``file:consult`` reads it); returns (rc, stdout, stderr)."""
        fd, argf = tempfile.mkstemp(suffix=".config")
        with os.fdopen(fd, "w") as f:
            f.write(erlterms.format_term(term) + ".\n")
        try:
            return self.run(["erl", "-noshell", "-noinput", "-boot", "start_clean", "-eval", script], env={var: argf})
        finally:
            os.unlink(argf)

    def compile_appup_srcs(self, src, rel):
        """rebar3 does not compile a project application's ``src/APP.appup.src`` itself (rebar3_appup_plugin's
        ``appup compile`` does): its value, evaluated as ``file:script/1`` does, becomes the release's
        ``ebin/APP.appup``, where the build reads an application's own appup (used as written)."""
        found = {}
        for pattern in ("src/*.appup.src", "apps/*/src/*.appup.src"):
            for path in sorted(glob.glob(os.path.join(src, pattern))):
                found[os.path.basename(path)[:-len(".appup.src")]] = path
        dirs = dict((name, d) for name, (_v, d) in _app_dirs(rel).items())
        todo = [(path, os.path.join(dirs[name], "ebin", name + ".appup")) for name, path in sorted(found.items())
                if name in dirs]
        if not todo:
            return
        rc, out, err = self.run_erl(APPUP_SRC_ERL, todo, "HOTSWAP_APPUP_SRC")
        done = dict((parts[1], parts[3] if len(parts) > 3 else None)
                    for parts in (line.split("\t") for line in (out or "").splitlines()) if parts[0] == "APPUP" and len(parts) >= 3)
        for path, _dst in todo:
            rel_path = os.path.relpath(path, src)
            if path not in done:
                raise BuildError("evaluating %s failed (erl exited %s): %s" % (rel_path, rc, (err or out).strip()[-500:]))
            if done[path] is not None:
                raise BuildError("%s does not evaluate to an appup {Vsn, UpFrom, DownTo}: %s -- it is evaluated as "
                                 "file:script/1 does, with no bindings (rebar3_appup_plugin's STATE is not there): "
                                 "make it a plain term, or put the appup in rel/appups/APP/VSN.appup"
                                 % (rel_path, done[path].split(" and stacktrace")[0][:400]))

    def keep_attributes(self, src, rel):
        """relx's prod mode strips every module to the chunks the loader needs, dropping the attributes (the
        behaviours that tell a supervisor from a worker, ``-vsn``) that appup generation and ``code_change``
        rely on: the project's and its dependencies' modules are taken again from what rebar3 compiled and
        stripped keeping ``Attr`` (still no debug info or docs)."""
        stripped = []
        for app_dir in sorted(glob.glob(os.path.join(rel, "lib", "*-*"))):
            name, vsn = os.path.basename(app_dir).rsplit("-", 1)
            ebin = os.path.join(app_dir, "ebin")
            built = built_ebin(self.built_lib_dirs(src, rel), name, vsn)
            if built is None:
                continue
            for fn in os.listdir(ebin):
                if fn.endswith(".beam") and os.path.isfile(os.path.join(built, fn)):
                    shutil.copyfile(os.path.join(built, fn), os.path.join(ebin, fn))
                    stripped.append(os.path.join(ebin, fn))
        if stripped:
            rc, out, err = self.run_erl('{ok, [Fs]} = file:consult(os:getenv("HOTSWAP_STRIP")), '
                                        '{ok, _} = beam_lib:strip_files(Fs, ["Attr"]), halt(0).', stripped, "HOTSWAP_STRIP")
            if rc != 0:
                raise BuildError("stripping the release's modules (keeping their attributes) failed: %s"
                                 % (err or out).strip()[-500:])

    def built_lib_dirs(self, src, rel):
        """Where the build left each application's compiled (unstripped) modules."""
        if self.tool == "rebar3":
            return [os.path.join(src, "_build", c) for c in ("prod/lib", "prod/checkouts", "default/lib", "default/checkouts")]
        return [os.path.join(os.path.dirname(os.path.dirname(rel)), "lib")]

    def note_cookie(self, rel_dir):
        """Hand the release's default cookie (``releases/COOKIE``, in the full tarball) to ``secret``: it must
        never show in the build's output, messages or manifest."""
        cookies = []
        try:
            with open(os.path.join(rel_dir, "releases", "COOKIE")) as f:
                cookies.append(f.read().strip())
        except (OSError, UnicodeDecodeError):
            pass
        # relx: the cookie is a -setcookie line of each release's vm.args
        for path in glob.glob(os.path.join(rel_dir, "releases", "*", "vm.args")):
            try:
                with open(path) as f:
                    cookies += [m.group(1) for m in re.finditer(r"^\s*-setcookie\s+(\S+)", f.read(), re.M)]
            except (OSError, UnicodeDecodeError):
                continue
        for cookie in cookies:
            if len(cookie) >= MIN_SECRET:
                self.secret(cookie)

    def publish(self, rel, vsn, digest, bases, src):
        """Publish ``vsn`` atomically: the release tree, its packages and every edge are made in a
        staging directory of the store, renamed to ``STORE/APP/VSN`` only when all of it succeeded;
        any failure removes the staging directory, so nothing is left that blocks a retry."""
        wanted = sorted(set(b for b in bases if b and b != vsn))
        for b in wanted:
            check_version(b, "base version")
        self.store.clear_staging(vsn)
        stage = self.store.staging(vsn, "publish")
        try:
            shutil.copytree(rel, os.path.join(stage, "release"), symlinks=True)
            os.chmod(os.path.join(stage, "release"), PRIVATE_DIR)   # its contents keep mix's modes
            # relx writes a RELEASES with the build host's view; each host's agent writes its own
            if os.path.lexists(os.path.join(stage, "release", "releases", "RELEASES")):
                os.unlink(os.path.join(stage, "release", "releases", "RELEASES"))
            apps = read_rel(os.path.join(stage, "release", "releases", vsn, self.app + ".rel"))[3]
            if "sasl" not in apps:
                self.warnings.append("the release %s %s does not include sasl, whose release_handler installs every hot "
                                     "upgrade: add it (%s)" % (self.app, vsn, "extra_applications: [:logger, :sasl] in "
                                                               "mix.exs" if self.tool == "mix" else "sasl in the "
                                                               "release's application list in rebar.config's relx section"))
            # the full tarball is what mix built, before we add appups/relup to the retained tree
            full = "%s-%s-full.tar.gz" % (self.app, vsn)
            deterministic_tar(os.path.join(stage, full), os.path.join(stage, "release"),
                              sorted(os.listdir(os.path.join(stage, "release"))))
            manifest = {
                "schema": SCHEMA, "app": self.app, "version": vsn, "source_digest": digest, "tool": self.tool,
                "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "os": _fingerprint.gather_fingerprint(),
                "runtime": self.runtime_info(os.path.join(stage, "release"), vsn),
                "apps": release_fingerprint(os.path.join(stage, "release"), self.app, vsn)["apps"],
                "artifacts": {"release": {"file": full, "sha256": sha256_file(os.path.join(stage, full)),
                                          "size": os.path.getsize(os.path.join(stage, full))}},
                "edges": [],
                "user_appups": self.user_appup_files(src),
            }
            # keep a copy of user appups with the version: edges may be extended later without the source
            self.save_user_appups(src, stage)
            # and what the unstripped modules' debug info says about process state (the release's are stripped)
            save_state_infos(self.built_lib_dirs(src, rel), os.path.join(stage, "release"), stage)
            manifest = self.make_edges(vsn, stage, manifest, wanted)
            vdir = self.store.vdir(vsn)
            if os.path.lexists(vdir):
                # no manifest there (checked by build): what an interrupted publish of an older collection left
                _remove(vdir)
            os.rename(stage, vdir)
        except BaseException:
            shutil.rmtree(stage, ignore_errors=True)
            raise
        return manifest

    def user_appup_files(self, src):
        base = os.path.join(src, "rel", "appups")
        out = []
        if os.path.isdir(base):
            for app in sorted(os.listdir(base)):
                for fn in sorted(os.listdir(os.path.join(base, app))):
                    if fn.endswith(".appup"):
                        out.append("rel/appups/%s/%s" % (app, fn))
        return out

    def save_user_appups(self, src, vdir):
        base = os.path.join(src, "rel", "appups")
        if os.path.isdir(base):
            shutil.copytree(base, os.path.join(vdir, "appups"))
            os.chmod(os.path.join(vdir, "appups"), PRIVATE_DIR)

    def load_user_appups(self, vdir, new_dir):
        out = {}
        base = os.path.join(vdir, "appups")
        if not os.path.isdir(base):
            return out
        apps = _app_dirs(new_dir)
        for app in os.listdir(base):
            if app in apps:
                p = os.path.join(base, app, apps[app][0] + ".appup")
                if os.path.exists(p):
                    with open(p) as f:
                        try:
                            out[app] = erlterms.parse_terms(f.read())
                        except erlterms.TermError as e:
                            raise BuildError("user appup %s is not a valid Erlang term: %s" % (p, e))
        return out

    def runtime_info(self, rel_dir, vsn):
        with open(os.path.join(rel_dir, "releases", "start_erl.data")) as f:
            erts = f.read().split()[0]
        apps = read_rel(os.path.join(rel_dir, "releases", vsn, self.app + ".rel"))[3]
        include_erts = os.path.isdir(os.path.join(rel_dir, "erts-" + erts))
        return {"erts": erts, "elixir": apps.get("elixir"), "include_erts": include_erts}

    # -- edges ---------------------------------------------------------------------------------
    def extend_edges(self, vsn, bases, force=False):
        """Make sure the published ``vsn`` has an edge (hot or cold) from every base; rebuild the
        appups, relup and upgrade package only when the set of bases grew.

        The work is done on a copy of the version in a staging directory that replaces the published
        one only when every edge succeeded: a failure leaves the published version as it was."""
        manifest = self.store.manifest(vsn)
        if manifest is None:
            raise BuildError("version %s of %s is not published in %s" % (vsn, self.app, self.store.root))
        have = set(e["from"] for e in manifest.get("edges", []))
        wanted = set(b for b in bases if b and b != vsn)
        for b in wanted:
            check_version(b, "base version")
        if wanted <= have and not force:
            return False, manifest
        vdir = self.store.vdir(vsn)
        self.note_cookie(self.store.release_dir(vsn))
        upgrade = (manifest.get("artifacts") or {}).get("upgrade") or {}
        self.store.clear_staging(vsn)
        stage = self.store.staging(vsn, "extend")
        try:
            shutil.copytree(vdir, stage, symlinks=True, dirs_exist_ok=True,
                            ignore=lambda d, names: [upgrade["file"]] if d == vdir and upgrade.get("file") in names
                            else [])
            manifest = self.make_edges(vsn, stage, manifest, sorted(have | wanted))
            self.store.replace(vsn, stage)
        except BaseException:
            shutil.rmtree(stage, ignore_errors=True)
            raise
        return True, manifest

    def make_edges(self, vsn, vdir, manifest, all_bases):
        """Plan every edge into the (staging) version directory ``vdir``: appups, relup, upgrade
        package and the manifest (written last); returns the manifest. Raises BuildError when an
        edge cannot be generated: an internal error is never a reason to go cold."""
        manifest = dict(manifest)
        new_dir = os.path.join(vdir, "release")
        order = list(read_rel(os.path.join(new_dir, "releases", vsn, self.app + ".rel"))[3])
        user = self.load_user_appups(vdir, new_dir)
        plans = [plan_edge(self.store, self.app, vsn, new_dir, b, user, self.children_of) for b in all_bases]
        # remove stale generated appups before writing the new set
        for name, (_v, d) in _app_dirs(new_dir).items():
            p = os.path.join(d, "ebin", name + ".appup")
            if os.path.exists(p) and name not in user:
                with open(p) as f:
                    if f.readline().startswith(_appup.GENERATED_MARK):
                        os.unlink(p)
        write_appups(new_dir, vsn, order, plans)
        relup = os.path.join(new_dir, "releases", vsn, "relup")
        if os.path.exists(relup):
            os.unlink(relup)
        hot = [p for p in plans if p.hot]
        rehearse = {}
        if hot:
            self.make_relup(vsn, hot, new_dir)
            rehearse = rehearse_plan(vdir, new_dir, vsn)
        edges = []
        for p in plans:
            e = {"from": p.base, "verdict": "hot" if p.hot else "cold", "reasons": p.reasons,
                 "not_applied": list(p.not_applied) if p.hot else []}
            if p.hot and p.notes:
                e["notes"] = list(p.notes)
            if p.appups:
                # which appup each changed application uses (a cold edge too: check mode shows why)
                e["appups"] = dict(p.appups)
            if p.hot and p.warnings:
                e["warnings"] = list(p.warnings)
            if p.hot:
                e["changed_apps"] = sorted(a.app for a in p.app_edges)
                e["modules"] = {
                    "added": sorted(m for a in p.app_edges for m in a.added),
                    "deleted": sorted(m for a in p.app_edges for m in a.deleted),
                    "updated": sorted(m for a in p.app_edges for m in a.updated),
                    "supervisors": sorted(m for a in p.app_edges for m in a.supervisors),
                    "loaded": sorted(m for a in p.app_edges for m in a.loaded),
                    "consolidated": p.consolidated_up,
                }
                # the modules whose code_change the node rehearses in a scratch VM before the install (none: no VM)
                keep, passthrough = rehearse.get(("up", p.base), ([], []))
                e["rehearse"] = {"modules": keep, "passthrough": passthrough}
            edges.append(e)
        manifest["edges"] = edges
        artifacts = dict(manifest["artifacts"])
        old_upgrade = artifacts.pop("upgrade", None)
        if old_upgrade and os.path.exists(os.path.join(vdir, old_upgrade["file"])):
            os.unlink(os.path.join(vdir, old_upgrade["file"]))
        if hot:
            artifacts["upgrade"] = self.upgrade_package(vsn, [p.base for p in hot], vdir)
        manifest["artifacts"] = artifacts
        write_private(os.path.join(vdir, "manifest.json"), json.dumps(manifest, indent=2, sort_keys=True))
        return manifest

    def make_relup(self, vsn, plans, new_dir=None):
        """Generate ``releases/VSN/relup`` in ``new_dir`` with an edge from each plan's base; raises
        BuildError naming the edge when OTP cannot make one."""
        new_dir = new_dir or self.store.release_dir(vsn)
        # The new release's application directories come first, then each base's that the new release
        # does not hold: systools takes an application's .appup from the first directory on the path whose
        # .app has the wanted version, and a base that holds the same application version (an older release
        # a host still keeps, typical of a downgrade) has no appup for this edge.
        paths, seen = [], set()
        for rdir in [new_dir] + [self.store.release_dir(p.base) for p in plans]:
            for _v, d in sorted(_app_dirs(rdir).values()):
                if os.path.basename(d) not in seen:
                    seen.add(os.path.basename(d))
                    paths.append(os.path.join(d, "ebin"))
        rel_of = dict((p.base, os.path.join(self.store.release_dir(p.base), "releases", p.base, self.app)) for p in plans)
        args = (os.path.join(new_dir, "releases", vsn, self.app), [rel_of[p.base] for p in plans],
                paths, os.path.join(new_dir, "releases", vsn))
        rc, out, err = self.run_erl(RELUP_ERL, args, "HOTSWAP_RELUP_ARGS")
        results = {}
        for line in out.splitlines():
            parts = line.split("\t")
            if len(parts) >= 3 and parts[0] == "RELUP":
                results[parts[1]] = parts[3] if len(parts) > 3 else None
        failed = []
        for p in plans:
            key = rel_of[p.base]
            if key not in results:
                failed.append((p, (err or out).strip()[-500:] or "erl exited %s without a result" % rc))
            elif results[key] is not None:
                failed.append((p, results[key]))
        if failed:
            raise BuildError(relup_failure(self.app, vsn, failed))

    def upgrade_package(self, vsn, hot_bases, vdir=None):
        """release_handler's package: releases/APP-VSN.rel, releases/VSN/, bin/, and the lib dirs that
        are new relative to at least one hot base."""
        vdir = vdir or self.store.vdir(vsn)
        new_dir = os.path.join(vdir, "release")
        tmp = tempfile.mkdtemp(dir=vdir)
        try:
            os.makedirs(os.path.join(tmp, "releases"))
            shutil.copy2(os.path.join(new_dir, "releases", vsn, self.app + ".rel"),
                         os.path.join(tmp, "releases", "%s-%s.rel" % (self.app, vsn)))
            shutil.copytree(os.path.join(new_dir, "releases", vsn), os.path.join(tmp, "releases", vsn), symlinks=True)
            members = ["releases/%s-%s.rel" % (self.app, vsn), "releases/%s" % vsn]
            if os.path.isdir(os.path.join(new_dir, "bin")):
                # the version's own start scripts: the agent keeps them and makes them ROOT/bin when the
                # version becomes permanent (relx's script names the version it boots)
                shutil.copytree(os.path.join(new_dir, "bin"), os.path.join(tmp, "bin"), symlinks=True)
                members.append("bin")
            base_libs = [set(os.path.basename(d) for _v, d in _app_dirs(self.store.release_dir(b)).values())
                         for b in hot_bases]
            common = set.intersection(*base_libs) if base_libs else set()
            os.makedirs(os.path.join(tmp, "lib"))
            for d in sorted(os.path.basename(d) for _v, d in _app_dirs(new_dir).values()):
                if d not in common:
                    shutil.copytree(os.path.join(new_dir, "lib", d), os.path.join(tmp, "lib", d), symlinks=True)
                    members.append("lib/%s" % d)
            name = "%s-%s.tar.gz" % (self.app, vsn)
            out = os.path.join(vdir, name)
            deterministic_tar(out, tmp, members)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return {"file": name, "sha256": sha256_file(out), "size": os.path.getsize(out), "bases": sorted(hot_bases)}

    # -- discard -------------------------------------------------------------------------------
    def discard(self, versions, bases=(), check=False):
        """Remove published versions (and anything an interrupted publish of them left) from the store,
        so that they are never reused; returns the versions that were (in check mode: would be) removed.

        Refuses a version that is among ``bases`` (the versions the targets run or hold: hot edges from it
        need its release tree) and one from which another published version, not discarded with it, has a
        hot edge (that relup was made from this content: a rebuild under the same version would not match it).
        """
        versions = sorted(set(versions))
        for v in versions:
            check_version(v, "the version to discard")
        running = sorted(set(versions) & set(b for b in bases if b))
        if running:
            raise BuildError("refusing to discard %s of %s: the targets run or hold %s (hot edges from it need its "
                             "release tree); deploy another version first, then discard it"
                             % (", ".join(running), self.app, "it" if len(running) == 1 else "them"))
        for v in self.store.versions():
            if v in versions:
                continue
            m = self.store.manifest(v) or {}
            from_gone = sorted(e.get("from") for e in m.get("edges", [])
                               if e.get("verdict") == "hot" and e.get("from") in versions)
            if from_gone:
                raise BuildError("refusing to discard %s of %s: the published version %s has a hot edge from it, "
                                 "made from its current content; discard %s with it (list both) or keep it"
                                 % (", ".join(from_gone), self.app, v, v))
        removed = []
        for v in versions:
            doomed = self.store.leftovers(v)
            if os.path.lexists(self.store.vdir(v)):
                doomed.insert(0, self.store.vdir(v))
            if doomed:
                removed.append(v)
            if not check:
                for p in doomed:
                    _remove(p)
        return removed


def relup_failure(app, vsn, failed):
    """The message of a build whose relup OTP could not generate (``failed``: [(EdgePlan, OTP's message)])."""
    lines = []
    for plan, msg in failed:
        named = sorted(set(re.findall(r"/lib/([a-z][a-z0-9_]*)-[^/\s]+/", msg)))
        apps = named or sorted(a.app for a in plan.app_edges) or [app]
        lines.append("edge %s -> %s (application%s %s): %s"
                     % (plan.base, vsn, "s" if len(apps) > 1 else "", ", ".join(apps), msg.strip()))
    return ("the relup of %s %s could not be generated, an internal error of beam.hotswap (not a reason to "
            "restart cold, so nothing was published and nothing was deployed):\n  %s\nWhat to do: report it with "
            "this message; the same build can be retried once it is fixed. To deploy this version meanwhile "
            "without a hot upgrade, run deploy.yml with hotswap_mode=cold and -e '{\"hotswap_build_bases\": []}' "
            "(every host restarts and loses its in-memory state)." % (app, vsn, "\n  ".join(lines)))


def _remove(path):
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    elif os.path.lexists(path):
        os.unlink(path)


def scratch_builder(builder, scratch_root, hide=()):
    """A Builder on a throwaway store that sees the published versions of ``builder``'s store
    (symlinked, only read; ``hide`` left out) and a copy of its compile cache. Used by check mode."""
    real = builder.store
    os.makedirs(os.path.join(scratch_root, builder.app, ".work"))
    for v in real.versions():
        if v not in hide:
            os.symlink(real.vdir(v), os.path.join(scratch_root, builder.app, v))
    for rel in ("src/_build", "deps"):
        if os.path.isdir(os.path.join(real.root, ".work", rel)):
            shutil.copytree(os.path.join(real.root, ".work", rel), os.path.join(scratch_root, builder.app, ".work", rel),
                            symlinks=True)
    b = Builder(builder.run, scratch_root, builder.app, builder.log, builder.user_env, builder.hex_archive,
                builder.secret)
    b.warnings = builder.warnings
    return b
