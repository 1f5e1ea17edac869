# -*- coding: utf-8 -*-
# Copyright (c) beam.hotswap contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Controller side of beam.hotswap.facts.

Gathering (no install_agent) writes nothing on the host: the installed agent answers in one ssh exec
when it is the one this collection ships (it compares its own checksums), else the module reads the same
facts with the collection's agent code in its process. ``hotswap_host.agent_current`` tells role
beam.hotswap.upgrade whether to install the agent before its release task (install_agent): the files
travel at once when the facts already say the host's copy differs, else checksums first."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import base64
import os

from ansible.plugins.action import ActionBase

from ansible_collections.beam.hotswap.plugins.module_utils._agent_client import AgentError, check_root, status_facts
from ansible_collections.beam.hotswap.plugins.module_utils._agent.files import sha256_file
from ansible_collections.beam.hotswap.plugins.plugin_utils._agent_direct import run_agent

AGENT_FILES = (("hotswap_agent.py", "agent.py", "0700"), ("hotswap_node.erl", "node.erl", "0600"))
AGENT_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                         "roles", "agent", "files")


class ActionModule(ActionBase):

    def _direct(self, args, task_vars):
        """The facts from the installed agent itself (one ssh exec) when it is the expected one, or None
        when the module must run: no agent yet, another version of it, or anything unexpected (the
        module reports it)."""
        try:
            root = check_root(args.get("root"))
        except AgentError:
            return None
        extra = ["--expect-agent", ",".join("%s=%s" % (name, spec["sha256"])
                                            for name, spec in sorted(args["agent_files"].items()))]
        rc, st, _err = run_agent(self, task_vars, root, args.get("app") or "", None, "facts", extra)
        if rc != 0 or not st or st.get("failed") or not st.get("agent_current"):
            return None
        st.pop("agent_files", None)
        try:
            st = status_facts(st)
        except AgentError:
            return None
        return {"changed": False, "ansible_facts": {"hotswap_host": st}, "agent_installed": []}

    @staticmethod
    def _with_content(args):
        for src, dest, _mode in AGENT_FILES:
            with open(os.path.join(AGENT_DIR, src), "rb") as f:
                args["agent_files"][dest]["content"] = base64.b64encode(f.read()).decode("ascii")

    def run(self, tmp=None, task_vars=None):
        result = super(ActionModule, self).run(tmp, task_vars)
        task_vars = task_vars or {}
        args = dict(self._task.args)
        args["agent_files"] = dict(
            (dest, {"sha256": sha256_file(os.path.join(AGENT_DIR, src)), "mode": mode})
            for src, dest, mode in AGENT_FILES)
        known = (task_vars.get("ansible_facts") or {}).get("hotswap_host") or {}
        stale = args.get("install_agent") and known.get("agent_current") is False
        if stale and not self._task.check_mode:
            # the facts just said the host's agent differs: send the files with the first (only) run
            self._with_content(args)
        else:
            direct = self._direct(args, task_vars)
            if direct:
                result.update(direct)
                return result
        res = self._execute_module(module_name="beam.hotswap.facts", module_args=args, task_vars=task_vars)
        if res.get("need_agent") and not self._task.check_mode:
            self._with_content(args)
            res = self._execute_module(module_name="beam.hotswap.facts", module_args=args, task_vars=task_vars)
        result.update(res)
        return result
