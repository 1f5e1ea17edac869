#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) beam.hotswap contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: release
short_description: Move one release root to a release, hot when OTP can, cold when it must
version_added: 0.1.0
description:
  - Plans from the host's state and the build manifest (first install, hot relup, cold restart, commit,
    start or nothing), then drives the installed reload agent to carry the plan out in one agent run.
  - A hot upgrade is unpack, install, health check and commit; a failure in install, health or commit
    reverts the host to the release it had, before the task fails. The result says what happened and
    which release the host ended on.
  - With O(state=rolled_back) the host returns to O(version) (default the release it ran before) using
    only what it holds, that is the running release's relup down edge when there is one, a cold switch otherwise.
  - The action plugin of the same name first installs or updates the reload agent where the host's facts say
    it is missing or differs (with M(beam.hotswap.facts), the files at once; nothing in check mode), then
    uploads the package the plan needs, only when the host lacks it.
  - When the host's facts are known (role C(beam.hotswap.agent) gathers them), the action plugin plans from
    them and has the installed agent carry the plan out directly (one ssh command, no module payload),
    telling it the state it planned from; if the host changed in between, the agent refuses and this
    module plans again on the host. Check mode, pull mode (O(artifact_url)) and delegated tasks always
    run this module.
author:
  - beam.hotswap developers (@beam-hotswap)
extends_documentation_fragment:
  - beam.hotswap.release_root
attributes:
  check_mode:
    support: full
    description: Prints the plan (from, to, hot or cold, why) and changes nothing.
  diff_mode:
    support: full
    description: Shows the release before and after.
  idempotent:
    support: full
    description: Running it again with the same input changes nothing.
options:
  state:
    description: V(deployed) moves the host to the manifest's version; V(rolled_back) to O(version) or the previous release.
    type: str
    choices: [deployed, rolled_back]
    default: deployed
  manifest:
    description: The build manifest (required for O(state=deployed)).
    type: dict
  version:
    description: With O(state=rolled_back), the release to return to (default the previous one).
    type: str
  mode:
    description: V(auto) goes hot when the manifest has a hot edge from the running release, cold otherwise.
    type: str
    choices: [auto, hot, cold]
    default: auto
  package_src:
    description: Path on the host of an uploaded package (set by the action plugin); moved into the agent's package store.
    type: path
  health_check:
    description:
      - What must hold after install and before commit. An C(http://) or C(https://) URL (2xx), C(cmd:ARGV)
        (a command on the host, exit 0) or C(rpc:EXPR) (an Elixir expression evaluated on the node, must be true).
      - Default, the node answers and runs the new release.
    type: str
  health_timeout:
    description: Seconds the health check may take to pass.
    type: int
    default: 30
  keep_releases:
    description: Releases kept on the host after a successful deploy (never the running, permanent or previous one).
    type: int
    default: 5
  settle_seconds:
    description:
      - After a hot upgrade's commit (and the pruning of old releases), or a cold start, how long the node must stay
        up, its OS process alive, before the health check runs once more. A node that dies or fails is brought back to the
        release it had (over the relup while it runs, else that release made permanent again and started
        cold) and the task fails. V(0) turns the watch off.
      - The default outlasts the time a node takes to die of a process whose new code raises every second (under OTP's
        and Elixir's default restart intensities, C(bench/settle_death.py)).
    type: float
    default: 6.0
  old_code:
    description:
      - What to do about processes that still execute code a hot upgrade (or hot rollback) replaces, e.g. a
        loop blocked in C(receive) or C(:gen_tcp.accept) inside a changed module; purging the old code after
        the upgrade would kill them. The agent finds them before anything is installed and gives them
        O(old_code_wait) seconds to leave; a process seen re-entering the module through a fully qualified call
        moves to the new code by itself and is let through.
      - V(refuse) fails the host before the point of no return, naming the processes and modules; the host
        keeps its release and its state.
      - V(kill) goes on; processes still in the old code after the install (and a second wait) are killed by
        the purge, named in the result, and their supervisors restart them on the new code.
    type: str
    choices: [refuse, kill]
    default: refuse
  old_code_wait:
    description: Seconds processes in code the upgrade replaces get to leave it, before and after the install.
    type: float
    default: 5.0
  service_manager:
    description: V(systemd) (a generated unit), V(daemon) (the release's own C(bin/APP daemon)/C(stop)) or V(auto).
    type: str
    choices: [auto, systemd, daemon]
    default: auto
  env:
    description: Environment of the node (C(KEY=VALUE)), written to the agent's env file (mode 0600). Never printed.
    type: dict
    default: {}
  cookie:
    description: Erlang cookie written to C(releases/COOKIE) (mode 0400, the run user). Never printed.
    type: str
  artifact_dir:
    description: Handled by the action plugin. Controller directory holding C(APP/VSN/) artifacts.
    type: path
  artifact_url:
    description:
      - Pull mode. An HTTP(S) base URL; the host downloads C(BASE/APP/VSN/FILE) itself (verified against the
        manifest's sha256) instead of the controller pushing it. Only the package the plan needs is fetched, and
        only when the host does not hold it yet.
    type: str
  validate_certs:
    description: Verify TLS certificates in pull mode.
    type: bool
    default: true
  allow_downgrade:
    description:
      - Deploy a version older than the host's even when it can only go cold (its in-memory state lost). By
        default such a deploy is refused, pointing at C(rollback.yml); an older version with a hot edge from
        the running one goes hot either way.
    type: bool
    default: false
  allow_os_mismatch:
    description: Install a release whose build host's OS fingerprint differs from this host's (refused by default).
    type: bool
    default: false
"""

EXAMPLES = r"""
- name: Deploy what the build published (hot when possible)
  beam.hotswap.release:
    app: sample
    root: /opt/sample
    manifest: "{{ hostvars[groups['hotswap_build'][0]].hotswap_manifest }}"
    artifact_dir: ~/.cache/beam.hotswap/artifacts
    health_check: http://127.0.0.1:4000/health

- name: Roll back to the previous release
  beam.hotswap.release:
    app: sample
    root: /opt/sample
    state: rolled_back
"""

RETURN = r"""
plan:
  description: What was (or in check mode would be) done.
  returned: always
  type: dict
  contains:
    action:
      description: One of V(noop), V(install), V(hot), V(cold), V(start), V(commit).
      type: str
    from:
      description: Release before.
      type: str
    to:
      description: Release asked for.
      type: str
    reasons:
      description: Why this action (for cold, why not hot).
      type: list
      elements: str
  sample: {action: hot, from: 1.0.0, to: 2.0.0, reasons: ["relup has a hot edge from 1.0.0"]}
summary:
  description: The plan in one line.
  returned: always
  type: str
  sample: "1.0.0 -> 2.0.0: hot (relup has a hot edge from 1.0.0)"
host_version:
  description: The release the host runs at the end.
  returned: always
  type: str
agent:
  description: The agent's answer (durations such as C(install_ms), C(total_ms), C(downtime_ms); C(reverted)).
  returned: when the agent ran
  type: dict
reverted:
  description: True when a failure made the agent return the host to its previous release.
  returned: on failure
  type: bool
agent_installed:
  description: The agent's files the action wrote on the host before anything else (its copy was missing or
    differed); a change of its own, so the task reports C(changed).
  returned: when the action installed or updated the agent
  type: list
  elements: str
  sample: [agent.py, node.erl]
timing:
  description: The agent's figures in one line.
  returned: when the agent ran
  type: str
  sample: install 11 ms, downtime 0 ms, total 612 ms
"""

import hashlib
import os

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.urls import fetch_url

from ansible_collections.beam.hotswap.plugins.module_utils import _plan, _release
from ansible_collections.beam.hotswap.plugins.module_utils._agent import fingerprint as _fingerprint
from ansible_collections.beam.hotswap.plugins.module_utils._agent_client import AgentClient, AgentError


def _pull(module, base, manifest, art, path):
    """Pull mode: download one artifact, verify its sha256, then move it into the package store."""
    url = "%s/%s/%s/%s" % (base.rstrip("/"), manifest["app"], manifest["version"], art["file"])
    resp, info = fetch_url(module, url, timeout=120)
    if resp is None or info.get("status") != 200:
        module.fail_json(msg="pulling %s failed (HTTP %s: %s): check hotswap_artifact_url and that the file is "
                         "served there; nothing changed" % (url, info.get("status"), info.get("msg")), changed=False)
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    tmp = path + ".part"
    h = hashlib.sha256()
    # 0600 like every package the agent keeps (a full tarball holds the release's default cookie)
    with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600), "wb") as f:
        for block in iter(lambda: resp.read(1 << 20), b""):
            h.update(block)
            f.write(block)
    if h.hexdigest() != art["sha256"]:
        os.unlink(tmp)
        module.fail_json(msg="%s does not match its sha256 in the manifest (got %s): refused, nothing changed"
                         % (url, h.hexdigest()), changed=False)
    module.atomic_move(tmp, path)
    os.chmod(path, 0o600)


def _package(module, client, p, plan, result):
    """(path on the host, sha256, name to keep it under or None) of the package the plan needs, pulling
    it first in pull mode; None when the plan needs none."""
    if not plan["package"]:
        return None
    art = p["manifest"]["artifacts"][plan["package"]]
    path = os.path.join(client.hs, "packages", "%s-%s" % (art["sha256"], art["file"]))
    if p["artifact_url"] and not os.path.exists(path) and not p["package_src"]:
        _pull(module, p["artifact_url"], p["manifest"], art, path)
        result["pulled"] = art["file"]
    if p["package_src"] and not os.path.exists(path):
        return (p["package_src"], art["sha256"], art["file"])
    if os.path.exists(path):
        return (path, art["sha256"], None)
    module.fail_json(msg="the package %s is not on the host (expected %s); the run's facts were stale: re-run the "
                     "play" % (art["file"], path), changed=False, **result)
    return None


def main():
    module = AnsibleModule(argument_spec=_release.argument_spec(), required_if=_release.REQUIRED_IF,
                           supports_check_mode=True)
    p = module.params
    why = _release.input_error(p)
    if why:
        module.fail_json(msg=why, changed=False)
    try:
        client = AgentClient(module, p["root"], p["app"], p["user"])
        status_client = AgentClient(module, p["root"], p["app"])
        if p["state"] == "deployed":
            why = _fingerprint.package_mismatch(p["manifest"], _fingerprint.gather_fingerprint())
            if why and not p["allow_os_mismatch"]:
                module.fail_json(msg=why + "; nothing changed", changed=False)
        plan = _release.make_plan(p, status_client.status())
    except (AgentError, _plan.PlanError) as e:
        module.fail_json(msg=str(e), changed=False)

    result = _release.plan_result(plan, p["app"], module._diff)
    if module.check_mode or plan["action"] == _plan.NOOP:
        module.exit_json(changed=plan["action"] != _plan.NOOP, **result)
    extra = {}
    package = _package(module, client, p, plan, extra)
    result = _release.carry_out(plan, p, package, client.call, diff=module._diff)
    result.update(extra)
    if result.get("failed"):
        result.pop("failed")
        module.fail_json(**result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
