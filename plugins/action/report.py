# -*- coding: utf-8 -*-
# Copyright (c) beam.hotswap contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""beam.hotswap.report runs on the controller only: it writes the rollout report as JSON.

The report directory is private to the controller user (0700, made so when it is not), each report 0600."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import json
import os
import re
import time

from ansible.module_utils.common.text.converters import to_text
from ansible.plugins.action import ActionBase

from ansible_collections.beam.hotswap.plugins.module_utils._build import dedicated_dir, make_private, private_makedirs, write_private

# what the report directory holds when it is the collection's own: APP-TIMESTAMP.json (and a .tmp of one)
REPORT_NAME = re.compile(r"^[A-Za-z0-9_.-]+-[0-9]{8}T[0-9]{6}Z\.json(\.tmp)?$")


class ActionModule(ActionBase):

    _requires_connection = False

    def run(self, tmp=None, task_vars=None):
        result = super(ActionModule, self).run(tmp, task_vars)
        args = self._task.args
        report = args.get("report")
        dest_dir = args.get("dest_dir")
        app = args.get("app") or "release"
        if not isinstance(report, dict):
            result.update(failed=True, msg="report must be the dict beam.hotswap.fleet_report returns")
            return result
        result.update(changed=False, lines=report.get("lines", []))
        if not dest_dir or self._task.check_mode:
            return result
        try:
            dest_dir = os.path.expanduser(to_text(dest_dir))
            private_makedirs(dest_dir)
            try:
                # one an older collection made open to other users (not a directory of other things: ~, /tmp)
                if dedicated_dir(dest_dir, lambda name, path: bool(REPORT_NAME.match(name))):
                    make_private(dest_dir)
            except OSError as e:
                result["warnings"] = ["the report directory %s is open to other users and cannot be made private "
                                      "(%s): chown it to the controller user or chmod go-rwx it" % (dest_dir, e.strerror)]
            path = os.path.join(dest_dir, "%s-%s.json" % (app, time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())))
            write_private(path, json.dumps(report, indent=2, sort_keys=True) + "\n")
        except OSError as e:
            result.update(failed=True, msg="could not write the report to %s: %s" % (dest_dir, e))
            return result
        result["path"] = path
        return result
