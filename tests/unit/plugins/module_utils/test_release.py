"""The release task's contract: one spec, the checks beyond it, plan -> agent command, answer -> result."""
import pytest
from ansible.module_utils.common.arg_spec import ArgumentSpecValidator

from ansible_collections.beam.hotswap.plugins.module_utils import _release

MANIFEST = {"schema": 1, "app": "demo", "version": "2.0.0", "edges": [{"from": "1.0.0", "verdict": "hot"}],
            "artifacts": {"release": {"file": "r.tar.gz", "sha256": "a" * 64},
                          "upgrade": {"file": "u.tar.gz", "sha256": "b" * 64}}}


def params(**kw):
    args = dict({"app": "demo", "root": "/opt/demo", "manifest": MANIFEST}, **kw)
    res = ArgumentSpecValidator(_release.argument_spec(), required_if=_release.REQUIRED_IF).validate(args)
    assert not res.error_messages, res.error_messages
    return res.validated_parameters


def test_spec_defaults_are_the_documented_ones():
    p = params()
    assert (p["state"], p["mode"], p["health_timeout"], p["keep_releases"], p["service_manager"], p["env"]) == \
        ("deployed", "auto", 30, 5, "auto", {})


@pytest.mark.parametrize("args, needle", [
    ({"mode": "warm"}, "mode"),
    ({"service_manager": "upstart"}, "service_manager"),
    ({"keep_releases": "many"}, "keep_releases"),
    ({"colour": "red"}, "colour"),
])
def test_spec_refuses_bad_types_and_choices(args, needle):
    full = dict({"app": "demo", "root": "/opt/demo", "manifest": MANIFEST}, **args)
    res = ArgumentSpecValidator(_release.argument_spec(), required_if=_release.REQUIRED_IF).validate(full)
    assert needle in " ".join(res.error_messages)


@pytest.mark.parametrize("kw, needle", [
    ({"keep_releases": 1}, "at least 2"),
    ({"health_timeout": 0}, "positive number of seconds"),
    ({"manifest": dict(MANIFEST, app="other")}, "for release other, not demo"),
    ({"manifest": dict(MANIFEST, version="../9")}, "not usable"),
    ({"manifest": None}, "the manifest is not usable: the manifest is not a JSON object"),
    ({"state": "rolled_back", "manifest": None, "version": "1..0"}, "not a valid release version"),
])
def test_input_error_names_what_is_wrong(kw, needle):
    assert needle in _release.input_error(params(**kw))


def test_good_input_has_no_error():
    assert _release.input_error(params()) is None
    assert _release.input_error(params(state="rolled_back", manifest=None, version="1.0.0")) is None


PLANS = [
    # (plan, package, command, args that must be there)
    ({"action": "hot", "from": "1.0.0", "to": "2.0.0", "direction": "up"}, ("/p", "b" * 64, "u.tar.gz"),
     "hot", ["--version", "2.0.0", "--package", "/p", "--sha256", "b" * 64, "--store-package", "u.tar.gz"]),
    ({"action": "cold", "from": "1.0.0", "to": "2.0.0", "direction": "up"}, ("/p", "a" * 64, None),
     "cold", ["--package", "/p"]),
    ({"action": "install", "from": None, "to": "2.0.0", "direction": "up"}, ("/p", "a" * 64, None),
     "first-install", ["--package", "/p"]),
    ({"action": "hot", "from": "2.0.0", "to": "1.0.0", "direction": "down"}, None, "rollback", ["--mode", "hot"]),
    ({"action": "cold", "from": "2.0.0", "to": "1.0.0", "direction": "down"}, None, "rollback", ["--mode", "cold"]),
    ({"action": "start", "from": None, "to": "2.0.0", "direction": "up"}, None, "start", ["--version", "2.0.0"]),
    ({"action": "commit", "from": "1.0.0", "to": "2.0.0", "direction": "up"}, None, "commit", ["--version", "2.0.0"]),
]


@pytest.mark.parametrize("plan, package, command, must", PLANS, ids=[p[2] + "-" + p[0]["direction"] for p in PLANS])
def test_plan_command(plan, package, command, must):
    cmd, args = _release.plan_command(plan, params(health_check="rpc:true"), package)
    assert cmd == command
    assert all(isinstance(a, str) for a in args)
    joined = " ".join(args)
    assert " ".join(must) in joined
    assert "--keep 5 --timeout 30 --service-manager auto" in joined
    assert "rpc:true" not in joined  # the health check travels on stdin (a URL may carry a token)
    assert _release.settings_of(params(health_check="rpc:true"))["check"] == "rpc:true"


def test_noop_plan_only_reads_the_status():
    assert _release.plan_command({"action": "noop", "from": "2.0.0", "to": "2.0.0"}, params()) == ("status", [])


HOT = {"action": "hot", "from": "1.0.0", "to": "2.0.0", "direction": "up", "reasons": ["relup has a hot edge"],
       "package": "upgrade"}


def _call(rc, answer, calls):
    def call(command, args, settings):
        calls.append((command, args, settings))
        return rc, answer, "boom"
    return call


def test_carry_out_success_passes_settings_and_expect_state():
    calls = []
    res = _release.carry_out(HOT, params(env={"A": "1"}, cookie="c"), ("/p", "b" * 64, None),
                             _call(0, {"host_version": "2.0.0", "install_ms": 12}, calls), expect_state="up:1.0.0:1.0.0")
    assert res["changed"] is True and res["host_version"] == "2.0.0" and res["timing"] == "install 12 ms"
    command, args, settings = calls[0]
    assert command == "hot" and args[-2:] == ["--expect-state", "up:1.0.0:1.0.0"]
    assert settings == {"env": {"A": "1"}, "cookie": "c"}


def test_carry_out_passes_on_what_the_build_warned_about_the_edge():
    w = "mylib: the appup mylib 1.1.0 ships does not name changed modules mylib_util: ..."
    res = _release.carry_out(dict(HOT, warnings=[w]), params(), None, _call(0, {"host_version": "2.0.0"}, []))
    assert res["changed"] is True and res["warnings"] == [w]


def test_carry_out_stale_facts_is_none_so_the_module_plans_again():
    assert _release.carry_out(HOT, params(), None, _call(1, {"stale_facts": True}, [])) is None


def test_carry_out_failure_reports_the_revert_and_the_version_the_host_is_on():
    answer = {"msg": "health check failed", "reverted": True, "host_version": "1.0.0"}
    res = _release.carry_out(HOT, params(), None, _call(1, answer, []))
    assert res["failed"] and res["reverted"] and res["host_version"] == "1.0.0"
    assert res["msg"] == "1.0.0 -> 2.0.0: hot (relup has a hot edge) failed on this host: health check failed"


def test_carry_out_without_an_answer_fails_naming_the_command():
    res = _release.carry_out(HOT, params(), None, _call(255, None, []))
    assert res["failed"] and "no answer to hot (exit 255): boom" in res["msg"]


NOOP = {"action": "noop", "from": "2.0.0", "to": "2.0.0", "direction": "up", "reasons": ["x"], "package": None}


def test_carry_out_noop_sends_the_settings_and_changes_nothing_when_they_match():
    calls = []
    res = _release.carry_out(NOOP, params(cookie="c"), None, _call(0, {"running": "2.0.0"}, calls))
    assert res["changed"] is False and calls == [("status", [], {"env": None, "cookie": "c"})]
    assert "not_applied" not in res and "warnings" not in res


def test_carry_out_noop_that_rewrote_the_env_is_changed_and_says_the_node_needs_a_restart():
    answer = {"running": "2.0.0", "settings_changed": ["env"], "env_pending_restart": ["GREETING", "PORT"]}
    res = _release.carry_out(NOOP, params(env={"GREETING": "hi", "PORT": "1"}), None, _call(0, answer, []))
    assert res["changed"] is True and res["settings_changed"] == ["env"]
    assert res["not_applied"] == res["warnings"] and len(res["warnings"]) == 1
    assert "GREETING, PORT written on the host" in res["warnings"][0] and "when it next starts" in res["warnings"][0]
    assert "hi" not in res["warnings"][0]           # names only, never values


def test_carry_out_hot_with_an_env_the_node_did_not_start_with_reports_it_not_applied():
    answer = {"changed": True, "host_version": "2.0.0", "env_pending_restart": ["GREETING"]}
    res = _release.carry_out(HOT, params(env={"GREETING": "x"}), None, _call(0, answer, []))
    assert res["changed"] and res["not_applied"] and "GREETING" in res["not_applied"][0]


def test_every_task_option_the_agent_takes_round_trips_through_the_agents_parser():
    from ansible_collections.beam.hotswap.plugins.module_utils._agent import cli, options
    p = params(keep_releases=7, health_timeout=12, service_manager="daemon", health_check="cmd:/bin/true")
    argv = ["--root", "/opt/demo", "--app", "demo", "hot", "--version", "2.0.0", "--package", "/p", "--sha256", "b" * 64]
    ns = cli.build_parser().parse_args(argv + options.agent_option_args(p))
    for name, _spec, _flag, dest, kind, _default in options.TASK_OPTIONS:
        if name in options.SETTINGS_OPTIONS:  # on stdin, with the settings
            assert getattr(ns, dest) is None and _release.settings_of(p)["check"] == p[name], name
            continue
        assert getattr(ns, dest) == kind(p[name]), name
    assert set(options.task_option_specs()) <= set(_release.argument_spec())


def test_carry_out_names_the_processes_old_code_kill_killed_in_a_warning():
    killed = [{"name": "#PID<0.1.0>", "in": "Ledger.Listener.accept_loop/1", "current_function": ":prim_inet.accept0/3"}]
    res = _release.carry_out(HOT, params(), None, _call(0, {"changed": True, "old_code_killed": killed}, []))
    assert res["old_code_killed"] == killed and "not_applied" not in res
    assert "1 process(es)" in res["warnings"][0] and "#PID<0.1.0> in Ledger.Listener.accept_loop/1" in res["warnings"][0]
