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

from ansible.module_utils.common.arg_spec import ArgumentSpecValidator

from ansible_collections.beam.hotswap.plugins.module_utils import _plan, _release
from ansible_collections.beam.hotswap.plugins.module_utils._agent import fingerprint as _fingerprint
from ansible_collections.beam.hotswap.plugins.module_utils._agent.files import sha256_file
from ansible_collections.beam.hotswap.plugins.module_utils._agent.names import state_dir
from ansible_collections.beam.hotswap.plugins.module_utils._agent_client import AgentError, check_root, state_key
from ansible_collections.beam.hotswap.plugins.plugin_utils._agent_direct import facts as agent_facts, run_agent


class ActionModule(ActionBase):

    # False: no remote temp dir up front (ActionBase would make and remove one on every run, two
    # extra ssh round-trips); one is made only when a file is actually uploaded through become.
    TRANSFERS_FILES = False

    def _ensure_agent(self, params, task_vars, result):
        """Install or update the reload agent when the facts say the host's copy is missing or differs (or there
        are no facts), before anything else; the host's refreshed facts, or None when there was nothing to do."""
        known = (task_vars.get("ansible_facts") or {}).get("hotswap_host") or {}
        if known.get("agent_current"):
            return None
        res = agent_facts(self, task_vars, dict(app=params["app"], root=params["root"], install_agent=True))
        if res.get("failed") or not (res.get("ansible_facts") or {}).get("hotswap_host"):
            raise AnsibleActionFail("installing the reload agent failed before anything else was done (%s): the host "
                                    "still runs %s, its release untouched"
                                    % (res.get("msg") or "no answer", known.get("running") or "what it ran"))
        result["agent_installed"] = res.get("agent_installed") or []
        return res["ansible_facts"]["hotswap_host"]

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

    @staticmethod
    def _params(args):
        """The task's arguments validated against the module's own spec, with its defaults; None when the
        spec or the checks beyond it refuse them (the module then reports what is wrong)."""
        res = ArgumentSpecValidator(_release.argument_spec(), required_if=_release.REQUIRED_IF).validate(args)
        if res.error_messages or _release.input_error(res.validated_parameters):
            return None
        return res.validated_parameters

    def _upload(self, local, root, art, direct):
        """Put the package on the host: straight into the agent's directory (it verifies and keeps it) when
        the connection user writes there itself, else into a temp dir for the become user."""
        if direct and not self._play_context.become:
            remote = "%s/.upload-%s-%s.part" % (state_dir(root), art["sha256"][:16], art["file"])
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
        """Carry ``plan`` out through the agent directly; None when the host changed since its facts."""
        root = check_root(params["root"])

        def call(command, args, settings):
            return run_agent(self, task_vars, root, params["app"], params.get("user"), command, args, settings)
        return _release.carry_out(plan, params, package, call, expect_state=state_key(status), diff=self._task.diff)

    def _direct_ok(self, params, status, plan):
        """Whether the agent may carry the plan out directly (anything else goes through the module)."""
        if plan is None or self._task.delegate_to or params.get("artifact_url"):
            return False
        if params["state"] == "deployed" and not params["allow_os_mismatch"]:
            return not _fingerprint.package_mismatch(params["manifest"], status.get("fingerprint") or {})
        return True

    def run(self, tmp=None, task_vars=None):
        result = super(ActionModule, self).run(tmp, task_vars)
        args = dict(self._task.args)  # what the module gets
        have_facts = bool((task_vars.get("ansible_facts") or {}).get("hotswap_host"))
        params = None if self._task.check_mode else self._params(args)
        try:
            fresh = None if params is None else self._ensure_agent(params, task_vars, result)
            if fresh is not None and have_facts:
                task_vars = dict(task_vars, ansible_facts=dict(task_vars["ansible_facts"], hotswap_host=fresh))
            if params is None or (params["state"] == "rolled_back" and not have_facts):
                result.update(self._execute_module(module_name="beam.hotswap.release", module_args=args,
                                                   task_vars=task_vars))
                return result
            status = self._host_status(params, task_vars)
            try:
                plan = _release.make_plan(params, status)
            except _plan.PlanError:
                plan = None  # the module plans on the host and reports why
            direct = have_facts and self._direct_ok(params, status, plan)
            package = None  # (path on the host, sha256, name to keep it under or None)
            manifest = params.get("manifest") or {}
            art = manifest.get("artifacts", {}).get(plan.get("package")) if plan and plan.get("package") else None
            if art:
                root = check_root(params["root"])
                if art["sha256"] in (status.get("packages") or {}):
                    package = ("%s/packages/%s-%s" % (state_dir(root), art["sha256"], art["file"]), art["sha256"], None)
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
            if result.get("agent_installed"):
                result["changed"] = True  # the agent's files changed on the host, whatever the release did
        return result
