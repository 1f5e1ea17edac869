# -*- coding: utf-8 -*-
# Copyright (c) beam.hotswap contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The manifest: what the build host publishes with each release (app, version, artifacts with their
sha256, relup edges with a verdict hot or cold and its reasons, the build host's OS fingerprint), and the
check every reader applies before trusting one.  Kept apart from the build code so that the modules
that run on targets carry none of it.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

from ansible_collections.beam.hotswap.plugins.module_utils._agent.names import SHA_RE, valid_app, valid_version

SCHEMA = 1


def manifest_errors(m):
    """Problems with a manifest (a list of messages; empty when usable)."""
    errs = []
    if not isinstance(m, dict):
        return ["the manifest is not a JSON object"]
    for key, typ in (("schema", int), ("app", str), ("version", str), ("artifacts", dict), ("edges", list)):
        if not isinstance(m.get(key), typ):
            errs.append("manifest field %r is missing or not a %s" % (key, typ.__name__))
    if errs:
        return errs
    if m["schema"] != SCHEMA:
        errs.append("manifest schema %r is not %d: rebuild with this collection" % (m["schema"], SCHEMA))
    if not valid_app(m["app"]):
        errs.append("manifest app %r is not a valid release name" % m["app"])
    if not valid_version(m["version"]):
        errs.append("manifest version %r is not a valid version" % m["version"])
    for kind, art in m["artifacts"].items():
        if not isinstance(art, dict) or not SHA_RE.match(str(art.get("sha256", ""))) \
                or not isinstance(art.get("file"), str) or "/" in art["file"]:
            errs.append("manifest artifact %r needs a plain file name and a sha256" % kind)
    if "release" not in m["artifacts"]:
        errs.append("manifest has no full release artifact")
    for e in m["edges"]:
        if not isinstance(e, dict) or e.get("verdict") not in ("hot", "cold") or not isinstance(e.get("from"), str):
            errs.append("manifest edge %r needs 'from' and a verdict hot or cold" % (e,))
    return errs
