"""The check_vars action: fails with one line per bad value, warns about unknown names, never raises."""
from unittest import mock

from ansible_collections.beam.hotswap.plugins.action import check_vars as action_mod
from hotswap_testlib.action_harness import make_action, run_action


def _run(task_vars, args=None):
    a = make_action(action_mod.ActionModule, args or {})
    a._templar = mock.MagicMock()
    a._templar.template.side_effect = lambda v: v
    return a, run_action(a, task_vars)


def test_a_bad_value_fails_with_its_line_and_nothing_runs_on_a_host():
    a, res = _run({"hotswap_app": "demo", "hotswap_health_timeout": "30s", "other": 1})
    assert res["failed"] and res["msg"] == ("Bad input, nothing was changed. hotswap_health_timeout must be an "
                                            "integer (seconds), got '30s'.")
    assert not a.module_calls and res["changed"] is False


def test_a_misspelled_name_is_a_warning_and_the_task_passes():
    _a, res = _run({"hotswap_app": "demo", "hotswap_mdoe": "hot"})
    assert not res.get("failed")
    assert res["warnings"] == ["unknown variable hotswap_mdoe is ignored: did you mean hotswap_mode?"]


def test_strings_from_the_command_line_that_convert_pass():
    _a, res = _run({"hotswap_health_timeout": "30", "hotswap_allow_downgrade": "true", "_hotswap_x": "?"})
    assert not res.get("failed") and "warnings" not in res
    assert res["checked"] == ["hotswap_allow_downgrade", "hotswap_health_timeout"]


def test_a_target_hosts_own_bad_value_is_named_with_the_host():
    hostvars = mock.MagicMock()
    hostvars.raw_get.side_effect = lambda h: {"hotswap_app": "demo", "hotswap_keep_releases": "abc" if h == "t2" else 5}
    a = make_action(action_mod.ActionModule, {"hosts": ["t1", "t2"]})
    a._templar = mock.MagicMock()
    a._templar.template.side_effect = lambda v: v
    a._templar.copy_with_new_env.return_value = a._templar
    res = run_action(a, {"hotswap_app": "demo", "hostvars": hostvars})
    assert res["failed"] and res["errors"] == ["t2: hotswap_keep_releases must be an integer, got 'abc'."]


def test_a_broken_check_is_a_warning_never_a_traceback():
    with mock.patch.object(action_mod._vars, "load_specs", side_effect=RuntimeError("boom")):
        _a, res = _run({"hotswap_app": "demo"})
    assert not res.get("failed") and "boom" in res["warnings"][0]
