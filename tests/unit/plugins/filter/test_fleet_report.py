"""The rollout summary: one row per host from its variables, the version spread, a readable table."""
import pytest
from ansible.errors import AnsibleFilterError

from ansible_collections.beam.hotswap.plugins.filter.fleet_report import fleet_report

UP_V1 = {"node_up": True, "running": "1.0.0", "permanent": "1.0.0", "unpacked": [], "previous": None}
HOT = {"action": "hot", "from": "1.0.0", "to": "2.0.0", "reasons": ["relup has a hot edge from 1.0.0"]}


def hv(name, facts=None, result=None, gathered=None):
    out = {"inventory_hostname": name, "ansible_facts": {"hotswap_host": facts or {}}}
    if result is not None:
        out["hotswap_result"] = result
    if gathered is not None:
        out["_hotswap_gathered"] = gathered
    return out


DOWN_V1 = {"node_up": False, "running": None, "permanent": "1.0.0"}
UNREACHABLE = {"unreachable": True, "msg": "Failed to connect to the host via ssh"}


ROWS = [
    # (case, hostvars, result column, running column)
    ("hot and committed",
     hv("t1", UP_V1, {"changed": True, "plan": HOT, "host_version": "2.0.0", "agent": {"install_ms": 12.5}}),
     "changed", "2.0.0"),
    ("failed and reverted", hv("t1", UP_V1, {"failed": True, "reverted": True, "plan": HOT, "host_version": "1.0.0"}),
     "FAILED, reverted", "1.0.0"),
    ("failed, not reverted", hv("t1", UP_V1, {"failed": True, "plan": HOT}), "FAILED", "1.0.0"),
    ("nothing to do", hv("t1", UP_V1, {"changed": False, "plan": dict(HOT, action="noop", **{"from": "2.0.0"}),
                                       "host_version": "2.0.0"}), "ok", "2.0.0"),
    ("not run (a batch that never started)", hv("t1", UP_V1), "not run", "1.0.0"),
]

WORDS = [
    # (case, hostvars, result column, state: the version, or the word for why there is none)
    ("reached, node up", hv("t1", UP_V1, gathered={"changed": False}), "not run", "1.0.0"),
    ("reached, node not running", hv("t1", DOWN_V1, gathered={"changed": False}), "not run", "(down)"),
    ("unreachable when the facts were gathered", hv("t1", gathered=UNREACHABLE), "unreachable", "unreachable"),
    ("unreachable at the release task", hv("t1", UP_V1, {"unreachable": True, "msg": "ssh: timed out"}),
     "unreachable", "unreachable"),
    ("never got to (no facts, no result)", hv("t1"), "not run", "not run"),
    ("a later batch after a failure", hv("t1", UP_V1, gathered={"changed": False}), "not run", "1.0.0"),
    ("reading the host failed", hv("t1", gathered={"failed": True, "msg": "bad root"}), "FAILED reading the host",
     "unknown"),
    ("reverted to the old release", hv("t1", UP_V1, {"failed": True, "reverted": True, "plan": HOT,
                                                     "host_version": "1.0.0"}), "FAILED, reverted", "1.0.0"),
    ("upgraded", hv("t1", UP_V1, {"changed": True, "plan": HOT, "host_version": "2.0.0"}), "changed", "2.0.0"),
]


@pytest.mark.parametrize("case, hostvars, result, state", WORDS, ids=[w[0] for w in WORDS])
def test_down_unreachable_and_not_run_are_different_words(case, hostvars, result, state):
    (row,) = fleet_report([hostvars], app="demo")["rows"]
    assert (row["result"], row["state"]) == (result, state), case


def test_an_unreachable_host_is_never_called_down():
    rep = fleet_report([hv("t1", UP_V1), hv("t2", gathered=UNREACHABLE), hv("t3", DOWN_V1), hv("t4")])
    assert rep["spread"] == {"1.0.0": 1, "unreachable": 1, "(down)": 1, "not run": 1}
    assert (rep["down"], rep["unreachable"], rep["not_run"]) == (["t3"], ["t2"], ["t4"])
    assert rep["mixed"] is False and rep["versions"] == ["1.0.0"]
    table = dict((line.split()[0], line.split()) for line in rep["lines"][2:6])
    assert table["t2"][1] == "unreachable" and table["t3"][1] == "(down)" and table["t4"][1:3] == ["not", "run"]
    assert "down (reached, node not running): t3" in rep["lines"]
    assert "unreachable (could not connect): t2" in rep["lines"]
    assert "not run (the run never got to them): t4" in rep["lines"]
    assert rep["rows"][1]["error"] == UNREACHABLE["msg"]


def test_a_rollout_stopped_by_the_canary_says_not_run_for_the_later_batches():
    rep = fleet_report([hv("t1", UP_V1, {"failed": True, "reverted": True, "plan": HOT, "host_version": "1.0.0"}),
                        hv("t2", UP_V1), hv("t3", UP_V1)], app="demo", version="2.0.0")
    assert [r["result"] for r in rep["rows"]] == ["FAILED, reverted", "not run", "not run"]
    assert rep["down"] == [] and rep["not_run"] == ["t2", "t3"] and "(down)" not in " ".join(rep["lines"])
    assert rep["lines"][3].split()[:5] == ["t2", "1.0.0", "-", "-", "not"]
    assert "not run (the run never got to them): t2, t3" in rep["lines"]


@pytest.mark.parametrize("case, hostvars, result, running", ROWS, ids=[r[0] for r in ROWS])
def test_one_row_per_host(case, hostvars, result, running):
    (row,) = fleet_report([hostvars], app="demo")["rows"]
    assert (row["host"], row["result"], row["running"]) == ("t1", result, running), case


def test_deploy_table_spread_and_reasons():
    rep = fleet_report([hv("t1", UP_V1, {"changed": True, "plan": HOT, "host_version": "2.0.0",
                                         "agent": {"install_ms": 12.5, "total_ms": 300}}),
                        hv("t2", UP_V1, {"changed": True, "plan": HOT, "host_version": "2.0.0"})],
                       app="demo", version="2.0.0")
    assert rep["lines"][0] == "demo -> 2.0.0: 2 host(s), versions 2.0.0 on 2"
    assert rep["lines"][1].split() == ["host", "from", "to", "action", "result", "install_ms", "downtime_ms", "total_ms"]
    assert rep["lines"][2].split() == ["t1", "1.0.0", "2.0.0", "hot", "changed", "12.5", "-", "300"]
    assert "t2: hot because relup has a hot edge from 1.0.0" in rep["lines"]
    assert rep["spread"] == {"2.0.0": 2} and rep["mixed"] is False


def test_status_table_and_a_mixed_fleet():
    down = {"node_up": False, "running": None, "permanent": "1.0.0"}
    rep = fleet_report([hv("t1", UP_V1), hv("t2", dict(UP_V1, running="2.0.0", permanent="2.0.0")), hv("t3", down)])
    assert rep["lines"][1].split() == ["host", "running", "permanent", "unpacked", "previous", "node_up"]
    assert rep["mixed"] is True and rep["spread"] == {"1.0.0": 1, "2.0.0": 1, "(down)": 1}
    assert rep["down"] == ["t3"] and rep["versions"] == ["1.0.0", "2.0.0"]


def test_the_report_never_carries_the_nodes_environment_or_cookie():
    rep = fleet_report([hv("t1", dict(UP_V1, env={"SECRET": "x"}, cookie="c"),
                           {"changed": True, "plan": HOT, "host_version": "2.0.0"})])
    assert "SECRET" not in repr(rep) and "'c'" not in repr(rep["rows"])


def test_not_hostvars_is_a_filter_error():
    with pytest.raises(AnsibleFilterError, match="list of hostvars dicts"):
        fleet_report(["not a dict"])


def test_the_verdict_counts_and_names_down_nodes_apart_from_unreachable_hosts():
    rep = fleet_report([hv("t1", UP_V1), hv("t2", DOWN_V1), hv("t3", DOWN_V1), hv("t4", gathered=UNREACHABLE),
                        hv("t5", gathered={"failed": True, "msg": "bad root"})])
    assert rep["verdict"] == (
        "2 node(s) down (the host was reached, the node is not running): t2, t3. "
        "1 host(s) unreachable (could not connect; their state is unknown): t4. "
        "1 host(s) could not be read: t5.")


def test_a_healthy_fleet_has_no_verdict():
    assert fleet_report([hv("t1", UP_V1), hv("t2", UP_V1)])["verdict"] == ""


def test_an_outdated_agent_is_named_in_the_verdict():
    rep = fleet_report([hv("t1", dict(UP_V1, agent_outdated=True, installed_agent_version="0.9.0")),
                        hv("t2", dict(UP_V1, agent_outdated=False))])
    assert rep["verdict"].startswith("1 host(s) run an outdated reload agent (role beam.hotswap.agent): t1 (0.9.0): "
                                     "re-run deploy.yml")


def test_a_host_without_the_release_is_not_installed_rather_than_down():
    bare = {"installed": False, "node_up": False, "running": None, "permanent": None, "versions": []}
    rep = fleet_report([hv("t1", bare), hv("t2", DOWN_V1)], app="demo")
    assert [r["state"] for r in rep["rows"]] == ["not installed", "(down)"]
    assert rep["down"] == ["t2"] and "1 host(s) have no release of demo installed in their release root: t1." \
        in rep["verdict"]


def test_a_rollout_says_which_hosts_lost_their_in_memory_state_and_what_was_not_applied():
    from ansible_collections.beam.hotswap.plugins.filter.fleet_report import fleet_report
    hot = {"inventory_hostname": "a", "ansible_facts": {"hotswap_host": {"node_up": True, "running": "1.0.0"}},
           "hotswap_result": {"changed": True, "host_version": "2.0.0",
                              "plan": {"action": "hot", "from": "1.0.0", "to": "2.0.0", "loses_state": False},
                              "not_applied": ["app: the Application module changed"], "agent": {}}}
    cold = {"inventory_hostname": "b", "ansible_facts": {"hotswap_host": {"node_up": True, "running": "1.5.0"}},
            "hotswap_result": {"changed": True, "host_version": "2.0.0",
                               "plan": {"action": "cold", "from": "1.5.0", "to": "2.0.0", "loses_state": True},
                               "agent": {"state_lost": True}}}
    failed = {"inventory_hostname": "c", "ansible_facts": {"hotswap_host": {"node_up": True, "running": "1.0.0"}},
              "hotswap_result": {"changed": True, "failed": True, "reverted": True, "host_version": "1.0.0",
                                 "plan": {"action": "hot", "from": "1.0.0", "to": "2.0.0"},
                                 "agent": {"state_lost": True}, "msg": "died"}}
    r = fleet_report([hot, cold, failed], app="app", version="2.0.0")
    assert [x["state_lost"] for x in r["rows"]] == [False, True, True]
    assert "in-memory state lost (node restarted) on: b, c" in r["lines"]
    assert "a: not applied: app: the Application module changed" in r["lines"]


def test_each_row_says_which_appup_each_changed_application_used():
    plan = dict(HOT, appups={"mylib": "shipped", "demo": "generated"},
                reasons=HOT["reasons"] + ["appups: demo generated, mylib shipped"])
    rep = fleet_report([hv("t1", UP_V1, {"changed": True, "plan": plan, "host_version": "2.0.0"}),
                        hv("t2", UP_V1, {"changed": True, "plan": HOT, "host_version": "2.0.0"})], app="demo")
    assert [r["appups"] for r in rep["rows"]] == [{"mylib": "shipped", "demo": "generated"}, {}]
    assert "t1: hot because relup has a hot edge from 1.0.0; appups: demo generated, mylib shipped" in rep["lines"]
