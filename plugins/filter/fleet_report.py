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
  - Each host's C(state) is the version it runs, or one word for why none is shown - V((down)) (reached, the
    node is not running), V(unreachable) (the run could not connect, as a registered C(hotswap_result) or
    C(_hotswap_gathered) says), V(not run) (the run never got to it - a batch after a failure, or skipped),
    V(unknown) (reached, but reading it failed), V(not installed) (reached, no release in the release root). The
    result column uses the same words.
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
  description:
    - C(rows) (list of dicts, one per host, with C(state) and C(result)), C(lines) (the table and a line per
      kind of host without a version), C(spread) (state to host count), C(mixed) (more than one version runs),
      C(versions) (the versions that run), per row C(state_lost) (the node was restarted, by plan or after a failure),
      C(not_applied) (what a hot upgrade left as it was), C(notes) (what it did besides loading code - open
      connections finishing on the previous code, a dependency's supervision tree reconciled) and C(appups)
      (application to V(project), V(shipped) or V(generated) - where the appup of each application a hot upgrade
      changed came from),
      the host names that are C(down), C(unreachable), C(not_run) and
      C(unread) (state V(unknown)), and C(verdict) (one sentence per kind - down, unreachable, outdated agent,
      not installed, unread - with the count and the names; empty when every host runs a version with a current agent).
  type: dict
"""

from ansible.errors import AnsibleFilterError


# what a host is, in one word, when no version runs on it
DOWN = "(down)"               # reached, and the node is not running
UNREACHABLE = "unreachable"   # the run could not connect to the host
NOT_RUN = "not run"           # the run never got to the host (a batch after a failure, or skipped)
UNKNOWN = "unknown"           # reached, but its state could not be read (the facts task failed)
NONE = "not installed"        # reached, and no release of the app is installed in the release root


def _row(hv):
    res = hv.get("hotswap_result") or {}
    gathered = hv.get("_hotswap_gathered") or {}
    facts = (hv.get("ansible_facts") or {}).get("hotswap_host") or {}
    plan = res.get("plan") or {}
    agent = res.get("agent") or {}
    unreachable = bool(res.get("unreachable") or (not res and gathered.get("unreachable")))
    if unreachable:
        result = UNREACHABLE
    elif res.get("failed"):
        result = "FAILED, reverted" if res.get("reverted") else "FAILED"
    elif res:
        result = "changed" if res.get("changed") else "ok"
    elif gathered.get("failed"):
        result = "FAILED reading the host"
    else:
        result = NOT_RUN
    running = res.get("host_version") if res else None
    if not running:
        running = facts.get("running") if facts.get("node_up") else None
    running = None if unreachable else running or facts.get("running")
    if unreachable:
        state = UNREACHABLE
    elif running and (res.get("host_version") or facts.get("node_up")):
        state = running
    elif facts and not facts.get("installed", True) and not facts.get("versions") and not res.get("host_version"):
        state = NONE
    elif facts:
        state = DOWN
    elif gathered.get("failed"):
        state = UNKNOWN
    else:
        state = NOT_RUN
    return {
        "host": hv.get("inventory_hostname"),
        "from": plan.get("from") or (facts.get("running") if not res else None),
        "to": plan.get("to"),
        "action": plan.get("action"),
        "reasons": plan.get("reasons") or [],
        "result": result,
        "state": state,
        "running": running,
        "permanent": facts.get("permanent") if not res.get("changed") else running,
        "unpacked": ",".join(facts.get("unpacked") or []),
        "previous": facts.get("previous"),
        "node_up": None if unreachable else facts.get("node_up"),
        "agent_outdated": bool(facts.get("agent_outdated")) and not unreachable,
        "installed_agent_version": facts.get("installed_agent_version"),
        "error": None if not (res.get("failed") or unreachable or gathered.get("failed")) else (
            res.get("msg") or gathered.get("msg")),
        # the node's in-memory state is gone: restarted cold (planned) or brought back after a failure
        "state_lost": bool(agent.get("state_lost")
                           or (res.get("changed") and not res.get("failed") and plan.get("loses_state"))),
        "not_applied": list(res.get("not_applied") or []),
        "notes": list(res.get("notes") or []),
        # which appup each changed application used over a hot edge: the project's, the one it ships, or generated
        "appups": dict(plan.get("appups") or {}),
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
    widths = [max([len(c)] + [len(cell(r.get(k))) for r in rows]) for c, k in cols]
    lines = ["  ".join(c.ljust(w) for (c, _k), w in zip(cols, widths)).rstrip()]
    lines += ["  ".join(cell(r.get(k)).ljust(w) for (_c, k), w in zip(cols, widths)).rstrip() for r in rows]
    return lines


def _hosts(rows, state):
    return [r["host"] for r in rows if r["state"] == state]


def fleet_report(hostvars_list, app="", version=""):
    if not isinstance(hostvars_list, list):
        hostvars_list = list(hostvars_list)
    try:
        rows = [_row(hv) for hv in hostvars_list]
    except (AttributeError, TypeError) as e:
        raise AnsibleFilterError("fleet_report expects a list of hostvars dicts: %s" % e)
    spread = {}
    for r in rows:
        spread[r["state"]] = spread.get(r["state"], 0) + 1
    deployed = any(r["action"] for r in rows)
    if deployed:
        cols = [(c, c) for c in ("host", "from", "to", "action", "result", "install_ms", "downtime_ms", "total_ms")]
    else:
        cols = [("host", "host"), ("running", "state")] + [(c, c) for c in ("permanent", "unpacked", "previous",
                                                                            "node_up")]
    head = "%s%s: %d host(s), versions %s" % (app or "release", (" -> " + version) if version else "", len(rows),
                                              ", ".join("%s on %d" % kv for kv in sorted(spread.items())))
    lines = [head] + _table(rows, cols)
    for r in rows:
        if r["action"] and r["reasons"]:
            lines.append("%s: %s because %s" % (r["host"], r["action"], "; ".join(r["reasons"])))
    down, unreachable = _hosts(rows, DOWN), _hosts(rows, UNREACHABLE)
    # a rollout: the hosts it never moved (their state is what the facts read); a status read: the unread ones
    not_run = [r["host"] for r in rows if (r["result"] if deployed else r["state"]) == NOT_RUN]
    if down:
        lines.append("down (reached, node not running): %s" % ", ".join(down))
    if unreachable:
        lines.append("unreachable (could not connect): %s" % ", ".join(unreachable))
    if not_run:
        lines.append("not run (the run never got to them): %s" % ", ".join(not_run))
    if deployed:
        lost = [r["host"] for r in rows if r["state_lost"]]
        lines.append("in-memory state lost (node restarted) on: %s" % (", ".join(lost) if lost else "no host"))
        for r in rows:
            lines.extend("%s: not applied: %s" % (r["host"], n) for n in r["not_applied"])
            lines.extend("%s: %s" % (r["host"], n) for n in r["notes"])
    versions = [v for v in spread if v not in (DOWN, UNREACHABLE, NOT_RUN, UNKNOWN, NONE)]
    unread = _hosts(rows, UNKNOWN)
    verdict = []
    if down:
        verdict.append("%d node(s) down (the host was reached, the node is not running): %s."
                       % (len(down), ", ".join(down)))
    if unreachable:
        verdict.append("%d host(s) unreachable (could not connect; their state is unknown): %s."
                       % (len(unreachable), ", ".join(unreachable)))
    outdated = [r for r in rows if r["agent_outdated"]]
    if outdated:
        verdict.append("%d host(s) run an outdated reload agent (role beam.hotswap.agent): %s: re-run deploy.yml or "
                       "rollback.yml, which update it before they move a node."
                       % (len(outdated), ", ".join("%s (%s)" % (r["host"], r["installed_agent_version"] or "unknown")
                                                   for r in outdated)))
    bare = _hosts(rows, NONE)
    if bare:
        verdict.append("%d host(s) have no release of %s installed in their release root: %s."
                       % (len(bare), app or "the app", ", ".join(bare)))
    if unread:
        verdict.append("%d host(s) could not be read: %s." % (len(unread), ", ".join(unread)))
    return {"rows": rows, "lines": lines, "spread": spread, "mixed": len(versions) > 1,
            "versions": sorted(versions), "down": down, "unreachable": unreachable, "not_run": not_run,
            "unread": unread, "verdict": " ".join(verdict)}


class FilterModule(object):
    def filters(self):
        return {"fleet_report": fleet_report}
