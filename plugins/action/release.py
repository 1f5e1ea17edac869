# -*- coding: utf-8 -*-
# Copyright (c) beam.hotswap contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Controller side of beam.hotswap.release: plan from the gathered facts, upload the one package
the plan needs when the host does not hold it yet (checksum-named), then carry the plan out.

With the host's facts at hand (role beam.hotswap.agent gathers them) the plan is carried out by the
host's agent directly, in one ssh exec: the agent refuses with ``stale_facts`` when the host is no
longer in the state the plan was made from, and the module then plans again on the host. Check
mode, pull mode, delegation and anything the plan cannot decide here go through the module."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os

from ansible.errors import AnsibleActionFail
from ansible.module_utils.common.text.converters import to_text
from ansible.plugins.action import ActionBase

from ansible_collections.beam.hotswap.plugins.module_utils import _plan
from ansible_collections.beam.hotswap.plugins.module_utils._agent import fingerprint as _fingerprint
from ansible_collections.beam.hotswap.plugins.module_utils._agent_client import (
    RELEASE_DEFAULTS, AgentError, check_root, failure_result, plan_command, settings_of, state_key, timing)
from ansible_collections.beam.hotswap.plugins.module_utils._agent.files import sha256_file
from ansible_collections.beam.hotswap.plugins.module_utils._manifest import manifest_errors
from ansible_collections.beam.hotswap.plugins.plugin_utils._agent_direct import run_agent


class ActionModule(ActionBase):

    # False: no remote temp dir up front (ActionBase would make and remove one on every run, two
    # extra ssh round-trips); one is made only when a file is actually uploaded through become.
    TRANSFERS_FILES = False

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

    def _make_plan(self, args, status):
        """The plan from the facts, or None when only the module can tell (it then reports why)."""
        try:
            if args["state"] == "deployed":
                manifest = args.get("manifest")
                if not isinstance(manifest, dict) or manifest_errors(manifest) or manifest.get("app") != args["app"]:
                    return None
                return _plan.deploy(status, manifest, args["mode"])
            if args["state"] == "rolled_back":
                return _plan.rollback(status, args.get("version") or None, args["mode"])
        except (_plan.PlanError, KeyError, TypeError):
            return None
        return None

    def _upload(self, local, root, art, direct):
        """Put the package on the host: straight into ROOT/.hotswap/ (the agent verifies and keeps it) when
        the connection user writes there itself, else into a temp dir for the become user."""
        if direct and not self._play_context.become:
            remote = "%s/.hotswap/.upload-%s-%s.part" % (root, art["sha256"][:16], art["file"])
            self._transfer_file(local, remote)
            return remote
        tmpdir = self._make_tmp_path()
        remote = self._connection._shell.join_path(tmpdir, art["file"])
        self._transfer_file(local, remote)
        self._fixup_perms2((tmpdir, remote))
        return remote

    def _local_artifact(self, args, manifest, art):
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
        return local

    def _direct(self, params, status, plan, package, task_vars):
        """Carry ``plan`` out through the agent; None when the host changed since its facts (stale)."""
        summary = _plan.describe(plan)
        result = {"plan": plan, "summary": summary, "host_version": plan["from"]}
        if self._task.diff:
            result["diff"] = _plan.diff(params["app"], plan)
        if plan["action"] == _plan.NOOP:
            # nothing to do, if the host is still where its facts said: one read to make sure
            command, cargs, settings = "status", [], None
        else:
            command, cargs = plan_command(plan, params, package and package[:2])
            if package and package[2]:
                cargs += ["--store-package", package[2]]
            settings = settings_of(params)
        cargs += ["--expect-state", state_key(status)]
        rc, out, err = run_agent(self, task_vars, check_root(params["root"]), params["app"], params.get("user"),
                                 command, cargs, settings=settings)
        if out is None:
            raise AnsibleActionFail("%s: the agent gave no answer (exit %s): %s" % (summary, rc, err[-2000:]))
        if out.get("stale_facts"):
            return None
        if plan["action"] == _plan.NOOP and rc == 0 and not out.get("failed"):
            result["changed"] = False
            return result
        if rc != 0 or out.get("failed"):
            err = AgentError(out.get("msg") or "agent %s failed" % command, out)
            result.update(failure_result(result, summary, err), failed=True)
            return result
        result.update(changed=True, agent=out, host_version=out.get("host_version", plan["to"]), timing=timing(out))
        return result

    def _direct_ok(self, params, status, plan, have_facts):
        """Whether the plan may be carried out by the agent directly: everything the module would check
        holds (anything else goes through the module, which reports it)."""
        try:
            keep, timeout = int(params["keep_releases"]), int(params["health_timeout"])
        except (TypeError, ValueError):
            return False
        plain = all(isinstance(params.get(k), (str, type(None))) for k in ("user", "cookie", "health_check"))
        ok = (plan is not None and have_facts and not self._task.delegate_to and not params.get("artifact_url")
              and keep >= 2 and timeout > 0 and plain and isinstance(params["env"], dict)
              and params["service_manager"] in ("auto", "systemd", "daemon"))
        if ok and params["state"] == "deployed" and not params.get("allow_os_mismatch"):
            ok = not _fingerprint.package_mismatch(params["manifest"], status.get("fingerprint") or {})
        return ok

    def run(self, tmp=None, task_vars=None):
        result = super(ActionModule, self).run(tmp, task_vars)
        args = dict(self._task.args)  # what the module gets
        params = dict(RELEASE_DEFAULTS, **dict((k, v) for k, v in args.items() if v is not None))
        have_facts = bool((task_vars.get("ansible_facts") or {}).get("hotswap_host"))
        try:
            manifest = params.get("manifest")
            deploying = params["state"] == "deployed" and isinstance(manifest, dict)
            if self._task.check_mode or params["mode"] not in _plan.MODES or not params.get("app") \
                    or not params.get("root") or not (deploying or (params["state"] == "rolled_back" and have_facts)):
                result.update(self._execute_module(module_name="beam.hotswap.release", module_args=args,
                                                   task_vars=task_vars))
                return result
            status = self._host_status(params, task_vars)
            plan = self._make_plan(params, status)
            direct = self._direct_ok(params, status, plan, have_facts)
            package = None  # (path on the host, sha256, name to keep it under or None)
            kind = plan.get("package") if plan else None
            art = (manifest.get("artifacts") or {}).get(kind) if kind and deploying else None
            if art:
                root = check_root(params["root"])
                if art.get("sha256") in (status.get("packages") or {}):
                    package = ("%s/.hotswap/packages/%s-%s" % (root, art["sha256"], art["file"]), art["sha256"], None)
                elif not params.get("artifact_url"):
                    remote = self._upload(self._local_artifact(params, manifest, art), root, art, direct)
                    package = (remote, art["sha256"], art["file"])
                    args["package_src"] = remote
                    result["uploaded"] = art["file"]
            if direct:
                res = self._direct(params, status, plan, package, task_vars)
                if res is not None:
                    result.update(res)
                    return result
            result.update(self._execute_module(module_name="beam.hotswap.release", module_args=args,
                                               task_vars=task_vars))
        except (AnsibleActionFail, AgentError) as e:
            result.update(failed=True, msg=to_text(e))
        finally:
            self._remove_tmp_path(self._connection._shell.tmpdir)
        return result
