"""An action plugin of the collection, built with Ansible's task, connection and module runs replaced by
recorders, for table-driven unit tests of what the action decides (which path, which uploads, which result)."""
from __future__ import annotations

from unittest import mock


def make_action(cls, args, check_mode=False, delegate_to=None, module_results=()):
    """``cls(task, connection, ...)`` whose ``_execute_module`` returns ``module_results`` in turn (the
    last one again when they run out) and records its calls."""
    task = mock.MagicMock()
    task.args = dict(args)
    task.check_mode = check_mode
    task.diff = False
    task.delegate_to = delegate_to
    task.async_val = 0
    action = cls(task, mock.MagicMock(), mock.MagicMock(become=False), loader=None, templar=None,
                 shared_loader_obj=None)
    results = list(module_results) or [{"changed": False}]
    calls = []

    def execute_module(module_name=None, module_args=None, task_vars=None, **_kw):
        calls.append({"module": module_name, "args": dict(module_args or {})})
        return dict(results[min(len(calls), len(results)) - 1])
    action._execute_module = execute_module
    action.module_calls = calls
    action._remove_tmp_path = mock.MagicMock()
    action._make_tmp_path = mock.MagicMock(return_value="/tmp/remote")
    action._transfer_file = mock.MagicMock()
    action._fixup_perms2 = mock.MagicMock()
    return action


def run_action(action, task_vars=None):
    """``action.run`` without ActionBase's own checks (they need a real task)."""
    with mock.patch("ansible.plugins.action.ActionBase.run", return_value={}):
        return action.run(task_vars=task_vars or {})
