#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) beam.hotswap contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: check_vars
short_description: Check every hotswap_* variable against the roles' argument specs, on the controller
version_added: 0.3.0
description:
  - Reads the option rules (type, list elements, choices) from the C(meta/argument_specs.yml) of this
    collection's roles at run time and checks every C(hotswap_*) variable the play sees against them, so a bad
    value fails on the controller before any host is touched, with one line per value (for example
    C(hotswap_health_timeout must be an integer (seconds), got '30s')). Values given with C(-e) are strings;
    a string that converts (C("30") for an integer) passes, as it does for the roles.
  - A C(hotswap_*) name that no role and no playbook of the collection uses is reported as a warning naming
    the closest known name. Names starting with C(_hotswap) are internal and never checked.
  - With O(hosts), the C(hotswap_*) variables the inventory sets differently for those hosts are checked too.
  - Runs entirely on the controller (an action plugin); it never connects to a host and never reports a change.
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
    description: Changes nothing.
options:
  hosts:
    description: Inventory host names whose own C(hotswap_*) variables are checked as well.
    type: list
    elements: str
    default: []
"""

EXAMPLES = r"""
- name: Check the hotswap_* variables before touching any host
  beam.hotswap.check_vars:
    hosts: "{{ query('ansible.builtin.inventory_hostnames', 'hotswap_targets') }}"
  delegate_to: localhost
  run_once: true
"""

RETURN = r"""
checked:
  description: The C(hotswap_*) variables that were checked.
  returned: always
  type: list
  elements: str
errors:
  description: One line per bad value (the task fails when there is any).
  returned: when a value is bad
  type: list
  elements: str
"""

from ansible.module_utils.basic import AnsibleModule


def main():
    module = AnsibleModule(argument_spec=dict(hosts=dict(type="list", elements="str", default=[])),
                           supports_check_mode=True)
    module.fail_json(msg="beam.hotswap.check_vars runs on the controller through its action plugin")


if __name__ == "__main__":
    main()
