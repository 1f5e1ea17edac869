# -*- coding: utf-8 -*-
# Copyright (c) beam.hotswap contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Run the installed reload agent on this host and read its one-JSON-object answer."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import json
import os
import re

# The agent version this collection was released with; an older agent on a host is refused.
AGENT_VERSION = "1.0.0"
ROOT_RE = re.compile(r"^/[A-Za-z0-9._/-]*\Z")


class AgentError(Exception):
    def __init__(self, msg, result=None):
        Exception.__init__(self, msg)
        self.result = result or {}


def check_root(root):
    """A release root must be absolute, not ``/`` and made of plain path characters."""
    if not isinstance(root, str) or not ROOT_RE.match(root) or os.path.normpath(root) in ("/", "//") \
            or ".." in root.split("/"):
        raise AgentError("hotswap_root %r is not usable: give an absolute directory other than / with plain "
                         "characters (for example /opt/my_app)" % (root,))
    return os.path.normpath(root)


def _version_tuple(v):
    return tuple(int(x) if x.isdigit() else 0 for x in str(v).split("."))


class AgentClient(object):
    def __init__(self, module, root, app, user=None):
        self.module = module
        self.root = check_root(root)
        self.app = app
        self.user = user
        self.path = os.path.join(self.root, ".hotswap", "agent.py")

    def installed(self):
        return os.path.isfile(self.path)

    def run(self, command, *args):
        """Run one agent command; returns its JSON; raises AgentError (with the JSON) on failure."""
        if not self.installed():
            raise AgentError("the reload agent is not installed at %s: apply role beam.hotswap.agent first" % self.path)
        python = self.module.get_bin_path("python3") or "/usr/bin/python3"
        argv = [python, self.path, "--root", self.root, "--app", self.app]
        if self.user:
            argv += ["--user", self.user]
        argv += [command] + [str(a) for a in args]
        rc, out, err = self.module.run_command(argv)
        try:
            data = json.loads(out.strip().splitlines()[-1]) if out.strip() else None
        except ValueError:
            data = None
        if not isinstance(data, dict):
            raise AgentError("the agent gave no answer to %s (exit %d): %s" % (command, rc, (err or out).strip()[-2000:]))
        if rc != 0 or data.get("failed"):
            raise AgentError(data.get("msg") or "agent %s failed (exit %d)" % (command, rc), data)
        return data

    def status(self, check_version=True):
        if not self.installed():
            return {"installed": False, "agent_installed": False, "node_up": False, "versions": [],
                    "releases": [], "packages": {}}
        st = self.run("status")
        if check_version and _version_tuple(st.get("agent_version")) < _version_tuple(AGENT_VERSION):
            raise AgentError("the agent on this host is version %s but this collection needs %s: re-run role "
                             "beam.hotswap.agent (deploy.yml does) to update it"
                             % (st.get("agent_version"), AGENT_VERSION), st)
        st["agent_installed"] = True
        versions = set(r.get("version") for r in st.get("releases", []))
        versions.update(v for v in (st.get("running"), st.get("permanent")) if v)
        st["versions"] = sorted(v for v in versions if v)
        return st
