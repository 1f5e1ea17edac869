# -*- coding: utf-8 -*-
# Copyright (c) beam.hotswap contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
name: fleet_report
short_description: Per-host rollout outcome and version spread as rows and a readable table
version_added: 0.1.0
description:
  - Takes the hostvars of the play's hosts and returns, per host, the release before and after, the action
    (hot, cold, install, noop...), the result, the agent's timings, and the fleet's version spread.
  - Never includes the node's environment or cookie.
positional: _input
options:
  _input:
    description: A list of hostvars dicts (C(ansible_play_hosts_all | map('extract', hostvars))).
    type: list
    elements: dict
    required: true
  app:
    description: Release name, for the heading.
    type: str
    default: ""
  version:
    description: The version the rollout aimed at, for the heading.
    type: str
    default: ""
author:
  - beam.hotswap developers (@beam-hotswap)
"""

EXAMPLES = r"""
- name: Print the rollout
  ansible.builtin.debug:
    msg: "{{ (ansible_play_hosts_all | map('extract', hostvars) | beam.hotswap.fleet_report(app='my_app')).lines }}"
"""

RETURN = r"""
_value:
  description: C(rows) (list of dicts), C(lines) (the table), C(spread) (version to host count), C(mixed) (bool).
  type: dict
"""

from ansible.errors import AnsibleFilterError


def _row(hv):
    res = hv.get("hotswap_result") or {}
    facts = (hv.get("ansible_facts") or {}).get("hotswap_host") or {}
    plan = res.get("plan") or {}
    agent = res.get("agent") or {}
    if res.get("failed"):
        result = "FAILED, reverted" if res.get("reverted") else "FAILED"
    elif res:
        result = "changed" if res.get("changed") else "ok"
    else:
        result = "not run"
    running = res.get("host_version") if res else None
    if not running:
        running = facts.get("running") if facts.get("node_up") else None
    return {
        "host": hv.get("inventory_hostname"),
        "from": plan.get("from") or (facts.get("running") if not res else None),
        "to": plan.get("to"),
        "action": plan.get("action"),
        "reasons": plan.get("reasons") or [],
        "result": result,
        "running": running or facts.get("running"),
        "permanent": facts.get("permanent") if not res.get("changed") else running,
        "unpacked": ",".join(facts.get("unpacked") or []),
        "previous": facts.get("previous"),
        "node_up": facts.get("node_up"),
        "install_ms": agent.get("install_ms"),
        "downtime_ms": agent.get("downtime_ms"),
        "total_ms": agent.get("total_ms"),
    }


def _table(rows, cols):
    def cell(v):
        if v is None or v == "":
            return "-"
        if isinstance(v, bool):
            return "yes" if v else "no"
        return str(v)
    widths = [max([len(c)] + [len(cell(r.get(c))) for r in rows]) for c in cols]
    lines = ["  ".join(c.ljust(w) for c, w in zip(cols, widths)).rstrip()]
    lines += ["  ".join(cell(r.get(c)).ljust(w) for c, w in zip(cols, widths)).rstrip() for r in rows]
    return lines


def fleet_report(hostvars_list, app="", version=""):
    if not isinstance(hostvars_list, list):
        hostvars_list = list(hostvars_list)
    try:
        rows = [_row(hv) for hv in hostvars_list]
    except (AttributeError, TypeError) as e:
        raise AnsibleFilterError("fleet_report expects a list of hostvars dicts: %s" % e)
    spread = {}
    for r in rows:
        v = r["running"] or "(down)"
        spread[v] = spread.get(v, 0) + 1
    deployed = any(r["action"] for r in rows)
    if deployed:
        cols = ["host", "from", "to", "action", "result", "install_ms", "downtime_ms", "total_ms"]
    else:
        cols = ["host", "running", "permanent", "unpacked", "previous", "node_up"]
    head = "%s%s: %d host(s), versions %s" % (app or "release", (" -> " + version) if version else "", len(rows),
                                              ", ".join("%s on %d" % kv for kv in sorted(spread.items())))
    lines = [head] + _table(rows, cols)
    for r in rows:
        if r["action"] and r["reasons"]:
            lines.append("%s: %s because %s" % (r["host"], r["action"], "; ".join(r["reasons"])))
    return {"rows": rows, "lines": lines, "spread": spread, "mixed": len(spread) > 1}


class FilterModule(object):
    def filters(self):
        return {"fleet_report": fleet_report}
