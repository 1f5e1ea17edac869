# -*- coding: utf-8 -*-
# Copyright (c) beam.hotswap contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Run the installed reload agent on this host and read its one-JSON-object answer."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import importlib.util
import json
import os
import sys

# AGENT_VERSION: the agent this collection ships; an older agent on a host is refused.
from ansible_collections.beam.hotswap.plugins.module_utils._agent.names import (
    AGENT_VERSION, plan_state_key, state_dir, valid_app, valid_root)

_LOADED = {}  # agent path -> its run() (or False), loaded once per module process


def release_root_spec():
    """The options that name one release root on a host (doc fragment beam.hotswap.release_root)."""
    return dict(app=dict(type="str", required=True), root=dict(type="path", required=True), user=dict(type="str"))


class AgentError(Exception):
    def __init__(self, msg, result=None):
        Exception.__init__(self, msg)
        self.result = result or {}


def check_root(root):
    """A release root must be absolute, not ``/`` and made of plain path characters."""
    if not valid_root(root):
        raise AgentError("hotswap_root %r is not usable: give an absolute directory of its own (not / or a system "
                         "directory such as /opt) with plain characters (for example /opt/my_app)" % (root,))
    return os.path.normpath(root)


def _version_tuple(v):
    return tuple(int(x) if x.isdigit() else 0 for x in str(v).split("."))


class AgentClient(object):
    def __init__(self, module, root, app, user=None):
        self.module = module
        if not valid_app(app):
            raise AgentError("hotswap_app %r is not a release name: lower-case letters, digits and _, starting "
                             "with a letter (the name in mix.exs releases). Nothing was changed." % (app,))
        self.root = check_root(root)
        self.app = app
        self.user = user
        self.hs = state_dir(self.root)  # the agent's root-only directory beside the release root
        self.path = os.path.join(self.hs, "agent.py")
        self._agent_run = None

    def installed(self):
        return os.path.isfile(self.path)

    def _load(self):
        """The installed agent's ``run(argv)``, loaded into this process (once per module run), or None
        for an agent that predates it.  Running it here instead of as ``python3 agent.py`` saves one
        interpreter start-up and compile per command: the bulk of a status read."""
        if self._agent_run is None and self.path in _LOADED:
            self._agent_run = _LOADED[self.path]
        if self._agent_run is None:
            fn = False
            if sys.version_info >= (3, 9):
                spec = importlib.util.spec_from_file_location("hotswap_agent_installed", self.path)
                mod = importlib.util.module_from_spec(spec)
                # the bytecode cache (the agent directory's __pycache__/, checked against the source's mtime and size)
                # spares the next run the compile; a check-mode run writes nothing
                saved, sys.dont_write_bytecode = sys.dont_write_bytecode, bool(self.module.check_mode)
                try:
                    spec.loader.exec_module(mod)
                    fn = getattr(mod, "run", False)
                except Exception:  # pylint: disable=broad-except
                    fn = False  # a broken or foreign file: the subprocess path reports what is wrong
                finally:
                    sys.dont_write_bytecode = saved
            self._agent_run = _LOADED[self.path] = fn
        return self._agent_run or None

    def call(self, command, args, settings=None):
        """Run one agent command; returns ``(rc, answer dict or None, error text)`` and never raises.
        ``settings`` (env, cookie) is handed to the agent, which writes them before the command."""
        if not self.installed():
            return 1, None, "the reload agent is not installed at %s: apply role beam.hotswap.agent first" % self.path
        argv = agent_argv(self.root, self.app, self.user, command, args)
        agent_run = self._load()
        data, rc, err, out = None, 1, "", ""
        if agent_run:
            try:
                rc, data = agent_run(argv, settings=settings)
            except BaseException as e:  # pylint: disable=broad-except
                err = "%s: %s" % (type(e).__name__, e)
        else:
            python = self.module.get_bin_path("python3") or "/usr/bin/python3"
            if settings:
                argv.append("--settings-stdin")
            rc, out, err = self.module.run_command([python, self.path] + argv,
                                                   data=json.dumps(settings) if settings else None)
            data = parse_answer(out)
        if isinstance(data, dict):
            data = json.loads(json.dumps(data, default=str))  # what the CLI prints: plain JSON types
        return rc, data, (err or out or "")

    def run(self, command, *args, **kw):
        """Run one agent command; returns its JSON; raises AgentError (with the JSON) on failure."""
        if not self.installed():
            raise AgentError("the reload agent is not installed at %s: apply role beam.hotswap.agent first" % self.path)
        rc, data, err = self.call(command, list(args), kw.get("settings"))
        if not isinstance(data, dict):
            raise AgentError("the agent gave no answer to %s (exit %d): %s" % (command, rc, err.strip()[-2000:]))
        if rc != 0 or data.get("failed"):
            raise AgentError(data.get("msg") or "agent %s failed (exit %d)" % (command, rc), data)
        return data

    def status(self, check_version=True):
        if not self.installed():
            return {"installed": False, "agent_installed": False, "node_up": False, "versions": [],
                    "releases": [], "packages": {}}
        return status_facts(self.run("status"), check_version)


def agent_argv(root, app, user, command, args):
    """The agent's command line after the interpreter and script."""
    argv = ["--root", root, "--app", app]
    if user:
        argv += ["--user", user]
    return argv + [command] + [str(a) for a in args]


def parse_answer(out):
    """The agent's one-line JSON answer (the last line of its output), or None."""
    try:
        data = json.loads(out.strip().splitlines()[-1]) if out and out.strip() else None
    except ValueError:
        data = None
    return data if isinstance(data, dict) else None


def status_facts(st, check_version=True):
    """The agent's status as the collection uses it (``ansible_facts.hotswap_host``)."""
    if check_version and _version_tuple(st.get("agent_version")) < _version_tuple(AGENT_VERSION):
        raise AgentError("the agent on this host is version %s but this collection needs %s: re-run role "
                         "beam.hotswap.agent (deploy.yml does) to update it"
                         % (st.get("agent_version"), AGENT_VERSION), st)
    st["agent_installed"] = True
    versions = set(r.get("version") for r in st.get("releases", []))
    versions.update(v for v in (st.get("running"), st.get("permanent")) if v)
    st["versions"] = sorted(v for v in versions if v)
    return st


def state_key(status):
    """The host state a plan was made from, as the agent's --expect-state compares it."""
    return plan_state_key(status.get("node_up"), status.get("running"), status.get("permanent"))
