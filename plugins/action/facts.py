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

from ansible_collections.beam.hotswap.plugins.module_utils._build import sha256_file

AGENT_FILES = (("hotswap_agent.py", "agent.py", "0750"), ("hotswap_node.exs", "node.exs", "0640"))
AGENT_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                         "roles", "agent", "files")


class ActionModule(ActionBase):

    def run(self, tmp=None, task_vars=None):
        result = super(ActionModule, self).run(tmp, task_vars)
        args = dict(self._task.args)
        if args.get("install_agent"):
            args["agent_files"] = dict(
                (dest, {"sha256": sha256_file(os.path.join(AGENT_DIR, src)), "mode": mode})
                for src, dest, mode in AGENT_FILES)
        res = self._execute_module(module_name="beam.hotswap.facts", module_args=args, task_vars=task_vars)
        if res.get("need_agent") and not self._task.check_mode:
            for src, dest, mode in AGENT_FILES:
                with open(os.path.join(AGENT_DIR, src), "rb") as f:
                    args["agent_files"][dest]["content"] = base64.b64encode(f.read()).decode("ascii")
            res = self._execute_module(module_name="beam.hotswap.facts", module_args=args, task_vars=task_vars)
        result.update(res)
        return result
