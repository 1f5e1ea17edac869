# -*- coding: utf-8 -*-
# Copyright (c) beam.hotswap contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Jinja tests for the collection's name rules (documented in release_name.yml, release_version.yml and
release_root.yml beside this file): the rules of plugins/module_utils/_agent/names.py, which the build,
the modules and the host agent apply too."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

from ansible_collections.beam.hotswap.plugins.module_utils._agent.names import valid_app, valid_root, valid_user, valid_version


class TestModule(object):
    def tests(self):
        return {"release_name": valid_app, "release_version": valid_version, "release_root": valid_root,
                "release_user": valid_user}
