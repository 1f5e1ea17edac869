#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) beam.hotswap contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: build
short_description: Build a mix or relx release with automatic appups and relups on the build host
version_added: 0.1.0
description:
  - Runs C(MIX_ENV=prod mix release) (a Mix project) or C(rebar3 as prod release) (a rebar3 project whose
    C(rebar.config) has a C(relx) section; always self-contained, dev mode off) for O(app) on the build host,
    keeps the release tree in a store,
    generates an C(.appup) for every application whose version changed and a relup with an up and a
    down edge from every base version the fleet runs, and writes the full tarball, the upgrade package
    and a C(manifest.json).
  - Published versions are immutable. Rebuilding the same source is a no-op; the same version with
    different content is refused.
  - Each edge carries a verdict V(hot) or V(cold) with the reasons, and under C(not_applied) what a hot
    upgrade over it leaves undone (an Application module whose C(start/2) changed - the children it adds or
    drops are not started or stopped).
  - A version is published (C(STORE/APP/VSN) with its C(manifest.json)) only when the build and every edge
    succeeded - it is made in a hidden staging directory of the store and renamed into place at the end; a
    failure removes the staging directory, so a retry is never blocked. Adding edges to a published version
    works on a copy the same way, and a failure leaves the published version as it was.
  - An error while generating the relup fails the build, naming the edge and the application; an internal
    error is never a reason to go cold.
  - O(discard) removes published versions that must not be reused (for example built from a broken source
    that was later fixed without a version bump).
  - The store is private to the build user, since its full tarballs and release trees hold the release's
    default cookie. C(STORE), C(STORE/APP) and the directories the build makes are mode 0700, the tarballs
    and C(manifest.json) 0600; a store an older version of the collection left open to other users is made
    private by the next run (listed in RV(made_private), reported as a change). The release's cookie never
    shows in the module's output, messages or manifest.
  - Normally used through the action plugin of the same name, which packs a controller directory,
    uploads it only when needed and fetches the artifacts back (into O(artifact_dir), private to the
    controller user in the same way - directories 0700, files 0600).
author:
  - beam.hotswap developers (@beam-hotswap)
attributes:
  check_mode:
    support: full
    description: Reports whether a build would happen and never writes to the store.
  diff_mode:
    support: none
    description: Nothing to diff.
  idempotent:
    support: full
    description: Running it again with the same input changes nothing.
options:
  app:
    description: Release name (a key under C(releases:) in C(mix.exs), or the name of a C(release) in the C(relx) section of C(rebar.config)).
    type: str
    required: true
  store:
    description: Artifact store directory on the build host.
    type: path
    default: /var/lib/hotswap/store
  src_archive:
    description: A C(.tar.gz) of the project on the build host (uploaded by the action plugin).
    type: path
  source_digest:
    description: Content digest of the source tree (computed by the action plugin).
    type: str
  source_git:
    description: A git URL to clone instead of O(src_archive).
    type: str
  source_ref:
    description: Git ref to check out when O(source_git) is used.
    type: str
    default: HEAD
  bases:
    description: Versions the targets run, have permanent or hold; the relup gets an edge from each.
    type: list
    elements: str
    default: []
  version:
    description: When set, the version the project must build; a different version fails the build.
    type: str
  target_fingerprints:
    description: OS fingerprints of the targets by host name, compared with the build host before building.
    type: dict
    default: {}
  allow_os_mismatch:
    description: Turn an OS fingerprint mismatch into a warning.
    type: bool
    default: false
  discard:
    description:
      - Published versions to remove from the store (C(STORE/APP/VSN), with whatever an interrupted build of
        them left), before building anything. A version that is not published is skipped.
      - Refused for a version among O(bases) (the targets run or hold it; hot edges from it need its release
        tree) and for a version from which another published version has a hot edge, unless that version is
        discarded too (its relup was made from the discarded content).
      - Without O(source) (O(source_digest), O(source_git)) only the discard is done. The action plugin also
        removes the controller copies of the discarded versions under O(artifact_dir).
      - In check mode nothing is removed; C(changed) says whether something would be.
    type: list
    elements: str
  build_env:
    description:
      - Environment variables for mix (or rebar3) on the build host, over the build user's own environment. mix runs as
        the build user with that user's Mix and Hex homes (C(~/.mix), C(~/.hex)), so the Hex repositories and
        mirror configured with C(mix hex.repo) are used; set C(HEX_MIRROR), C(HEX_HOME), C(MIX_HOME),
        C(HEX_CACERTS_PATH) or C(HEX_HTTP_TIMEOUT) here when the build user's login environment would.
      - C(MIX_ENV), C(MIX_DEPS_PATH), C(MIX_BUILD_PATH), C(MIX_BUILD_ROOT), C(MIX_TARGET), C(MIX_EXS) and
        C(MIX_LOCKFILE) are set by the build and refused here.
    type: dict
    default: {}
  hex_archive:
    description:
      - A Hex archive (C(hex-X.Y.Z.ez), as C(mix archive.build) makes it) to install for the build user when the
        build user has no Hex (a project with Hex dependencies, or path dependencies whose own mix.exs name Hex
        requirements, needs it). Never replaces an installed Hex.
      - Through the action plugin a file on the controller, uploaded with the source when a build runs; called
        directly, a path on the build host.
    type: path
  source:
    description:
      - Handled by the action plugin on the controller. A Mix or rebar3 project directory on the controller (packed
        without C(_build), C(deps), C(.git) and uploaded only when its digest is not published) or a git URL.
    type: str
  artifact_dir:
    description: Handled by the action plugin. Controller directory the artifacts are fetched to (C(APP/VSN/) below it).
    type: path
  fetch:
    description: Handled by the action plugin. Fetch the artifacts to O(artifact_dir).
    type: bool
    default: true
"""

EXAMPLES = r"""
- name: Build with edges from what the fleet runs (usually through the action plugin)
  beam.hotswap.build:
    app: sample
    source_git: https://example.com/sample.git
    source_ref: v2.0.0
    bases: ["1.0.0"]

- name: Discard a published version that must not be reused (the fleet runs 1.0.0)
  beam.hotswap.build:
    app: sample
    discard: ["2.0.1"]
    bases: ["1.0.0"]
"""

RETURN = r"""
version:
  description: The version built or found published.
  returned: success
  type: str
  sample: 2.0.0
need_source:
  description: True when the digest is not published and the source archive must be uploaded.
  returned: when O(source_digest) is given without O(src_archive)
  type: bool
manifest:
  description: The published manifest (app, version, runtime, OS fingerprint, artifacts with sha256, edges with verdicts).
  returned: success
  type: dict
discarded:
  description: The versions removed from the store by O(discard) (in check mode, that would be removed).
  returned: when O(discard) is given
  type: list
  elements: str
  sample: ["2.0.1"]
store_dir:
  description: Directory of this version in the store.
  returned: success
  type: str
hex_installed:
  description: The Hex archive this build installed from O(hex_archive) for the build user.
  returned: when Hex was installed
  type: str
  sample: hex-2.5.1
build_fingerprint:
  description: The build host's OS fingerprint.
  returned: always
  type: dict
made_private:
  description:
    - Store paths on the build host that were open to other users and were made private (group and other
      permission bits removed); in check mode, those that would be.
  returned: when there were any
  type: list
  elements: str
made_private_controller:
  description:
    - Paths under O(artifact_dir) on the controller that were made private the same way (set by the action plugin).
  returned: when there were any
  type: list
  elements: str
"""

import os
import shutil
import tempfile
import socket

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.beam.hotswap.plugins.module_utils import _build
from ansible_collections.beam.hotswap.plugins.module_utils._agent import fingerprint as _fingerprint


def main():
    module = AnsibleModule(
        argument_spec=dict(
            app=dict(type="str", required=True),
            store=dict(type="path", default="/var/lib/hotswap/store"),
            src_archive=dict(type="path"),
            source_digest=dict(type="str"),
            source_git=dict(type="str"),
            source_ref=dict(type="str", default="HEAD"),
            bases=dict(type="list", elements="str", default=[]),
            version=dict(type="str"),
            target_fingerprints=dict(type="dict", default={}),
            allow_os_mismatch=dict(type="bool", default=False),
            source=dict(type="str"),
            artifact_dir=dict(type="path"),
            fetch=dict(type="bool", default=True),
            discard=dict(type="list", elements="str"),
            build_env=dict(type="dict", default={}),
            hex_archive=dict(type="path"),
        ),
        mutually_exclusive=[("src_archive", "source_git")],
        required_one_of=[("source_digest", "source_git", "discard")],
        supports_check_mode=True,
    )
    p = module.params
    fp = _fingerprint.gather_fingerprint()
    result = dict(changed=False, build_fingerprint=fp)
    scratch = None

    def run(argv, cwd=None, env=None):
        return module.run_command(argv, cwd=cwd, environ_update=env or {})

    try:
        builder = _build.Builder(run, p["store"], p["app"], env=p["build_env"], hex_archive=p["hex_archive"],
                                 secret=module.no_log_values.add)
        for b in p["bases"]:
            _build.check_version(b, "base version")
        if p["version"]:
            _build.check_version(p["version"], "hotswap_version")
        msg = _fingerprint.targets_mismatch(socket.gethostname(), fp, p["target_fingerprints"])
        if msg:
            if not p["allow_os_mismatch"]:
                module.fail_json(msg=msg + _fingerprint.MISMATCH_HINT, **result)
            module.warn(msg)
        # a store an older collection made is made private (it holds the release's default cookie)
        made_private, store_warnings = builder.store.secure(check=module.check_mode)
        for w in store_warnings:
            module.warn(w)
        if made_private:
            result.update(changed=True, made_private=made_private)
        digest = p["source_digest"]
        if not (digest or p["source_git"] or p["discard"]):
            module.fail_json(msg="nothing to do: give a source (source_digest with src_archive, or source_git) "
                                 "or versions to discard", **result)
        if p["discard"]:
            removed = builder.discard(p["discard"], p["bases"], check=module.check_mode)
            result.update(changed=bool(removed), discarded=removed)
            if not (digest or p["source_git"]):
                module.exit_json(**result)
            if module.check_mode and removed:
                # plan the build as if they were gone: a throwaway store without them
                scratch = tempfile.mkdtemp(prefix="hotswap-check-")
                builder = _build.scratch_builder(builder, scratch, hide=removed)
        if digest and not p["source_git"]:
            published = builder.published(digest)
            if published:
                have = set(e["from"] for e in builder.store.manifest(published).get("edges", []))
                wanted = set(p["bases"]) - {published}
                if module.check_mode or wanted <= have:
                    result.update(version=published, manifest=builder.store.manifest(published),
                                  store_dir=builder.store.vdir(published), would_extend=sorted(wanted - have))
                    module.exit_json(**result)
                changed, manifest = builder.extend_edges(published, p["bases"])
                result.update(changed=changed or result["changed"], version=published, manifest=manifest,
                              store_dir=builder.store.vdir(published))
                module.exit_json(**result)
            if not p["src_archive"]:
                result.update(need_source=True, would_build=True)
                module.exit_json(**result)
        if module.check_mode:
            # a real build into a throwaway store, so the plan shows true verdicts; the store is untouched
            if not scratch:
                scratch = tempfile.mkdtemp(prefix="hotswap-check-")
                builder = _build.scratch_builder(builder, scratch)
            result["would_build"] = True
        if p["src_archive"]:
            src = builder.stage_archive(p["src_archive"])
        else:
            src = builder.stage_git(p["source_git"], p["source_ref"])
            # the same content digest as a controller directory (design: sha256 of the tree without
            # _build, deps, .git), so one version built from either route is the same publication
            digest = "sha256:" + _build.tree_digest(src)
        changed, manifest = builder.build(src, digest, bases=p["bases"], expect_version=p["version"])
        result.update(changed=changed or result["changed"], version=manifest["version"], manifest=manifest,
                      store_dir=builder.store.vdir(manifest["version"]))
        if not module.check_mode:
            # what this build made is private already; this catches what a tool made open beside it
            late = builder.store.secure()[0]
            if late:
                result.update(changed=True, made_private=sorted(set(result.get("made_private", [])) | set(late)))
        if builder.hex_installed:
            result.update(changed=True, hex_installed=builder.hex_installed)
        for w in builder.warnings:
            module.warn(w)
    except _build.BuildError as e:
        module.fail_json(msg=str(e), **result)
    except (OSError, ValueError) as e:
        module.fail_json(msg="build failed: %s" % e, **result)
    finally:
        if p["src_archive"] and os.path.exists(p["src_archive"]):
            os.unlink(p["src_archive"])
        if scratch:
            shutil.rmtree(scratch, ignore_errors=True)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
