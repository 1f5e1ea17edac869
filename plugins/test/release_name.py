# -*- coding: utf-8 -*-
# Copyright (c) beam.hotswap contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
name: release_name
short_description: Whether a value is a valid release name
version_added: 0.3.0
description:
  - "True for a release name, the C(releases) key in C(mix.exs): an Erlang atom written bare
    (lower-case letters, digits and _, starting with a letter, at most 63 characters)."
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
    that: hotswap_app is beam.hotswap.release_name
"""

RETURN = r"""
_value:
  description: Whether the value is valid.
  type: bool
"""

from ansible_collections.beam.hotswap.plugins.module_utils._agent.names import valid_app


class TestModule(object):
    def tests(self):
        return {"release_name": valid_app}
