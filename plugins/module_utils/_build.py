# -*- coding: utf-8 -*-
# Copyright (c) beam.hotswap contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Build on the build host: mix release, appups, relup, packages, manifest, store.

The store keeps every published version as ``STORE/APP/VSN/`` with the retained release tree
(``release/``), the full tarball, the upgrade package and ``manifest.json``. Relups are always built
from retained trees, never by rebuilding an old ref.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import gzip
import hashlib
import json
import os
import shutil
import tarfile
import tempfile
import time

from ansible_collections.beam.hotswap.plugins.module_utils import _appup, _beam
from ansible_collections.beam.hotswap.plugins.module_utils._agent import fingerprint as _fingerprint
from ansible_collections.beam.hotswap.plugins.module_utils._agent import erlterms
from ansible_collections.beam.hotswap.plugins.module_utils._agent.errors import PackageRefused
from ansible_collections.beam.hotswap.plugins.module_utils._agent.files import member_rel, sha256_file
from ansible_collections.beam.hotswap.plugins.module_utils._agent.names import valid_app, valid_version
from ansible_collections.beam.hotswap.plugins.module_utils._manifest import SCHEMA

SOURCE_EXCLUDE = frozenset(["_build", "deps", ".git", ".elixir_ls", "node_modules", ".hotswap"])


class BuildError(Exception):
    """A build that cannot go on; the message says what is wrong and what to do."""


def check_name(app):
    if not valid_app(app):
        raise BuildError("hotswap_app %r is not a valid release name: use lower-case letters, digits and "
                         "underscores, starting with a letter (as in `releases: [my_app: ...]`)" % (app,))


def check_version(vsn, what="version"):
    if not valid_version(vsn):
        raise BuildError("%s %r is not a valid release version: use letters, digits and . _ + - only "
                         "(for example 1.4.2)" % (what, vsn))


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
    with open(tmp, "wb") as raw:
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
    for rel in ("releases/%s/vm.args" % vsn, "releases/%s/env.sh" % vsn, "bin/%s" % app):
        full = os.path.join(rel_dir, rel)
        if os.path.isfile(full):
            files[rel.replace("/%s/" % vsn, "/VSN/")] = sha256_file(full)
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
        self.root = os.path.join(root, app)
        self.app = app

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


def _app_dirs(rel_dir):
    """``{app: (vsn, lib dir)}`` for the applications the release's ``.rel`` names."""
    with open(os.path.join(rel_dir, "releases", "start_erl.data")) as f:
        vsn = f.read().split()[1]
    rel = [fn for fn in os.listdir(os.path.join(rel_dir, "releases", vsn)) if fn.endswith(".rel")]
    apps = read_rel(os.path.join(rel_dir, "releases", vsn, rel[0]))[3]
    return dict((name, (v, os.path.join(rel_dir, "lib", "%s-%s" % (name, v)))) for name, v in apps.items())


def _consolidated(rel_dir, vsn):
    return _beam.read_ebin(os.path.join(rel_dir, "releases", vsn, "consolidated"))


class EdgePlan(object):
    def __init__(self, base):
        self.base = base
        self.reasons = []
        self.app_edges = []       # AppEdge list
        self.consolidated_up = []
        self.consolidated_down = []

    @property
    def hot(self):
        return not self.reasons


def plan_edge(store, app, new_vsn, new_dir, base, user_appups):
    """Work out one edge ``base -> new_vsn``: verdict, reasons and per-app instructions."""
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
        if user is not None:
            up, down = _appup.find_user_edge(user, ov)
            if up is None or down is None:
                plan.reasons.append("user appup rel/appups/%s/%s.appup has no entry for %s" % (name, nv, ov))
                continue
            edge.up, edge.down = up, down
        gaps = _appup.coverage_gaps(old_mods, new_mods, edge.up, skip=skip)
        if gaps:
            plan.reasons.append("appup for %s does not cover changed modules: %s" % (name, ", ".join(gaps)))
        plan.app_edges.append(edge)
    plan.consolidated_up = sorted(m for m in new_cons if m not in old_cons or old_cons[m].digest != new_cons[m].digest)
    plan.consolidated_down = sorted(m for m in old_cons if m not in new_cons or old_cons[m].digest != new_cons[m].digest)
    if (plan.consolidated_up or plan.consolidated_down) and not plan.app_edges:
        plan.reasons.append("consolidated protocols changed but no application version did")
    return plan


def write_appups(new_dir, new_vsn, app_order, plans):
    """Write one ``.appup`` per changed application, holding an entry for every hot base."""
    by_app = {}
    for plan in plans:
        if not plan.hot:
            continue
        last = max(plan.app_edges, key=lambda e: app_order.index(e.app) if e.app in app_order else -1)
        for edge in plan.app_edges:
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
            f.write("%% generated by beam.hotswap\n" + erlterms.format_term((vsn, ups, downs)) + ".\n")
        written.append(path)
    return written


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
[case R of
   {B, ok} -> io:format("RELUP\t~s\tok~n", [B]);
   {B, {error, S}} -> io:format("RELUP\t~s\terror\t~ts~n", [B, S])
 end || R <- Res],
halt(0).
"""


class Builder(object):
    """One build: ``run`` executes an argv list and returns (rc, stdout, stderr)."""

    def __init__(self, run, store_root, app, log=None):
        check_name(app)
        self.run = run
        self.store = Store(store_root, app)
        self.app = app
        self.log = log or (lambda msg: None)

    # -- probe ---------------------------------------------------------------------------------
    def published(self, digest):
        return self.store.find_digest(digest)

    # -- source --------------------------------------------------------------------------------
    def workdir(self):
        return os.path.join(self.store.root, ".work", "src")

    def stage_archive(self, archive):
        """Lay the source out in the stable work dir (keeping deps/ fetched for mix.lock; _build is rebuilt)."""
        wd = self.workdir()
        os.makedirs(wd, exist_ok=True)
        for name in os.listdir(wd):
            if name not in ("_build", "deps"):
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
        return wd

    def stage_git(self, url, ref):
        wd = self.workdir()
        parent = os.path.dirname(wd)
        os.makedirs(parent, exist_ok=True)
        keep = {}
        for name in ("_build", "deps"):
            if os.path.isdir(os.path.join(wd, name)):
                keep[name] = os.path.join(parent, "." + name + ".keep")
                shutil.rmtree(keep[name], ignore_errors=True)
                os.rename(os.path.join(wd, name), keep[name])
        shutil.rmtree(wd, ignore_errors=True)
        rc, out, err = self.run(["git", "clone", "--quiet", "--no-checkout", url, wd])
        if rc != 0:
            raise BuildError("git clone of %s failed: %s" % (url, (err or out).strip()))
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

    # -- build ---------------------------------------------------------------------------------
    def mix(self, src, args, env):
        rc, out, err = self.run(["mix"] + args, cwd=src, env=env)
        if rc != 0:
            raise BuildError("`mix %s` failed (exit %d):\n%s" % (" ".join(args), rc, (out + "\n" + err).strip()[-4000:]))
        return out

    def build(self, src, digest, bases=(), expect_version=None):
        """Build the release in ``src`` and publish it; returns (changed, manifest)."""
        if not os.path.isfile(os.path.join(src, "mix.exs")):
            raise BuildError("no mix.exs in the source: hotswap_source must be the root of a mix project")
        existing = self.published(digest)
        if existing:
            return self.extend_edges(existing, bases)
        env = {"MIX_ENV": "prod", "HEX_OFFLINE": "1", "MIX_HOME": os.path.join(self.store.root, ".work", "mix"),
               "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}
        if os.path.exists(os.path.join(src, "mix.lock")):
            self.mix(src, ["deps.get", "--only", "prod"], env)
        rel = os.path.join(src, "_build", "prod", "rel", self.app)
        # Every build compiles everything afresh, dependencies included: mix decides what is stale from
        # file times, and a source that keeps its own (a `git archive` export, a vendored library with
        # upstream dates, `cp -a`) would otherwise ship the previous build's dependency code or .app files.
        # A published version is never rebuilt (the store is keyed on the source digest).
        shutil.rmtree(os.path.join(src, "_build", "prod"), ignore_errors=True)
        try:
            self.mix(src, ["do", "compile,", "release", self.app, "--overwrite", "--quiet"], env)
        except BuildError as e:
            if "Unknown release" in str(e) or "unknown release" in str(e):
                raise BuildError("the project defines no release named %s: set hotswap_app to one of the "
                                 "names under `releases:` in mix.exs\n%s" % (self.app, e))
            raise
        with open(os.path.join(rel, "releases", "start_erl.data")) as f:
            erts, vsn = f.read().split()
        check_version(vsn, "the project's version")
        if expect_version and expect_version != vsn:
            raise BuildError("hotswap_version is %s but the project builds version %s: bump the version in "
                             "mix.exs or drop hotswap_version" % (expect_version, vsn))
        if self.store.manifest(vsn):
            raise BuildError("version %s of %s is already published with different content (source digest "
                             "differs): published versions are immutable; bump the version in mix.exs"
                             % (vsn, self.app))
        return True, self.publish(rel, vsn, digest, bases, src)

    def publish(self, rel, vsn, digest, bases, src):
        vdir = self.store.vdir(vsn)
        staging = vdir + ".tmp"
        shutil.rmtree(staging, ignore_errors=True)
        os.makedirs(staging)
        shutil.copytree(rel, os.path.join(staging, "release"), symlinks=True)
        # the full tarball is what mix built, before we add appups/relup to the retained tree
        full = "%s-%s-full.tar.gz" % (self.app, vsn)
        deterministic_tar(os.path.join(staging, full), os.path.join(staging, "release"),
                          sorted(os.listdir(os.path.join(staging, "release"))))
        manifest = {
            "schema": SCHEMA, "app": self.app, "version": vsn, "source_digest": digest,
            "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "os": _fingerprint.gather_fingerprint(),
            "runtime": self.runtime_info(os.path.join(staging, "release"), vsn),
            "apps": release_fingerprint(os.path.join(staging, "release"), self.app, vsn)["apps"],
            "artifacts": {"release": {"file": full, "sha256": sha256_file(os.path.join(staging, full)),
                                      "size": os.path.getsize(os.path.join(staging, full))}},
            "edges": [],
            "user_appups": self.user_appup_files(src),
        }
        with open(os.path.join(staging, "manifest.json"), "w") as f:
            json.dump(manifest, f, indent=2, sort_keys=True)
        shutil.rmtree(vdir, ignore_errors=True)
        os.rename(staging, vdir)
        # keep a copy of user appups with the version: edges may be extended later without the source
        self.save_user_appups(src, vsn)
        changed, manifest = self.extend_edges(vsn, bases, force=True)
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

    def save_user_appups(self, src, vsn):
        base = os.path.join(src, "rel", "appups")
        if os.path.isdir(base):
            shutil.copytree(base, os.path.join(self.store.vdir(vsn), "appups"))

    def load_user_appups(self, vsn, new_dir):
        out = {}
        base = os.path.join(self.store.vdir(vsn), "appups")
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
        appups, relup and upgrade package only when the set of bases grew."""
        manifest = self.store.manifest(vsn)
        have = set(e["from"] for e in manifest.get("edges", []))
        wanted = set(b for b in bases if b and b != vsn)
        for b in wanted:
            check_version(b, "base version")
        if wanted <= have and not force:
            return False, manifest
        all_bases = sorted(have | wanted)
        new_dir = self.store.release_dir(vsn)
        order = list(read_rel(os.path.join(new_dir, "releases", vsn, self.app + ".rel"))[3])
        user = self.load_user_appups(vsn, new_dir)
        plans = [plan_edge(self.store, self.app, vsn, new_dir, b, user) for b in all_bases]
        # remove stale generated appups before writing the new set
        for name, (_v, d) in _app_dirs(new_dir).items():
            p = os.path.join(d, "ebin", name + ".appup")
            if os.path.exists(p) and name not in user:
                with open(p) as f:
                    if f.readline().startswith("%% generated by beam.hotswap"):
                        os.unlink(p)
        write_appups(new_dir, vsn, order, plans)
        hot = [p for p in plans if p.hot]
        if hot:
            self.make_relup(vsn, hot)
        hot = [p for p in plans if p.hot]
        relup = os.path.join(new_dir, "releases", vsn, "relup")
        if not hot and os.path.exists(relup):
            os.unlink(relup)
        edges = []
        for p in plans:
            e = {"from": p.base, "verdict": "hot" if p.hot else "cold", "reasons": p.reasons}
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
            edges.append(e)
        manifest["edges"] = edges
        artifacts = manifest["artifacts"]
        artifacts.pop("upgrade", None)
        if hot:
            artifacts["upgrade"] = self.upgrade_package(vsn, [p.base for p in hot])
        tmp = self.store.manifest_path(vsn) + ".tmp"
        with open(tmp, "w") as f:
            json.dump(manifest, f, indent=2, sort_keys=True)
        os.replace(tmp, self.store.manifest_path(vsn))
        return True, manifest

    def make_relup(self, vsn, plans):
        new_dir = self.store.release_dir(vsn)
        paths = set()
        for v in [vsn] + [p.base for p in plans]:
            for _v, d in _app_dirs(self.store.release_dir(v)).values():
                paths.add(os.path.join(d, "ebin"))
        rel_of = dict((p.base, os.path.join(self.store.release_dir(p.base), "releases", p.base, self.app)) for p in plans)
        args = (os.path.join(new_dir, "releases", vsn, self.app), [rel_of[p.base] for p in plans],
                sorted(paths), os.path.join(new_dir, "releases", vsn))
        fd, argf = tempfile.mkstemp(suffix=".config")
        with os.fdopen(fd, "w") as f:
            f.write(erlterms.format_term(args) + ".\n")
        try:
            rc, out, err = self.run(["erl", "-noshell", "-noinput", "-boot", "start_clean", "-eval", RELUP_ERL],
                                    env={"HOTSWAP_RELUP_ARGS": argf})
        finally:
            os.unlink(argf)
        results = {}
        for line in out.splitlines():
            parts = line.split("\t")
            if len(parts) >= 3 and parts[0] == "RELUP":
                results[parts[1]] = parts[3] if len(parts) > 3 else None
        for p in plans:
            key = rel_of[p.base]
            if key not in results:
                p.reasons.append("relup could not be generated: %s" % (err or out).strip()[-500:])
            elif results[key] is not None:
                p.reasons.append("relup could not be generated: %s" % results[key])

    def upgrade_package(self, vsn, hot_bases):
        """release_handler's package: releases/APP-VSN.rel, releases/VSN/, and the lib dirs that
        are new relative to at least one hot base."""
        new_dir = self.store.release_dir(vsn)
        tmp = tempfile.mkdtemp(dir=self.store.vdir(vsn))
        try:
            os.makedirs(os.path.join(tmp, "releases"))
            shutil.copy2(os.path.join(new_dir, "releases", vsn, self.app + ".rel"),
                         os.path.join(tmp, "releases", "%s-%s.rel" % (self.app, vsn)))
            shutil.copytree(os.path.join(new_dir, "releases", vsn), os.path.join(tmp, "releases", vsn), symlinks=True)
            members = ["releases/%s-%s.rel" % (self.app, vsn), "releases/%s" % vsn]
            base_libs = [set(os.path.basename(d) for _v, d in _app_dirs(self.store.release_dir(b)).values())
                         for b in hot_bases]
            common = set.intersection(*base_libs) if base_libs else set()
            os.makedirs(os.path.join(tmp, "lib"))
            for d in sorted(os.path.basename(d) for _v, d in _app_dirs(new_dir).values()):
                if d not in common:
                    shutil.copytree(os.path.join(new_dir, "lib", d), os.path.join(tmp, "lib", d), symlinks=True)
                    members.append("lib/%s" % d)
            name = "%s-%s.tar.gz" % (self.app, vsn)
            out = os.path.join(self.store.vdir(vsn), name)
            deterministic_tar(out, tmp, members)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return {"file": name, "sha256": sha256_file(out), "size": os.path.getsize(out), "bases": sorted(hot_bases)}


def scratch_builder(builder, scratch_root):
    """A Builder on a throwaway store that sees the published versions of ``builder``'s store
    (symlinked, only read) and a copy of its compile cache. Used by check mode."""
    real = builder.store
    os.makedirs(os.path.join(scratch_root, builder.app, ".work"))
    for v in real.versions():
        os.symlink(real.vdir(v), os.path.join(scratch_root, builder.app, v))
    cache = os.path.join(real.root, ".work", "src")
    for name in ("_build", "deps"):
        if os.path.isdir(os.path.join(cache, name)):
            shutil.copytree(os.path.join(cache, name), os.path.join(scratch_root, builder.app, ".work", "src", name),
                            symlinks=True)
    return Builder(builder.run, scratch_root, builder.app, builder.log)
