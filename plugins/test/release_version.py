# -*- coding: utf-8 -*-
# Copyright (c) beam.hotswap contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
name: release_version
short_description: Whether a value is a valid release version
version_added: 0.3.0
description:
  - "True for a release version: letters, digits and C(.) C(_) C(+) C(-), at most 64 characters,
    starting with a letter or digit, never C(..) (versions become paths on the hosts)."
  - The same rule the build, the modules and the host agent apply.
positional: _input
options:
  _input:
    description: The value to check.
    type: raw
    required: true
author:
  - beam.hotswap developers (@beam-hotswap)
"""

EXAMPLES = r"""
- name: Refuse a bad value before touching any host
  ansible.builtin.assert:
    that: hotswap_version is beam.hotswap.release_version
"""

RETURN = r"""
_value:
  description: Whether the value is valid.
  type: bool
"""

from ansible_collections.beam.hotswap.plugins.module_utils._agent.names import valid_version


class TestModule(object):
    def tests(self):
        return {"release_version": valid_version}
