#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) beam.hotswap contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: facts
short_description: What a target runs, holds and is (OS fingerprint), for planning a rollout
version_added: 0.1.0
description:
  - Asks the installed reload agent for the status of one release root (running, permanent, unpacked
    and old releases, node up, OS pid, packages held) and adds the host's OS fingerprint.
  - With O(install_agent=true) it first installs the agent that ships with this collection in
    C(ROOT/.hotswap/) when the host's copy differs (the action plugin sends checksums first and the files
    only when needed), so installing and gathering is one round-trip when nothing changed.
  - When the installed agent is the expected one, the action plugin reads the same facts by running it
    directly (one ssh command, no module payload); this module runs when the agent must be installed or
    updated, or cannot answer.
  - Sets the fact C(hotswap_host).
author:
  - beam.hotswap developers (@beam-hotswap)
extends_documentation_fragment:
  - beam.hotswap.release_root
attributes:
  check_mode:
    support: full
    description: Only reads; reports whether the agent would be installed.
  diff_mode:
    support: none
    description: Nothing to diff.
  idempotent:
    support: full
    description: Running it again with the same input changes nothing.
  facts:
    support: full
    description: Sets C(hotswap_host).
options:
  install_agent:
    description: Install or update the reload agent first (only when it differs).
    type: bool
    default: false
  agent_files:
    description: Set by the action plugin. The agent's files by name, with C(sha256), C(mode) and, when they must travel, C(content) (base64).
    type: dict
"""

EXAMPLES = r"""
- name: Gather what the host runs
  beam.hotswap.facts:
    app: sample
    root: /opt/sample

- name: Show it
  ansible.builtin.debug:
    var: ansible_facts.hotswap_host.running
"""

RETURN = r"""
agent_installed:
  description: Files of the agent that were (or in check mode would be) written.
  returned: when O(install_agent=true)
  type: list
  elements: str
ansible_facts:
  description: Facts about the release root.
  returned: always
  type: dict
  contains:
    hotswap_host:
      description:
        - The agent's status (C(installed), C(node_up), C(os_pid), C(running), C(permanent), C(current),
          C(previous), C(unpacked), C(old), C(releases), C(relup_down), C(packages), C(agent_version)) plus
          C(fingerprint) (the OS fingerprint) and C(versions) (every version the host runs or holds).
      type: dict
"""

import base64
import hashlib
import os

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.beam.hotswap.plugins.module_utils._agent import fingerprint as _fingerprint
from ansible_collections.beam.hotswap.plugins.module_utils._agent.files import sha256_file
from ansible_collections.beam.hotswap.plugins.module_utils._agent_client import AgentClient, AgentError, release_root_spec


def install_agent(module, root, files):
    """Write the agent's files that differ (temp file + atomic_move, root-owned). Returns their names,
    or None when content is needed first."""
    hs = os.path.join(root, ".hotswap")
    stale = [name for name, spec in sorted(files.items())
             if not os.path.isfile(os.path.join(hs, name)) or sha256_file(os.path.join(hs, name)) != spec["sha256"]]
    if not stale or module.check_mode:
        return stale
    if any("content" not in files[name] for name in stale):
        return None
    if not os.path.isdir(root):
        # a new release root is 0750 (docs/operations.md); the agent gives it to hotswap_user on first install
        os.makedirs(root)
        os.chmod(root, 0o750)
    if not os.path.isdir(hs):
        os.makedirs(hs, 0o750)
    os.chmod(hs, 0o750)
    for name in stale:
        data = base64.b64decode(files[name]["content"])
        if hashlib.sha256(data).hexdigest() != files[name]["sha256"]:
            module.fail_json(msg="the agent file %s arrived damaged (sha256 mismatch); nothing was installed" % name)
        tmp = os.path.join(hs, "." + name + ".tmp")
        with open(tmp, "wb") as f:
            f.write(data)
        mode = int(files[name].get("mode", "0640"), 8)
        os.chmod(tmp, mode)
        module.atomic_move(tmp, os.path.join(hs, name))
        # atomic_move gives a new file the default mode (0666 & ~umask) and an existing one its old mode
        os.chmod(os.path.join(hs, name), mode)
    return stale


def main():
    module = AnsibleModule(
        argument_spec=dict(release_root_spec(), install_agent=dict(type="bool", default=False),
                           agent_files=dict(type="dict")),
        supports_check_mode=True,
    )
    p = module.params
    changed = False
    result = {}
    try:
        client = AgentClient(module, p["root"], p["app"])
        if p["install_agent"]:
            if not p["agent_files"]:
                module.fail_json(msg="install_agent needs the action plugin beam.hotswap.facts (agent_files is empty)")
            written = install_agent(module, client.root, p["agent_files"])
            if written is None:
                module.exit_json(changed=False, need_agent=True)
            changed = bool(written)
            result["agent_installed"] = written
        # status reads files and epmd; it needs no user (which may not exist before the first install)
        if module.check_mode and changed:
            # the new agent is not there yet: read what the installed one says, if it can
            try:
                status = client.status(check_version=False)
            except AgentError:
                status = {"installed": False, "agent_installed": False, "node_up": False, "versions": [],
                          "releases": [], "packages": {}}
            status["agent_pending"] = True
        else:
            status = client.status()
    except AgentError as e:
        module.fail_json(msg=str(e), agent=e.result)
    status["fingerprint"] = _fingerprint.gather_fingerprint()
    module.exit_json(changed=changed, ansible_facts=dict(hotswap_host=status), **result)


if __name__ == "__main__":
    main()
