# -*- coding: utf-8 -*-
# Copyright (c) beam.hotswap contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type


class ModuleDocFragment(object):
    # The release root on a target: the options of every module that works on one (facts, release).
    DOCUMENTATION = r"""
options:
  app:
    description: Release name (the C(releases) key in C(mix.exs), or the relx release name in C(rebar.config)).
    type: str
    required: true
  root:
    description: Release root on the host. Absolute, not C(/).
    type: path
    required: true
  user:
    description: Unprivileged user the node runs as (created on first install if missing).
    type: str
"""
