# -*- coding: utf-8 -*-
# Copyright (c) beam.hotswap contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Controller side of beam.hotswap.release: plan from the gathered facts, upload the one package
the plan needs when the host does not hold it yet (checksum-named), then run the module once."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os

from ansible.errors import AnsibleActionFail
from ansible.module_utils.common.text.converters import to_text
from ansible.plugins.action import ActionBase

from ansible_collections.beam.hotswap.plugins.module_utils import _plan
from ansible_collections.beam.hotswap.plugins.module_utils._build import manifest_errors, sha256_file


class ActionModule(ActionBase):

    TRANSFERS_FILES = True

    def _host_status(self, args, task_vars):
        facts = (task_vars.get("ansible_facts") or {}).get("hotswap_host")
        if facts:
            return facts
        res = self._execute_module(module_name="beam.hotswap.facts",
                                   module_args=dict(app=args["app"], root=args["root"], user=args.get("user")),
                                   task_vars=task_vars)
        if res.get("failed"):
            raise AnsibleActionFail(res.get("msg", "could not read the host's release state"))
        return res["ansible_facts"]["hotswap_host"]

    def run(self, tmp=None, task_vars=None):
        result = super(ActionModule, self).run(tmp, task_vars)
        args = dict(self._task.args)
        try:
            manifest = args.get("manifest")
            if args.get("state", "deployed") == "deployed" and isinstance(manifest, dict) \
                    and not self._task.check_mode:
                status = self._host_status(args, task_vars)
                try:
                    if manifest_errors(manifest):
                        raise _plan.PlanError("unusable manifest")
                    plan = _plan.deploy(status, manifest, args.get("mode", "auto"))
                except (_plan.PlanError, KeyError):
                    plan = {"package": None}  # the module reports the error
                kind = plan.get("package")
                art = (manifest.get("artifacts") or {}).get(kind) if kind else None
                if art and art.get("sha256") not in (status.get("packages") or {}) and not args.get("artifact_url"):
                    adir = args.get("artifact_dir")
                    if not adir:
                        raise AnsibleActionFail("artifact_dir is required: the host lacks %s" % art.get("file"))
                    local = os.path.join(os.path.expanduser(adir), manifest["app"], manifest["version"], art["file"])
                    if not os.path.isfile(local):
                        raise AnsibleActionFail("artifact %s is not on the controller (%s): run the build play first"
                                                % (art["file"], local))
                    if sha256_file(local) != art["sha256"]:
                        raise AnsibleActionFail("artifact %s on the controller does not match its sha256 in the "
                                                "manifest: rebuild or delete %s" % (art["file"], local))
                    tmpdir = self._make_tmp_path()
                    remote = self._connection._shell.join_path(tmpdir, art["file"])
                    self._transfer_file(local, remote)
                    self._fixup_perms2((tmpdir, remote))
                    args["package_src"] = remote
                    result["uploaded"] = art["file"]
            result.update(self._execute_module(module_name="beam.hotswap.release", module_args=args,
                                               task_vars=task_vars))
        except AnsibleActionFail as e:
            result.update(failed=True, msg=to_text(e))
        finally:
            self._remove_tmp_path(self._connection._shell.tmpdir)
        return result
