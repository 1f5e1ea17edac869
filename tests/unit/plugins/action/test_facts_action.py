"""The facts action: the installed agent's own answer when its files are the expected ones, else the module
(with the agent's files only when the module asks for them)."""
from unittest import mock

import pytest

from ansible_collections.beam.hotswap.plugins.action import facts as action_mod
from hotswap_testlib.action_harness import make_action, run_action

STATUS = {"installed": True, "node_up": True, "running": "1.0.0", "permanent": "1.0.0", "releases": [],
          "agent_version": "9.9.9"}
ARGS = {"app": "demo", "root": "/opt/demo", "install_agent": True}

ROWS = [
    # (case, args, agent answer, check mode, module results, module runs, content sent on the last run)
    ("agent current: its answer is the facts", ARGS, (0, dict(STATUS, agent_current=True), ""), False, [], 0, False),
    ("agent of another version: module, then files", ARGS, (0, dict(STATUS, agent_current=False), ""), False,
     [{"need_agent": True}, {"changed": True, "ansible_facts": {"hotswap_host": STATUS}}], 2, True),
    ("no agent: module, then files", ARGS, (1, None, "no such file"), False,
     [{"need_agent": True}, {"changed": True}], 2, True),
    ("no agent, check mode: the module only reports", ARGS, (1, None, ""), True, [{"need_agent": True}], 1, False),
    ("agent files fine on the host: one module run", ARGS, (1, None, ""), False, [{"changed": False}], 1, False),
    ("read only (status.yml): the agent's answer", {"app": "demo", "root": "/opt/demo"}, (0, dict(STATUS), ""),
     False, [], 0, False),
    ("a bad root: the module reports it", dict(ARGS, root="opt"), (0, dict(STATUS, agent_current=True), ""), False,
     [{"failed": True, "msg": "bad root"}], 1, False),
]


@pytest.mark.parametrize("case, args, answer, check, results, runs, content", ROWS, ids=[r[0] for r in ROWS])
def test_facts_action_paths(case, args, answer, check, results, runs, content):
    a = make_action(action_mod.ActionModule, args, check_mode=check, module_results=results)
    with mock.patch.object(action_mod, "run_agent", return_value=answer) as agent:
        res = run_action(a)
    assert len(a.module_calls) == runs, case
    if runs == 0:
        assert agent.called and res["ansible_facts"]["hotswap_host"]["versions"] == ["1.0.0"], res
        assert res["changed"] is False
    if args.get("install_agent") and runs:
        files = a.module_calls[-1]["args"]["agent_files"]
        assert set(files) == {"agent.py", "node.exs"} and all(len(f["sha256"]) == 64 for f in files.values())
        assert all(("content" in f) == content for f in files.values()), case


def test_direct_read_asks_the_agent_to_compare_its_own_checksums():
    a = make_action(action_mod.ActionModule, ARGS)
    with mock.patch.object(action_mod, "run_agent", return_value=(0, dict(STATUS, agent_current=True), "")) as agent:
        run_action(a)
    command, extra = agent.call_args[0][5], agent.call_args[0][6]
    assert command == "facts" and extra[0] == "--expect-agent" and "agent.py=" in extra[1] and "node.exs=" in extra[1]
