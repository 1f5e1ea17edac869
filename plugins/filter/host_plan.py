# -*- coding: utf-8 -*-
# Copyright (c) beam.hotswap contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
name: host_plan
short_description: What the release task will do on one host, before it does it
version_added: 0.1.0
description:
  - Takes the hostvars of one target host (with the C(hotswap_host) facts gathered by the agent role) and plans
    the host the way the release task will (the same function), on the controller, without touching the host.
  - Role beam.hotswap.upgrade hands the result to the before-upgrade hook as C(hotswap_hook).
positional: _input
options:
  _input:
    description: The hostvars of one target host.
    type: dict
    required: true
  state:
    description: V(deployed) (to the manifest's version) or V(rolled_back).
    type: str
    default: deployed
  manifest:
    description: The manifest the build published (C(hotswap_manifest)); used when O(state=deployed).
    type: dict
  version:
    description: With O(state=rolled_back), the release to return to (empty - the previous one).
    type: str
    default: ""
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
- name: Say what the release task will do on this host
  ansible.builtin.debug:
    msg: "{{ (hostvars[inventory_hostname] | beam.hotswap.host_plan(manifest=hotswap_manifest)).summary }}"
"""

RETURN = r"""
_value:
  description:
    - The plan (C(action) - one of V(noop), V(install), V(hot), V(cold), V(start), V(commit) -, C(from), C(to),
      C(reasons), C(loses_state)) with C(summary), its one-line description; or C(error) (with C(action) V(refused))
      when the release task would refuse the host, or C(action) V(unknown) when the host's facts were not read.
  type: dict
"""

from ansible.errors import AnsibleFilterError
from ansible.module_utils.common.text.converters import to_text

from ansible_collections.beam.hotswap.plugins.module_utils import _plan, _release


def host_plan(hostvars, state="deployed", manifest=None, version="", mode="auto", allow_downgrade=False):
    if not hasattr(hostvars, "get"):
        raise AnsibleFilterError("host_plan takes the hostvars of one host")
    status = (hostvars.get("ansible_facts") or {}).get("hotswap_host")
    if not status:
        return {"action": "unknown", "from": None, "to": None, "reasons": [], "loses_state": False,
                "summary": "the host's facts were not read"}
    params = {"state": state, "manifest": manifest or {}, "version": version or None, "mode": mode,
              "allow_downgrade": bool(allow_downgrade), "cookie": None}
    try:
        if state == "deployed" and not (manifest or {}).get("version"):
            raise _plan.PlanError("no manifest: the build did not publish one")
        plan = _release.make_plan(params, status)
    except _plan.PlanError as e:
        to = (manifest or {}).get("version") if state == "deployed" else (version or None)
        return {"action": "refused", "from": status.get("running") or status.get("permanent"), "to": to,
                "reasons": [to_text(e)], "loses_state": False, "error": to_text(e), "summary": to_text(e)}
    return dict(plan, summary=_plan.describe(plan))


class FilterModule(object):
    def filters(self):
        return {"host_plan": host_plan}
