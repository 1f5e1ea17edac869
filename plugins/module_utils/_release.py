# -*- coding: utf-8 -*-
# Copyright (c) beam.hotswap contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The contract of the task beam.hotswap.release, for its module and its action plugin alike.

* ``argument_spec()`` and ``REQUIRED_IF``: the task's options, their types, defaults and choices (the
  module's spec; the action validates the task's arguments against the same spec before it uses them).
* ``input_error(params)``: the checks beyond types, the same for both paths.
* ``carry_out(plan, params, package, call)``: how a plan becomes one agent command (its arguments, the
  node's settings on stdin) and how the agent's answer becomes the task's result, whichever path runs
  the agent (in the module's process, or directly over ssh from the action).

An option that the agent takes from the task is one row in ``_agent/options.py`` (the task's spec, the
agent's flag and parsing), plus its documentation in the module and the variable in role upgrade.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

from ansible_collections.beam.hotswap.plugins.module_utils import _plan
from ansible_collections.beam.hotswap.plugins.module_utils._agent.names import valid_version
from ansible_collections.beam.hotswap.plugins.module_utils._agent.options import agent_option_args, task_option_specs
from ansible_collections.beam.hotswap.plugins.module_utils._agent_client import release_root_spec
from ansible_collections.beam.hotswap.plugins.module_utils._manifest import manifest_errors

STATES = ("deployed", "rolled_back")
REQUIRED_IF = [("state", "deployed", ("manifest",))]


def argument_spec():
    """The options of beam.hotswap.release."""
    return dict(
        release_root_spec(),
        **task_option_specs(),
        state=dict(type="str", default="deployed", choices=list(STATES)),
        manifest=dict(type="dict"),
        version=dict(type="str"),
        mode=dict(type="str", default="auto", choices=list(_plan.MODES)),
        package_src=dict(type="path"),
        env=dict(type="dict", default={}, no_log=True),
        cookie=dict(type="str", no_log=True),
        artifact_dir=dict(type="path"),
        artifact_url=dict(type="str"),
        validate_certs=dict(type="bool", default=True),
        allow_os_mismatch=dict(type="bool", default=False),
        allow_downgrade=dict(type="bool", default=False),
    )


def input_error(p):
    """What is wrong with validated parameters beyond their types (None when nothing is)."""
    if p["keep_releases"] < 2:
        return "hotswap_keep_releases must be at least 2 (the running release and the one a rollback returns to)"
    if p["health_timeout"] <= 0:
        return "hotswap_health_timeout must be a positive number of seconds (got %s)" % p["health_timeout"]
    if p["state"] == "deployed":
        errs = manifest_errors(p["manifest"])
        if errs:
            return "the manifest is not usable: %s" % "; ".join(errs)
        if p["manifest"]["app"] != p["app"]:
            return "the manifest is for release %s, not %s: check hotswap_app" % (p["manifest"]["app"], p["app"])
    elif p["version"] is not None and not valid_version(p["version"]):
        return "hotswap_version %r is not a valid release version (letters, digits, . _ + -)" % p["version"]
    return None


def make_plan(p, status):
    """The plan for validated parameters and a host's status (raises ``_plan.PlanError``)."""
    if p["state"] == "deployed":
        if p.get("cookie") and (p["manifest"] or {}).get("tool") == "rebar3":
            raise _plan.PlanError("hotswap_cookie sets the cookie of a Mix release; %s is a relx release, whose node "
                                  "takes its cookie from the -setcookie line of its vm.args: set it there and unset "
                                  "hotswap_cookie. Nothing was changed." % p["app"])
        return _plan.deploy(status, p["manifest"], p["mode"], p["allow_downgrade"])
    return _plan.rollback(status, p["version"], p["mode"])


# how each planned action is carried out: agent command, and whether the package goes with it
_COMMANDS = {
    ("hot", "up"): ("hot", True), ("hot", "down"): ("rollback", False),
    ("cold", "up"): ("cold", True), ("cold", "down"): ("rollback", False),
    ("install", "up"): ("first-install", True), ("start", "up"): ("start", False), ("start", "down"): ("start", False),
    ("commit", "up"): ("commit", False), ("commit", "down"): ("commit", False),
    ("noop", "up"): ("status", False), ("noop", "down"): ("status", False),
}


def plan_command(plan, p, package=None):
    """(command, args) carrying ``plan`` out; ``package`` = (path on the host, sha256, name to keep it under
    or None) when the plan needs one."""
    command, with_package = _COMMANDS[(plan["action"], plan.get("direction") or "up")]
    if command == "status":
        return command, []
    args = ["--version", plan["to"]]
    if plan["action"] in ("hot", "cold") and plan.get("direction") == "down":
        args += ["--mode", plan["action"]]
    if with_package and package:
        args += ["--package", package[0], "--sha256", package[1]]
        if package[2]:
            args += ["--store-package", package[2]]
    return command, [str(a) for a in args] + agent_option_args(p)


def settings_of(p):
    """What the agent reads from its stdin: the node's environment and cookie (written under the lock,
    before the command), and the health check (a URL may carry a token: never on a command line)."""
    out = {"env": p.get("env") or None, "cookie": p.get("cookie") or None}
    if p.get("health_check"):
        out["check"] = p["health_check"]
    return out


def timing(out):
    """``install 12 ms, downtime 0 ms, total 640 ms`` from the agent's figures."""
    parts = []
    for key, label in (("install_ms", "install"), ("downtime_ms", "downtime"), ("total_ms", "total")):
        if isinstance(out.get(key), (int, float)):
            parts.append("%s %d ms" % (label, out[key]))
    return ", ".join(parts)


def plan_result(plan, app, diff=False):
    """The part of the task's result that the plan alone decides."""
    result = {"plan": plan, "summary": _plan.describe(plan), "host_version": plan["from"]}
    if diff:
        result["diff"] = _plan.diff(app, plan)
    return result


def carry_out(plan, p, package, call, expect_state=None, diff=False):
    """Carry ``plan`` out through the agent; returns the task's result, or None when the agent refused
    because the host is no longer in ``expect_state`` (nothing was done: plan again on the host).

    ``call(command, args, settings)`` runs one agent command and returns ``(rc, answer dict or None,
    error text)``.  A noop plan only reads the status (to confirm ``expect_state``)."""
    result = plan_result(plan, p["app"], diff)
    noop = plan["action"] == _plan.NOOP
    command, args = plan_command(plan, p, package)
    if expect_state:
        args = args + ["--expect-state", expect_state]
    # the settings go with every call, a no-op's status included: the host's env file always ends as asked
    rc, out, err = call(command, args, settings_of(p))
    if not isinstance(out, dict):
        return dict(result, failed=True, changed=False,
                    msg="%s: the agent gave no answer to %s (exit %s): %s"
                    % (result["summary"], command, rc, (err or "").strip()[-2000:]))
    if out.get("stale_facts"):
        return None
    if rc != 0 or out.get("failed"):
        msg = out.get("msg") or "agent %s failed (exit %s)" % (command, rc)
        return dict(result, failed=True, agent=out, reverted=bool(out.get("reverted")),
                    host_version=out.get("host_version"), changed=bool(out.get("changed", True)),
                    msg="%s failed on this host: %s" % (result["summary"], msg))
    notes = list(plan.get("not_applied") or []) + not_applied(out)
    extra = {"not_applied": notes, "warnings": list(notes)} if notes else {}
    if plan.get("warnings"):
        extra.setdefault("warnings", []).extend(plan["warnings"])
    killed = out.get("old_code_killed") or []
    if killed:
        extra["old_code_killed"] = killed
        extra.setdefault("warnings", []).append(
            "hotswap_old_code=kill: %d process(es) still in the replaced code were killed (their in-memory state "
            "lost) and restarted by their supervisors on the new code: %s"
            % (len(killed), "; ".join("%s in %s" % (k.get("name"), k.get("in") or k.get("current_function"))
                                      for k in killed[:5])))
    kept = out.get("supervisors_kept") or []
    if kept:
        extra.setdefault("warnings", []).append(
            "%d supervisor(s) kept the child specs they were started with: the new version's init/1 does not "
            "accept their start arguments, so they were not updated (their running children are unchanged; a "
            "restart of the node applies the new specs): %s" % (len(kept), "; ".join(kept[:5])))
    kids = out.get("children_changed") or []
    failed_kids = [k for k in kids if "FAILED" in k or "not reconciled" in k]
    if failed_kids:
        extra.setdefault("warnings", []).append("children of a dependency's supervision tree: %s" % "; ".join(failed_kids))
    if kids:
        extra.setdefault("notes", []).extend("children: %s" % k for k in kids if k not in failed_kids)
    closed = out.get("conns_closed") or []
    if closed:
        extra.setdefault("notes", []).append(
            "%d idle connection(s) still on code an earlier upgrade replaced were closed before the install "
            "(release_handler would have moved them onto the current code with their old state; clients reopen "
            "them): %s" % (len(closed), ", ".join(sorted(set(c.get("initial_call") or "?" for c in closed)))))
    finishing = out.get("old_code_finishing_count") or 0
    if finishing:
        extra["old_code_finishing"] = finishing
        extra.setdefault("notes", []).append(
            "%d open connection(s) finish on the previous code (%s); it is purged when the last one closes"
            % (finishing, ", ".join(sorted(set(f.get("initial_call") or "?" for f in out.get("old_code_finishing") or [])))))
    if noop:
        if out.get("settings_changed"):
            extra["settings_changed"] = out["settings_changed"]
        return dict(result, changed=bool(out.get("settings_changed")), **extra)
    return dict(result, changed=True, agent=out, host_version=out.get("host_version", plan["to"]),
                timing=timing(out), **extra)


def not_applied(out):
    """What the run asked for that the running node does not have yet, in words (empty: nothing)."""
    notes = []
    pending = out.get("env_pending_restart") or []
    if pending:
        notes.append("hotswap_env: %s written on the host, but the running node started with other values: "
                     "they take effect when it next starts (a cold deploy of another version, or a restart of its service)"
                     % ", ".join(pending))
    return notes
