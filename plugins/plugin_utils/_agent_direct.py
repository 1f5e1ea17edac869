# -*- coding: utf-8 -*-
# Copyright (c) beam.hotswap contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Controller side: run the reload agent installed on a host directly, in one ssh exec; read the host's
facts and install or update the agent (the one path of beam.hotswap.facts, also taken by beam.hotswap.release
when the facts say the host's agent is missing or differs, so that no task of its own is needed for it).

A module run costs an interpreter start, the module payload and Ansible's module runtime before the
agent even starts; once the agent is on the host, the actions of beam.hotswap.facts and
beam.hotswap.release call it directly instead (the modules stay the fallback and the check-mode path).
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import base64
import json
import os
import shlex

from ansible_collections.beam.hotswap.plugins.module_utils._agent.names import state_dir
from ansible_collections.beam.hotswap.plugins.module_utils._agent.files import sha256_file
from ansible_collections.beam.hotswap.plugins.module_utils._agent_client import (
    AgentError, agent_argv, check_root, parse_answer, status_facts)

AGENT_FILES = (("hotswap_agent.py", "agent.py", "0700"), ("hotswap_node.erl", "node.erl", "0600"))
AGENT_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                         "roles", "agent", "files")

# Loads the agent directory's agent.py as a module (so Python keeps its compiled bytecode next to it) and runs it.
# -I: only the standard library is importable, whatever the remote user's cwd or PYTHON* variables.
_BOOT = "import sys; sys.path.insert(0, sys.argv.pop(1)); import agent; sys.exit(agent.main())"


def remote_python(action, task_vars):
    """The interpreter Ansible uses on the host (python3 when it was left to discovery)."""
    py = task_vars.get("ansible_python_interpreter")
    if not py:
        py = (task_vars.get("ansible_facts") or {}).get("discovered_interpreter_python")
    if py:
        py = action._templar.template(py)
    if not py or str(py).startswith("auto"):
        py = "/usr/bin/python3"
    return str(py)


def run_agent(action, task_vars, root, app, user, command, args, settings=None):
    """Run one agent command on the task's host; returns (rc, answer dict or None, stderr)."""
    argv = agent_argv(root, app, user, command, args)
    if settings:
        argv.append("--settings-stdin")
    flags = "-I -B" if action._task.check_mode else "-I"  # check mode writes nothing, not even bytecode
    cmd = " ".join([shlex.quote(remote_python(action, task_vars)), flags, "-c", shlex.quote(_BOOT),
                    shlex.quote(state_dir(root))] + [shlex.quote(a) for a in argv])
    # always some stdin: the command then runs without a terminal (like a pipelined module), so its
    # stdout carries only the agent's answer
    # bytes: the local connection writes in_data as is (a str fails there)
    data = (json.dumps(settings) if settings else "\n").encode("utf-8")
    res = action._low_level_execute_command(cmd, in_data=data, sudoable=True)
    return res.get("rc"), parse_answer(res.get("stdout")), (res.get("stderr") or "").strip()


def agent_files():
    """{name on the host: {sha256, mode}} of the agent this collection ships (checksums only)."""
    return dict((dest, {"sha256": sha256_file(os.path.join(AGENT_DIR, src)), "mode": mode})
                for src, dest, mode in AGENT_FILES)


def _with_content(files):
    for src, dest, _mode in AGENT_FILES:
        with open(os.path.join(AGENT_DIR, src), "rb") as f:
            files[dest]["content"] = base64.b64encode(f.read()).decode("ascii")


def _read_direct(action, task_vars, args):
    """The facts from the installed agent itself (one ssh exec) when it is the expected one, or None
    when the module must run: no agent yet, another version of it, or anything unexpected (the
    module reports it)."""
    try:
        root = check_root(args.get("root"))
    except AgentError:
        return None
    extra = ["--expect-agent", ",".join("%s=%s" % (name, spec["sha256"])
                                        for name, spec in sorted(args["agent_files"].items()))]
    rc, st, _err = run_agent(action, task_vars, root, args.get("app") or "", None, "facts", extra)
    if rc != 0 or not st or st.get("failed") or not st.get("agent_current"):
        return None
    st.pop("agent_files", None)
    try:
        st = status_facts(st)
    except AgentError:
        return None
    return {"changed": False, "ansible_facts": {"hotswap_host": st}, "agent_installed": []}


def facts(action, task_vars, args):
    """What beam.hotswap.facts returns for ``args`` (app, root[, user][, install_agent]): the installed agent's
    answer when it is current, else the module's (which installs the agent with install_agent). The files travel
    at once when the known facts already say the host's copy differs, else only when the module asks for them."""
    args = dict(args, agent_files=agent_files())
    known = (task_vars.get("ansible_facts") or {}).get("hotswap_host") or {}
    check = action._task.check_mode
    if args.get("install_agent") and known.get("agent_current") is False and not check:
        _with_content(args["agent_files"])
    else:
        direct = _read_direct(action, task_vars, args)
        if direct:
            return direct
    res = action._execute_module(module_name="beam.hotswap.facts", module_args=args, task_vars=task_vars)
    if res.get("need_agent") and not check:
        _with_content(args["agent_files"])
        res = action._execute_module(module_name="beam.hotswap.facts", module_args=args, task_vars=task_vars)
    return res
