"""The facts action: the installed agent's own answer when its files are the expected ones, else the module
(which reads with the collection's agent code and writes nothing unless install_agent; the agent's files
travel only when the module asks for them, or at once when the facts already said the host's copy differs)."""
from unittest import mock

import pytest

from ansible_collections.beam.hotswap.plugins.action import facts as action_mod
from ansible_collections.beam.hotswap.plugins.plugin_utils import _agent_direct
from hotswap_testlib.action_harness import make_action, run_action

from ansible_collections.beam.hotswap.plugins.module_utils._agent.names import state_dir


def hs_dir(root):
    """The agent's directory for a release root (beside it, root-owned)."""
    return type(root)(state_dir(str(root)))


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
    ("read only (gathering, status.yml): the current agent's answer", {"app": "demo", "root": "/opt/demo"},
     (0, dict(STATUS, agent_current=True), ""), False, [], 0, False),
    ("read only, agent of another version: the module reads, no files travel", {"app": "demo", "root": "/opt/demo"},
     (0, dict(STATUS, agent_current=False), ""), False, [{"changed": False}], 1, False),
    ("read only, no agent: the module reads, no files travel", {"app": "demo", "root": "/opt/demo"},
     (1, None, "no such file"), False, [{"changed": False}], 1, False),
    ("a bad root: the module reports it", dict(ARGS, root="opt"), (0, dict(STATUS, agent_current=True), ""), False,
     [{"failed": True, "msg": "bad root"}], 1, False),
]


@pytest.mark.parametrize("case, args, answer, check, results, runs, content", ROWS, ids=[r[0] for r in ROWS])
def test_facts_action_paths(case, args, answer, check, results, runs, content):
    a = make_action(action_mod.ActionModule, args, check_mode=check, module_results=results)
    with mock.patch.object(_agent_direct, "run_agent", return_value=answer) as agent:
        res = run_action(a)
    assert len(a.module_calls) == runs, case
    if runs == 0:
        assert agent.called and res["ansible_facts"]["hotswap_host"]["versions"] == ["1.0.0"], res
        assert res["changed"] is False
    if runs:
        assert "install_agent" not in a.module_calls[-1]["args"] or args.get("install_agent")
        files = a.module_calls[-1]["args"]["agent_files"]
        assert set(files) == {"agent.py", "node.erl"} and all(len(f["sha256"]) == 64 for f in files.values())
        assert all(("content" in f) == content for f in files.values()), case


def test_direct_read_asks_the_agent_to_compare_its_own_checksums():
    a = make_action(action_mod.ActionModule, ARGS)
    with mock.patch.object(_agent_direct, "run_agent", return_value=(0, dict(STATUS, agent_current=True), "")) as agent:
        run_action(a)
    command, extra = agent.call_args[0][5], agent.call_args[0][6]
    assert command == "facts" and extra[0] == "--expect-agent" and "agent.py=" in extra[1] and "node.erl=" in extra[1]


@pytest.mark.parametrize("check", [False, True], ids=["files at once", "check mode: nothing sent"])
def test_install_when_the_facts_said_the_agent_differs_is_one_module_run(check):
    a = make_action(action_mod.ActionModule, ARGS, check_mode=check, module_results=[{"changed": not check}])
    facts = {"ansible_facts": {"hotswap_host": dict(STATUS, agent_current=False)}}
    with mock.patch.object(_agent_direct, "run_agent", return_value=(0, dict(STATUS, agent_current=False), "")) as agent:
        run_action(a, facts)
    files = a.module_calls[-1]["args"]["agent_files"]
    assert all(("content" in f) != check for f in files.values())
    assert len(a.module_calls) == 1 and agent.called == check


def test_gathering_asks_the_installed_agent_for_its_checksums_too():
    a = make_action(action_mod.ActionModule, {"app": "demo", "root": "/opt/demo"})
    with mock.patch.object(_agent_direct, "run_agent", return_value=(0, dict(STATUS, agent_current=True), "")) as agent:
        res = run_action(a)
    assert agent.call_args[0][6][0] == "--expect-agent" and not a.module_calls
    assert res["ansible_facts"]["hotswap_host"]["agent_current"] is True


def test_the_module_reads_a_host_without_the_agent_and_writes_nothing(tmp_path):
    from ansible_collections.beam.hotswap.plugins.modules import facts as module_mod
    from ansible_collections.beam.hotswap.plugins.module_utils._agent_client import AgentClient
    root = tmp_path / "opt" / "wrong_app"
    client = AgentClient(mock.MagicMock(check_mode=False), str(root), "wrong_app")
    st = module_mod.read_status(client)
    assert st["installed"] is False and st["node_up"] is False and st["agent_installed"] is False
    assert st["versions"] == [] and not root.exists() and not (tmp_path / "opt").exists()
    assert module_mod.agent_current(str(root), {"agent.py": {"sha256": "0" * 64}}) is False


def test_the_module_names_an_older_installed_agent(tmp_path):
    from ansible_collections.beam.hotswap.plugins.modules import facts as module_mod
    from ansible_collections.beam.hotswap.plugins.module_utils._agent_client import AgentClient
    hs = hs_dir(tmp_path / "demo")
    hs.mkdir(parents=True)
    (hs / "agent.py").write_text('"""old"""\nAGENT_VERSION = "0.9.0"\n')
    st = module_mod.read_status(AgentClient(mock.MagicMock(check_mode=False), str(tmp_path / "demo"), "demo"))
    assert st["agent_installed"] is True and st["installed_agent_version"] == "0.9.0" and st["agent_outdated"]
    assert sorted(p.name for p in hs.iterdir()) == ["agent.py"]


def test_installing_the_agent_replaces_an_older_agents_node_exs(tmp_path):
    """An agent before 1.3.0 left node.exs (Elixir) beside agent.py: installing this one writes node.erl and
    removes node.exs, which nothing reads any more."""
    import base64
    import hashlib
    import shutil
    from ansible_collections.beam.hotswap.plugins.modules import facts as module_mod
    hs = hs_dir(tmp_path / "demo")
    hs.mkdir(parents=True)
    (hs / "agent.py").write_text('"""old"""\nAGENT_VERSION = "1.2.0"\n')
    (hs / "node.exs").write_text("hs_out = 1\n")
    files = {}
    for src, dest, mode in _agent_direct.AGENT_FILES:
        with open(_agent_direct.AGENT_DIR + "/" + src, "rb") as f:
            body = f.read()
        files[dest] = {"sha256": hashlib.sha256(body).hexdigest(), "mode": mode,
                       "content": base64.b64encode(body).decode("ascii")}
    module = mock.MagicMock(check_mode=False)
    module.atomic_move.side_effect = shutil.move
    with mock.patch.object(module_mod, "check_parents"), mock.patch.object(module_mod, "mkdir_private"):
        written = module_mod.install_agent(module, str(tmp_path / "demo"), files)
    assert written == ["agent.py", "node.erl"]
    assert sorted(p.name for p in hs.iterdir()) == ["agent.py", "node.erl"]
    assert oct((hs / "node.erl").stat().st_mode & 0o777) == "0o600"
    assert module_mod.agent_current(str(tmp_path / "demo"), files) is True
