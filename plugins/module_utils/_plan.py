# -*- coding: utf-8 -*-
# Copyright (c) beam.hotswap contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The plan for one host: from which release to which, hot or cold, and why.

A pure function of the host's status (what the agent reports) and the manifest (what the build
published). It is printed in check mode, returned by the module and kept in the host's journal.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

from ansible_collections.beam.hotswap.plugins.module_utils._agent.names import vsn_key

MODES = ("auto", "hot", "cold")

# actions
NOOP = "noop"          # already there
INSTALL = "install"    # first install from the full tarball
HOT = "hot"            # relup (up or down edge)
COLD = "cold"          # stop, switch, start
START = "start"        # the target release is permanent but the node is down
COMMIT = "commit"      # the target release runs but was never made permanent


class PlanError(ValueError):
    """The requested change cannot be done as asked (nothing was touched)."""


def _edge(manifest, frm):
    for e in manifest.get("edges", []):
        if e.get("from") == frm:
            return e
    return None


def _result(action, frm, to, reasons, package=None, direction="up"):
    # loses_state: the node runs and this plan restarts it (every process's in-memory state is lost)
    return {"action": action, "from": frm, "to": to, "reasons": list(reasons),
            "package": package, "direction": direction, "loses_state": False}


def deploy(status, manifest, mode="auto", allow_downgrade=False):
    """Plan moving a host to ``manifest['version']``.

    ``status`` is the agent's status (``installed``, ``node_up``, ``running``, ``permanent``,
    ``current``); ``package`` in the result names the artifact the host needs: ``upgrade`` for a
    hot edge, ``release`` for the cold path and first installs, None when nothing must travel.
    Going to an older version than the host's is refused unless it can go hot or ``allow_downgrade``.
    """
    if mode not in MODES:
        raise PlanError("hotswap_mode %r is not one of auto, hot, cold" % (mode,))
    to = manifest["version"]
    status = status or {}
    installed = status.get("installed") and (status.get("permanent") or status.get("running"))
    if not installed:
        if mode == "hot":
            raise PlanError("hotswap_mode=hot but the host has no release yet: the first install is cold "
                            "(use hotswap_mode=auto or cold)")
        return _result(INSTALL, None, to, ["no release on the host: first install"], "release")
    up = bool(status.get("node_up"))
    running = status.get("running") if up else None
    permanent = status.get("permanent")
    if up and running == to and permanent == to:
        return _result(NOOP, to, to, ["%s is running and permanent" % to])
    if up and running == to:
        return _result(COMMIT, permanent, to, ["%s runs but is not permanent: health check then commit" % to])
    if not up and permanent == to:
        if mode == "hot":
            raise PlanError("hotswap_mode=hot but the node is down: it can only be started cold")
        return _result(START, None, to, ["%s is permanent but the node is down: start it" % to])
    frm = running if up else permanent
    older = bool(frm) and vsn_key(to) < vsn_key(frm)
    edge = _edge(manifest, frm)
    hot_edge = up and mode != "cold" and edge is not None and edge.get("verdict") == "hot" \
        and "upgrade" in manifest.get("artifacts", {})
    if older and not hot_edge and not allow_downgrade:
        raise PlanError("%s is older than the %s %s: deploy.yml would %s; roll back with rollback.yml (it goes hot "
                        "over the relup's down edge when there is one), or set hotswap_allow_downgrade: true to deploy "
                        "it cold" % (to, "running" if up else "permanent", frm,
                                     "restart the node cold and lose its in-memory state" if up
                                     else "switch the host to it cold"))
    if not up:
        reasons = ["the node is down: nothing to upgrade hot"]
        if mode == "hot":
            raise PlanError("hotswap_mode=hot but the node is down (%s is permanent): use auto or cold" % frm)
        return _result(COLD, frm, to, reasons, "release")
    if mode == "cold":
        return dict(_result(COLD, frm, to, ["hotswap_mode=cold"], "release"), loses_state=True)
    if edge is not None and edge.get("verdict") == "hot" and "upgrade" in manifest.get("artifacts", {}):
        plan = _result(HOT, frm, to, ["relup has a hot edge from %s" % frm], "upgrade")
        if edge.get("appups"):
            # which appup each changed application uses: the project's, the one it ships, or generated
            plan["appups"] = dict(edge["appups"])
            if set(edge["appups"].values()) - {"generated"}:
                plan["reasons"].append("appups: %s" % appups_line(edge["appups"]))
        if edge.get("warnings"):
            # what the build knows may go wrong although the edge is hot (e.g. a shipped appup missing modules)
            plan["warnings"] = list(edge["warnings"])
        if edge.get("not_applied"):
            # what the build knows a hot upgrade leaves as it was (e.g. an Application module's children)
            plan["not_applied"] = list(edge["not_applied"])
        if edge.get("notes"):
            # what it does beyond loading code (a dependency's supervision tree reconciled)
            plan["notes"] = list(edge["notes"])
        return plan
    if edge is None:
        reasons = ["the build has no edge from %s (it was not among the bases gathered from the fleet)" % frm]
    else:
        reasons = list(edge.get("reasons") or ["edge from %s is cold" % frm])
    if mode == "hot":
        raise PlanError("hotswap_mode=hot but %s -> %s can only be cold: %s" % (frm, to, "; ".join(reasons)))
    return dict(_result(COLD, frm, to, reasons, "release"), loses_state=True)


def rollback(status, target=None, mode="auto"):
    """Plan returning a host to ``target`` (default: the release it ran before the current one),
    using only what is on the host: the running release's relup down edges, or a cold switch."""
    if mode not in MODES:
        raise PlanError("hotswap_mode %r is not one of auto, hot, cold" % (mode,))
    status = status or {}
    if not status.get("installed"):
        raise PlanError("the host has no release to roll back")
    up = bool(status.get("node_up"))
    frm = (status.get("running") if up else None) or status.get("permanent")
    held = [r["version"] for r in status.get("releases", []) if r.get("version") != frm]
    if target is None:
        target = status.get("previous")
        if not target:
            raise PlanError("the host holds no earlier release to roll back to (it holds %s); pass hotswap_version"
                            % (", ".join([frm] + held) if frm else "nothing"))
    if target == frm:
        if up and status.get("permanent") == target:
            return _result(NOOP, frm, target, ["%s is running and permanent" % target], direction="down")
        return _result(COMMIT if up else START, frm, target, ["%s is already the current release" % target],
                       direction="down")
    if target not in held:
        raise PlanError("%s is not on the host (it holds %s): a rollback can only go to a release the host still "
                        "has" % (target, ", ".join(sorted(held)) or "no other release"))
    down = status.get("relup_down") or []
    if up and mode != "cold" and target in down:
        return _result(HOT, frm, target, ["the relup of %s has a down edge to %s" % (frm, target)], direction="down")
    reasons = ["hotswap_mode=cold"] if mode == "cold" else (
        ["the node is down"] if not up else ["the relup of %s has no down edge to %s" % (frm, target)])
    if mode == "hot":
        raise PlanError("hotswap_mode=hot but %s -> %s can only be cold: %s" % (frm, target, "; ".join(reasons)))
    return dict(_result(COLD, frm, target, reasons, direction="down"), loses_state=up)


def appups_line(appups):
    """``cowboy shipped, sample generated``: where each changed application's appup comes from."""
    return ", ".join("%s %s" % (a, appups[a]) for a in sorted(appups))


def describe(plan):
    """One line for people: ``1.0.0 -> 2.0.0: hot (relup has a hot edge from 1.0.0)``."""
    return "%s -> %s: %s (%s)%s" % (plan["from"] or "nothing", plan["to"], plan["action"], "; ".join(plan["reasons"]),
                                    ", the node restarts: in-memory state is lost" if plan.get("loses_state") else "")


def diff(app, plan):
    """The --diff view of a plan: the release before, the release after and how."""
    return {"before": "%s: %s\n" % (app, plan["from"] or "(none)"),
            "after": "%s: %s (%s)\n" % (app, plan["to"], describe(plan))}
