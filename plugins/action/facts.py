# -*- coding: utf-8 -*-
# Copyright (c) beam.hotswap contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Controller side of beam.hotswap.facts: with install_agent, send the agent's checksums first and
its files only when the host's copy differs, so installing the agent and gathering facts is one
round-trip in the common case."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import base64
import os

from ansible.plugins.action import ActionBase

from ansible_collections.beam.hotswap.plugins.module_utils._agent_client import AgentError, check_root, status_facts
from ansible_collections.beam.hotswap.plugins.module_utils._agent.files import sha256_file
from ansible_collections.beam.hotswap.plugins.plugin_utils._agent_direct import run_agent

AGENT_FILES = (("hotswap_agent.py", "agent.py", "0750"), ("hotswap_node.exs", "node.exs", "0640"))
AGENT_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                         "roles", "agent", "files")


class ActionModule(ActionBase):

    def _direct(self, args, task_vars):
        """The facts from the installed agent itself (one ssh exec), or None when the module must run:
        no agent yet, another version of it, or anything unexpected (the module reports it)."""
        try:
            root = check_root(args.get("root"))
        except AgentError:
            return None
        extra = []
        if args.get("install_agent"):
            extra = ["--expect-agent", ",".join("%s=%s" % (name, spec["sha256"])
                                                for name, spec in sorted(args["agent_files"].items()))]
        rc, st, _err = run_agent(self, task_vars, root, args.get("app") or "", None, "facts", extra)
        if rc != 0 or not st or st.get("failed") or (extra and not st.get("agent_current")):
            return None
        st.pop("agent_current", None)
        st.pop("agent_files", None)
        try:
            st = status_facts(st)
        except AgentError:
            return None
        return {"changed": False, "ansible_facts": {"hotswap_host": st}, "agent_installed": []}

    def run(self, tmp=None, task_vars=None):
        result = super(ActionModule, self).run(tmp, task_vars)
        args = dict(self._task.args)
        if args.get("install_agent"):
            args["agent_files"] = dict(
                (dest, {"sha256": sha256_file(os.path.join(AGENT_DIR, src)), "mode": mode})
                for src, dest, mode in AGENT_FILES)
        direct = self._direct(args, task_vars)
        if direct:
            result.update(direct)
            return result
        res = self._execute_module(module_name="beam.hotswap.facts", module_args=args, task_vars=task_vars)
        if res.get("need_agent") and not self._task.check_mode:
            for src, dest, mode in AGENT_FILES:
                with open(os.path.join(AGENT_DIR, src), "rb") as f:
                    args["agent_files"][dest]["content"] = base64.b64encode(f.read()).decode("ascii")
            res = self._execute_module(module_name="beam.hotswap.facts", module_args=args, task_vars=task_vars)
        result.update(res)
        return result
