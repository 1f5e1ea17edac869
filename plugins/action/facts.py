# -*- coding: utf-8 -*-
# Copyright (c) beam.hotswap contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Controller side of beam.hotswap.facts.

Gathering (no install_agent) writes nothing on the host: the installed agent answers in one ssh exec
when it is the one this collection ships (it compares its own checksums), else the module reads the same
facts with the collection's agent code in its process. ``hotswap_host.agent_current`` tells the action of
beam.hotswap.release whether to install the agent before it carries its plan out (the same path as
install_agent here): the files travel at once when the facts already say the host's copy differs, else
checksums first. The work is in plugin_utils._agent_direct.facts, shared with the release action."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

from ansible.plugins.action import ActionBase

from ansible_collections.beam.hotswap.plugins.plugin_utils._agent_direct import facts


class ActionModule(ActionBase):

    def run(self, tmp=None, task_vars=None):
        result = super(ActionModule, self).run(tmp, task_vars)
        result.update(facts(self, task_vars or {}, self._task.args))
        return result
