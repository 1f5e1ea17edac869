# -*- coding: utf-8 -*-
# Copyright (c) beam.hotswap contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Controller side: run the reload agent installed on a host directly, in one ssh exec.

A module run costs an interpreter start, the module payload and Ansible's module runtime before the
agent even starts; once the agent is on the host, the actions of beam.hotswap.facts and
beam.hotswap.release call it directly instead (the modules stay the fallback and the check-mode path).
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import json
import shlex

from ansible_collections.beam.hotswap.plugins.module_utils._agent.names import state_dir
from ansible_collections.beam.hotswap.plugins.module_utils._agent_client import agent_argv, parse_answer

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
