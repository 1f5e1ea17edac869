"""The rollout summary: one row per host from its variables, the version spread, a readable table."""
import pytest
from ansible.errors import AnsibleFilterError

from ansible_collections.beam.hotswap.plugins.filter.fleet_report import fleet_report

UP_V1 = {"node_up": True, "running": "1.0.0", "permanent": "1.0.0", "unpacked": [], "previous": None}
HOT = {"action": "hot", "from": "1.0.0", "to": "2.0.0", "reasons": ["relup has a hot edge from 1.0.0"]}


def hv(name, facts=None, result=None):
    out = {"inventory_hostname": name, "ansible_facts": {"hotswap_host": facts or {}}}
    if result is not None:
        out["hotswap_result"] = result
    return out


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


def test_the_report_never_carries_the_nodes_environment_or_cookie():
    rep = fleet_report([hv("t1", dict(UP_V1, env={"SECRET": "x"}, cookie="c"),
                           {"changed": True, "plan": HOT, "host_version": "2.0.0"})])
    assert "SECRET" not in repr(rep) and "'c'" not in repr(rep["rows"])


def test_not_hostvars_is_a_filter_error():
    with pytest.raises(AnsibleFilterError, match="list of hostvars dicts"):
        fleet_report(["not a dict"])
