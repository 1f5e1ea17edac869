# -*- coding: utf-8 -*-
# Copyright (c) beam.hotswap contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Controller side of beam.hotswap.build: digest and pack a local source tree, upload it only when
the build host has not published that content yet, run the build, fetch the artifacts back.

The artifact directory is private to the controller user (the full tarball holds the release's default
cookie): ARTIFACTS, ARTIFACTS/APP and ARTIFACTS/APP/VSN are 0700, the files in them 0600; what an older
collection left open is made private by the next run (``made_private_controller``, a change)."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import json
import os
import shutil
import tarfile
import tempfile

from ansible.errors import AnsibleActionFail
from ansible.module_utils.common.text.converters import to_text
from ansible.plugins.action import ActionBase

from ansible_collections.beam.hotswap.plugins.module_utils._agent.files import sha256_file
from ansible_collections.beam.hotswap.plugins.module_utils._build import (
    PRIVATE_FILE, SOURCE_EXCLUDE, BuildError, dedicated_dir, make_private, private_makedirs, project_tool, tree_digest,
    write_private)
from ansible_collections.beam.hotswap.plugins.module_utils._agent.names import valid_app, valid_version
from ansible_collections.beam.hotswap.plugins.module_utils._manifest import manifest_errors
from ansible_collections.beam.hotswap.plugins.module_utils._agent.fingerprint import MISMATCH_HINT, targets_mismatch

CONTROLLER_ARGS = ("source", "artifact_dir", "fetch")


def _is_git_url(s):
    return "://" in s or s.startswith("git@") or s.endswith(".git")


class ActionModule(ActionBase):

    # False: no remote temp dir up front (ActionBase would make and remove one on every run, two
    # extra ssh round-trips); one is made only when a file is actually uploaded.
    TRANSFERS_FILES = False

    def _pack(self, source):
        fd, path = tempfile.mkstemp(suffix=".tar.gz")
        os.close(fd)

        def keep(ti):
            parts = ti.name.split("/")
            if any(p in SOURCE_EXCLUDE for p in parts):
                return None
            if ti.issym() or ti.islnk():
                return None
            ti.uid = ti.gid = 0
            ti.uname = ti.gname = ""
            return ti

        with tarfile.open(path, "w:gz") as tar:
            for name in sorted(os.listdir(source)):
                if name in SOURCE_EXCLUDE:
                    continue
                tar.add(os.path.join(source, name), arcname=name, filter=keep)
        return path

    def _upload(self, local, name):
        """Put a controller file in the task's remote temp dir (made on first use); returns its path."""
        tmpdir = self._connection._shell.tmpdir or self._make_tmp_path()
        remote = self._connection._shell.join_path(tmpdir, name)
        self._transfer_file(local, remote)
        self._fixup_perms2((tmpdir, remote))
        return remote

    def _fetch(self, manifest, store_dir, artifact_dir):
        """Copy the version's artifacts to the controller unless an identical copy is there."""
        dest = private_makedirs(os.path.join(artifact_dir, manifest["app"], manifest["version"]))
        fetched = []
        for art in manifest["artifacts"].values():
            local = os.path.join(dest, art["file"])
            if os.path.exists(local) and sha256_file(local) == art["sha256"]:
                continue
            tmp = local + ".part"
            self._connection.fetch_file(os.path.join(store_dir, art["file"]), tmp)
            os.chmod(tmp, PRIVATE_FILE)
            if sha256_file(tmp) != art["sha256"]:
                os.unlink(tmp)
                raise AnsibleActionFail("fetched %s does not match its sha256 in the manifest" % art["file"])
            os.replace(tmp, local)
            fetched.append(art["file"])
        mpath = os.path.join(dest, "manifest.json")
        text = json.dumps(manifest, indent=2, sort_keys=True)
        old = None
        if os.path.exists(mpath):
            with open(mpath) as f:
                old = f.read()
        if old != text:
            write_private(mpath, text)
            fetched.append("manifest.json")
        return dest, fetched

    def _controller_copy(self, args, artifact_dir):
        """The manifest and directory of a verified copy, on the controller, of the release built from
        this very source (same digest), with relup edges from every requested base; else None.

        A release is immutable once published, so with such a copy the build host has nothing to add:
        the rollout does not contact it at all (a pre-built release deploys in fewer round-trips)."""
        adir = os.path.join(artifact_dir, args.get("app") or "")
        if not args.get("app") or not os.path.isdir(adir):
            return None
        for vsn in sorted(os.listdir(adir)):
            mpath = os.path.join(adir, vsn, "manifest.json")
            try:
                with open(mpath) as f:
                    m = json.load(f)
            except (OSError, ValueError):
                continue
            if not isinstance(m, dict) or m.get("source_digest") != args["source_digest"] or manifest_errors(m) \
                    or m.get("version") != vsn:
                continue
            if args.get("version") and args["version"] != vsn:
                return None  # the build host reports the version conflict
            have = set(e.get("from") for e in m.get("edges", []))
            if not set(args.get("bases") or []) - set([vsn]) <= have:
                return None  # new edges to build
            for art in m["artifacts"].values():
                local = os.path.join(adir, vsn, art["file"])
                if not os.path.isfile(local) or sha256_file(local) != art["sha256"]:
                    return None  # fetch it again
            return m, os.path.join(adir, vsn)
        return None

    @staticmethod
    def _secure_artifacts(artifact_dir, app, check=False):
        """Make ARTIFACTS, ARTIFACTS/APP, each version directory in it and their files private (group and other
        permission bits off) where an older collection left them open; returns (changed paths, warnings).
        ARTIFACTS itself only when it holds nothing but such APP/VSN directories (not a directory set to ~)."""
        def artifacts_of_an_app(name, path):
            return valid_app(name) and os.path.isdir(path) and not os.path.islink(path) and \
                all(valid_version(v) and os.path.isdir(os.path.join(path, v)) for v in os.listdir(path))
        todo = [artifact_dir] if dedicated_dir(artifact_dir, artifacts_of_an_app) else []
        adir = os.path.join(artifact_dir, app)
        if os.path.isdir(adir) and not os.path.islink(adir):
            todo.append(adir)
            for vsn in sorted(os.listdir(adir)):
                vdir = os.path.join(adir, vsn)
                todo.append(vdir)
                if os.path.isdir(vdir) and not os.path.islink(vdir):
                    todo.extend(os.path.join(vdir, n) for n in sorted(os.listdir(vdir)))
        fixed, warnings = [], []
        for p in todo:
            try:
                if make_private(p, check):
                    fixed.append(p)
            except OSError as e:
                warnings.append("%s is open to other users and cannot be made private (%s): chown it to the "
                                "controller user or chmod go-rwx it" % (p, e.strerror))
        return fixed, warnings

    @staticmethod
    def _drop_controller_copies(artifact_dir, app, versions):
        """Remove the controller copies of discarded versions (a copy is trusted by source digest: one
        left behind would be deployed again without asking the build host)."""
        if not artifact_dir or not app:
            return
        for vsn in versions or []:
            d = os.path.join(os.path.expanduser(artifact_dir), app, vsn)
            if vsn and "/" not in vsn and vsn not in (".", "..") and os.path.isdir(d):
                shutil.rmtree(d)

    def run(self, tmp=None, task_vars=None):
        result = self._run(tmp, task_vars)
        artifact_dir, app = self._task.args.get("artifact_dir"), self._task.args.get("app")
        if artifact_dir and app and "/" not in to_text(app) and to_text(app) not in (".", ".."):
            artifact_dir = os.path.expanduser(to_text(artifact_dir))
            try:
                fixed, warnings = self._secure_artifacts(artifact_dir, to_text(app), check=self._task.check_mode)
            except OSError as e:
                fixed, warnings = [], ["could not check the modes under %s: %s" % (artifact_dir, e)]
            if fixed:
                result.update(changed=True, made_private_controller=fixed)
            if warnings:
                result["warnings"] = list(result.get("warnings") or []) + warnings
        return result

    def _run(self, tmp=None, task_vars=None):
        result = super(ActionModule, self).run(tmp, task_vars)
        args = dict(self._task.args)
        source = args.pop("source", None)
        artifact_dir = args.pop("artifact_dir", None)
        do_fetch = args.pop("fetch", True)
        local_archive = None
        discard = args.get("discard")
        hex_archive = args.pop("hex_archive", None)
        try:
            if hex_archive:
                hex_archive = os.path.expanduser(to_text(hex_archive))
                if not os.path.isfile(hex_archive):
                    raise AnsibleActionFail("hotswap_hex_archive %s is not a file on the controller: give the path of "
                                            "a Hex archive (.ez), e.g. one made by `mix archive.build` in Hex's "
                                            "source, or unset it" % hex_archive)
            if source is None and discard:
                # only the discard: nothing to pack, build or fetch
                res = self._execute_module(module_name="beam.hotswap.build", module_args=args, task_vars=task_vars)
                result.update(res)
                if not res.get("failed") and not self._task.check_mode:
                    self._drop_controller_copies(artifact_dir, args.get("app"), res.get("discarded"))
                return result
            if source is None:
                raise AnsibleActionFail("source is required: a Mix or rebar3 project directory on the controller or a git URL "
                                        "(set hotswap_source)")
            source = os.path.expanduser(to_text(source))
            if os.path.isdir(source):
                try:
                    project_tool(source)
                except BuildError as e:
                    raise AnsibleActionFail("%s (%s)" % (e, source))
                args["source_digest"] = "sha256:" + tree_digest(source)
            elif _is_git_url(source):
                args["source_git"] = source
                if hex_archive:
                    args["hex_archive"] = self._upload(hex_archive, os.path.basename(hex_archive))
            else:
                raise AnsibleActionFail("hotswap_source %s is neither a directory on the controller nor a git URL" % source)

            cached = None
            if "source_digest" in args and artifact_dir and do_fetch and not discard:
                cached = self._controller_copy(args, os.path.expanduser(artifact_dir))
            if cached:
                manifest, dest = cached
                include_erts = (manifest.get("runtime") or {}).get("include_erts", True)
                msg = targets_mismatch(task_vars.get("inventory_hostname", "the build host"), manifest.get("os") or {},
                                       args.get("target_fingerprints") or {}, include_erts=include_erts)
                if msg and not args.get("allow_os_mismatch"):
                    raise AnsibleActionFail(msg + MISMATCH_HINT)
                if msg:
                    result["warnings"] = [msg]
                result.update(changed=False, version=manifest["version"], manifest=manifest, artifact_dir=dest,
                              fetched=[], build_fingerprint=manifest.get("os"), controller_copy=True)
                return result
            res = self._execute_module(module_name="beam.hotswap.build", module_args=args, task_vars=task_vars)
            first = res
            if res.get("need_source") and not res.get("failed"):
                if discard and not self._task.check_mode:
                    args.pop("discard")     # done by the first call
                local_archive = self._pack(source)
                args["src_archive"] = self._upload(local_archive, "source.tar.gz")
                if hex_archive:
                    args["hex_archive"] = self._upload(hex_archive, os.path.basename(hex_archive))
                res = self._execute_module(module_name="beam.hotswap.build", module_args=args, task_vars=task_vars)
            result.update(res)
            if first is not res:
                # the first call's own changes: the discard, the store made private
                for key in ("discarded", "made_private"):
                    if key in first:
                        result[key] = sorted(set(first[key]) | set(res.get(key) or []))
                result["changed"] = bool(res.get("changed") or first.get("changed"))
            if result.get("discarded") and not self._task.check_mode:
                self._drop_controller_copies(artifact_dir, args.get("app"), result["discarded"])
            if res.get("failed") or self._task.check_mode or "manifest" not in res:
                return result
            errs = manifest_errors(res["manifest"])
            if errs:
                raise AnsibleActionFail("the build host returned an unusable manifest: " + "; ".join(errs))
            if artifact_dir and do_fetch:
                dest, fetched = self._fetch(res["manifest"], res["store_dir"], os.path.expanduser(artifact_dir))
                result["artifact_dir"] = dest
                result["fetched"] = fetched
        except AnsibleActionFail as e:
            result.update(failed=True, msg=to_text(e))
        finally:
            if local_archive and os.path.exists(local_archive):
                os.unlink(local_archive)
            self._remove_tmp_path(self._connection._shell.tmpdir)
        return result
