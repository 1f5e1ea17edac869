#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) beam.hotswap contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: report
short_description: Write a rollout report as JSON on the controller
version_added: 0.1.0
description:
  - Writes what M(beam.hotswap.release) did on each host (from C(beam.hotswap.fleet_report)) to
    O(dest_dir) on the controller as C(APP-TIMESTAMP.json) and returns its table lines.
  - Runs entirely on the controller (an action plugin); it never connects to a host and never reports a change.
author:
  - beam.hotswap developers (@beam-hotswap)
attributes:
  check_mode:
    support: full
    description: Writes no file.
  diff_mode:
    support: none
    description: Nothing to diff.
  idempotent:
    support: full
    description: Reports no change; each run writes its own timestamped file.
options:
  report:
    description: The dict C(beam.hotswap.fleet_report) returns.
    type: dict
    required: true
  dest_dir:
    description:
      - Controller directory for the JSON file. Empty writes nothing.
      - Private to the controller user - created with mode 0700 when missing (its missing parents too), made
        0700 when it is open to other users; each report is written with mode 0600.
    type: path
  app:
    description: Release name, for the file name.
    type: str
"""

EXAMPLES = r"""
- name: Write the rollout report
  beam.hotswap.report:
    report: "{{ ansible_play_hosts_all | map('extract', hostvars) | beam.hotswap.fleet_report(app='my_app') }}"
    dest_dir: ~/.cache/beam.hotswap/reports
    app: my_app
  run_once: true
"""

RETURN = r"""
path:
  description: The JSON file written.
  returned: when a file was written
  type: str
lines:
  description: The report as table lines.
  returned: always
  type: list
  elements: str
"""

from ansible.module_utils.basic import AnsibleModule


def main():
    module = AnsibleModule(argument_spec=dict(report=dict(type="dict", required=True), dest_dir=dict(type="path"),
                                              app=dict(type="str")), supports_check_mode=True)
    module.fail_json(msg="beam.hotswap.report runs on the controller through its action plugin")


if __name__ == "__main__":
    main()
