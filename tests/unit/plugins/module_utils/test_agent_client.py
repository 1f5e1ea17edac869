"""The controller's view of the agent: roots it accepts, the command line, its answer, its status as facts."""
import pytest

from ansible_collections.beam.hotswap.plugins.module_utils import _agent_client as ac
from ansible_collections.beam.hotswap.plugins.module_utils._agent.names import AGENT_VERSION


@pytest.mark.parametrize("root, ok", [("/opt/demo", "/opt/demo"), ("/opt/demo/", "/opt/demo"), ("/", None),
                                      ("//", None), ("opt/demo", None), ("/opt/../etc", None), ("/opt/a b", None),
                                      (None, None)])
def test_check_root(root, ok):
    if ok:
        assert ac.check_root(root) == ok
    else:
        with pytest.raises(ac.AgentError, match="not usable"):
            ac.check_root(root)


def test_agent_argv_puts_global_options_first():
    assert ac.agent_argv("/opt/d", "d", "u", "hot", ["--keep", 5]) == \
        ["--root", "/opt/d", "--app", "d", "--user", "u", "hot", "--keep", "5"]
    assert ac.agent_argv("/opt/d", "d", None, "status", []) == ["--root", "/opt/d", "--app", "d", "status"]


@pytest.mark.parametrize("out, parsed", [
    ('noise\n{"ok": 1}\n', {"ok": 1}), ("", None), ("not json", None), ('["a list"]', None), (None, None)])
def test_parse_answer_takes_the_last_json_object_line(out, parsed):
    assert ac.parse_answer(out) == parsed


def test_status_facts_lists_every_version_and_refuses_an_older_agent():
    st = ac.status_facts({"agent_version": AGENT_VERSION, "running": "2.0.0", "permanent": "1.0.0",
                          "releases": [{"version": "0.9.0"}, {"version": "1.0.0"}]})
    assert st["versions"] == ["0.9.0", "1.0.0", "2.0.0"] and st["agent_installed"] is True
    with pytest.raises(ac.AgentError, match="needs %s" % AGENT_VERSION):
        ac.status_facts({"agent_version": "0.1.0"})
    assert ac.status_facts({"agent_version": "0.1.0"}, check_version=False)["versions"] == []


@pytest.mark.parametrize("status, key", [
    ({"node_up": True, "running": "2.0.0", "permanent": "1.0.0"}, "up:2.0.0:1.0.0"),
    ({"node_up": False, "permanent": "1.0.0"}, "down:-:1.0.0"),
    ({}, "down:-:-"),
])
def test_state_key_is_what_the_agent_compares(status, key):
    assert ac.state_key(status) == key
