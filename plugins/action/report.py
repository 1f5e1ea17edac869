# -*- coding: utf-8 -*-
# Copyright (c) beam.hotswap contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""beam.hotswap.report runs on the controller only: it writes the rollout report as JSON."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import json
import os
import time

from ansible.module_utils.common.text.converters import to_text
from ansible.plugins.action import ActionBase


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
            os.makedirs(dest_dir, exist_ok=True)
            path = os.path.join(dest_dir, "%s-%s.json" % (app, time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())))
            with open(path + ".tmp", "w") as f:
                json.dump(report, f, indent=2, sort_keys=True)
                f.write("\n")
            os.replace(path + ".tmp", path)
        except OSError as e:
            result.update(failed=True, msg="could not write the report to %s: %s" % (dest_dir, e))
            return result
        result["path"] = path
        return result
