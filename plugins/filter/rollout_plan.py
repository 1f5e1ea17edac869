# -*- coding: utf-8 -*-
# Copyright (c) beam.hotswap contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
name: rollout_plan
short_description: What deploy.yml will do on each host, said before it does it
version_added: 0.3.0
description:
  - Takes the hostvars of the target hosts (with the C(hotswap_host) facts gathered by the agent role) and the
    build's manifest, and plans each host the way the release task will (the same function), without
    touching any host.
  - Returns one line per host (hot, cold, first install, nothing to do, or refused and why), the hosts whose
    running node the plan restarts (every process's in-memory state is lost), what a hot upgrade leaves as
    it was (C(not_applied)) and what it does besides loading code (a dependency's supervision tree reconciled).
positional: _input
options:
  _input:
    description: A list of hostvars dicts of the target hosts.
    type: list
    elements: dict
    required: true
  manifest:
    description: The manifest the build published (C(hotswap_manifest)).
    type: dict
    required: true
  mode:
    description: C(hotswap_mode).
    type: str
    default: auto
  allow_downgrade:
    description: C(hotswap_allow_downgrade).
    type: bool
    default: false
author:
  - beam.hotswap developers (@beam-hotswap)
"""

EXAMPLES = r"""
- name: Say what the rollout will do
  ansible.builtin.debug:
    msg: "{{ (groups['hotswap_targets'] | map('extract', hostvars) | beam.hotswap.rollout_plan(manifest=m)).lines }}"
"""

RETURN = r"""
_value:
  description:
    - C(lines) (one per host, then one naming the hosts that lose in-memory state), C(plans) (host to plan dict, or
      to C(error) when the host would be refused), C(loses_state) (host names), C(not_applied) (host to list).
  type: dict
"""

from ansible.errors import AnsibleFilterError
from ansible.module_utils.common.text.converters import to_text

from ansible_collections.beam.hotswap.plugins.module_utils import _plan


def rollout_plan(hosts, manifest, mode="auto", allow_downgrade=False):
    if not isinstance(hosts, list) or not isinstance(manifest, dict):
        raise AnsibleFilterError("rollout_plan takes a list of hostvars and manifest=the build's manifest")
    plans, lines, loses, notes = {}, [], [], {}
    for hv in hosts:
        name = to_text(hv.get("inventory_hostname", "?"))
        status = (hv.get("ansible_facts") or {}).get("hotswap_host")
        if not status:
            plans[name] = {"error": "not read"}
            lines.append("%s: not read (unreachable or its facts failed): it will not be changed" % name)
            continue
        try:
            plan = _plan.deploy(status, manifest, mode, bool(allow_downgrade))
        except _plan.PlanError as e:
            plans[name] = {"error": to_text(e)}
            lines.append("%s: will be refused: %s" % (name, e))
            continue
        plans[name] = plan
        lines.append("%s: %s" % (name, _plan.describe(plan)))
        if plan.get("loses_state"):
            loses.append(name)
        if plan.get("not_applied"):
            notes[name] = plan["not_applied"]
            lines.extend("%s: not applied by a hot upgrade: %s" % (name, n) for n in plan["not_applied"])
        lines.extend("%s: %s" % (name, n) for n in plan.get("notes") or [])
    lines.append("in-memory state lost (the node restarts) on: %s" % (", ".join(loses) if loses else "no host"))
    return {"lines": lines, "plans": plans, "loses_state": loses, "not_applied": notes}


class FilterModule(object):
    def filters(self):
        return {"rollout_plan": rollout_plan}
