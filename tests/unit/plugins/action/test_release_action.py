"""Which path the release action takes (the agent directly, or the module) and what it uploads: one table
row per situation, with Ansible's connection and the agent replaced by recorders."""
from unittest import mock

import pytest

from ansible_collections.beam.hotswap.plugins.action import release as action_mod
from hotswap_testlib.action_harness import make_action, run_action

SHA_U, SHA_R = "b" * 64, "a" * 64
MANIFEST = {"schema": 1, "app": "demo", "version": "2.0.0", "edges": [{"from": "1.0.0", "verdict": "hot"}],
            "artifacts": {"release": {"file": "r.tar.gz", "sha256": SHA_R},
                          "upgrade": {"file": "u.tar.gz", "sha256": SHA_U}}}
FACTS = {"installed": True, "node_up": True, "running": "1.0.0", "permanent": "1.0.0", "packages": {},
         "releases": [{"version": "1.0.0"}], "relup_down": [], "fingerprint": {}, "agent_current": True}


def _run(args, facts=None, answer=(0, {"host_version": "2.0.0"}, ""), installed=None, **kw):
    a = make_action(action_mod.ActionModule, args, module_results=[{"changed": True, "via": "module"}], **kw)
    a._upload = mock.MagicMock(return_value="/opt/demo/.hotswap/.upload-x.part")
    a._local_artifact = mock.MagicMock(return_value="/tmp/u.tar.gz")
    task_vars = {"ansible_facts": {"hotswap_host": facts}} if facts else {}
    with mock.patch.object(action_mod, "run_agent", return_value=answer) as agent, \
            mock.patch.object(action_mod, "agent_facts", return_value=installed or {"ansible_facts": {"hotswap_host": FACTS}}) \
            as install:
        res = run_action(a, task_vars)
    a.install = install
    return a, agent, res


BASE = {"app": "demo", "root": "/opt/demo", "manifest": MANIFEST, "artifact_dir": "/tmp/artifacts"}

ROUTES = [
    # (case, args, facts, kw, via the agent directly?, uploaded?)
    ("facts and a hot plan: the agent directly", BASE, FACTS, {}, True, True),
    ("the host holds the package: no upload", BASE, dict(FACTS, packages={SHA_U: "u.tar.gz"}), {}, True, False),
    ("check mode: the module", BASE, FACTS, {"check_mode": True}, False, False),
    ("a bad mode: the module reports it", dict(BASE, mode="warm"), FACTS, {}, False, False),
    ("keep_releases 1: the module reports it", dict(BASE, keep_releases=1), FACTS, {}, False, False),
    ("a manifest for another app: the module reports it", dict(BASE, manifest=dict(MANIFEST, app="x")), FACTS, {},
     False, False),
    ("pull mode: the module downloads on the host", dict(BASE, artifact_url="http://mirror/a"), FACTS, {}, False,
     False),
    ("a delegated task: the module", BASE, FACTS, {"delegate_to": "elsewhere"}, False, True),
    ("rollback without facts: the module", {"app": "demo", "root": "/opt/demo", "state": "rolled_back"}, None, {},
     False, False),
    ("hot asked but only cold possible: the module refuses on the host", dict(BASE, mode="hot",
     manifest=dict(MANIFEST, edges=[])), FACTS, {}, False, False),
]


@pytest.mark.parametrize("case, args, facts, kw, direct, uploaded", ROUTES, ids=[r[0] for r in ROUTES])
def test_release_action_routes(case, args, facts, kw, direct, uploaded):
    a, agent, res = _run(args, facts, **kw)
    assert agent.called == direct, case
    assert bool(a.module_calls) == (not direct), case
    assert a._upload.called == uploaded, case
    if direct:
        command, cargs = agent.call_args[0][5], agent.call_args[0][6]
        assert command == "hot" and "--expect-state" in cargs and res["changed"] is True


def test_stale_facts_fall_back_to_the_module_after_the_agent_refused():
    a, agent, res = _run(BASE, FACTS, answer=(1, {"stale_facts": True}, ""))
    assert agent.called and a.module_calls and res["via"] == "module"


def test_a_failed_direct_run_fails_the_task_with_the_agents_words():
    a, agent, res = _run(BASE, FACTS, answer=(1, {"msg": "health check failed", "reverted": True, "host_version": "1.0.0"}, ""))
    assert res["failed"] and res["reverted"] and "health check failed" in res["msg"]
    assert not a.module_calls


def _run_installing(facts, installed, **kw):
    """_run with the agent's install (the facts path of beam.hotswap.facts) replaced by a recorder."""
    a, agent, res = _run(BASE, facts, installed=installed, **kw)
    return a.install, a, agent, res


def test_an_outdated_agent_is_installed_first_and_the_plan_made_from_the_fresh_facts():
    fresh = dict(FACTS, agent_current=True, packages={SHA_U: "u.tar.gz"})
    install, a, agent, res = _run_installing(dict(FACTS, agent_current=False),
                                             {"changed": True, "agent_installed": ["agent.py"],
                                              "ansible_facts": {"hotswap_host": fresh}})
    assert install.call_args[0][2] == {"app": "demo", "root": "/opt/demo", "install_agent": True}
    assert agent.called and not a.module_calls and res["agent_installed"] == ["agent.py"] and res["changed"]
    assert not a._upload.called  # the fresh facts say the host holds the package


def test_a_current_agent_costs_nothing_more():
    install, _a, agent, res = _run_installing(FACTS, None)
    assert not install.called and agent.called and "agent_installed" not in res


def test_a_failed_agent_install_fails_the_task_before_anything_else():
    install, a, agent, res = _run_installing(dict(FACTS, agent_current=False), {"failed": True, "msg": "disk full"})
    assert install.called and not agent.called and not a.module_calls and not a._upload.called
    assert res["failed"] and "installing the reload agent failed" in res["msg"] and "disk full" in res["msg"]
    assert "still runs 1.0.0" in res["msg"]


def test_check_mode_installs_nothing():
    install, a, _agent, _res = _run_installing(dict(FACTS, agent_current=False), None, check_mode=True)
    assert not install.called and a.module_calls


def test_an_agent_update_alone_is_a_change():
    on2 = dict(FACTS, running="2.0.0", permanent="2.0.0", releases=[{"version": "1.0.0"}, {"version": "2.0.0"}])
    install, _a, _agent, res = _run_installing(dict(on2, agent_current=False),
                                               {"agent_installed": ["agent.py"], "ansible_facts": {"hotswap_host": on2}},
                                               answer=(0, {"host_version": "2.0.0", "changed": False}, ""))
    assert install.called and res["changed"] is True and res["agent_installed"] == ["agent.py"], res
