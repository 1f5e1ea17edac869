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
  - Sets the fact C(hotswap_host).
author:
  - beam.hotswap developers (@beam-hotswap)
attributes:
  check_mode:
    support: full
    description: Only reads.
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
  app:
    description: Release name.
    type: str
    required: true
  root:
    description: Release root on the host.
    type: path
    required: true
  user:
    description: User the node runs as.
    type: str
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

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.beam.hotswap.plugins.module_utils import _fingerprint
from ansible_collections.beam.hotswap.plugins.module_utils._agent_client import AgentClient, AgentError


def main():
    module = AnsibleModule(
        argument_spec=dict(
            app=dict(type="str", required=True),
            root=dict(type="path", required=True),
            user=dict(type="str"),
        ),
        supports_check_mode=True,
    )
    try:
        # status reads files and epmd; it needs no user (which may not exist before the first install)
        status = AgentClient(module, module.params["root"], module.params["app"]).status()
    except AgentError as e:
        module.fail_json(msg=str(e), agent=e.result)
    status["fingerprint"] = _fingerprint.gather()
    module.exit_json(changed=False, ansible_facts=dict(hotswap_host=status))


if __name__ == "__main__":
    main()
