from ansible_collections.beam.hotswap.plugins.filter.rollout_plan import rollout_plan

MANIFEST = {"app": "demo", "version": "2.0.0", "artifacts": {"upgrade": {}, "release": {}},
            "edges": [{"from": "1.0.0", "verdict": "hot", "reasons": [],
                       "not_applied": ["demo: the Application module changed"]},
                      {"from": "1.5.0", "verdict": "cold", "reasons": ["vm.args changed"]}]}


def _host(name, running=None, up=True, **kw):
    st = dict({"installed": bool(running), "node_up": up, "running": running, "permanent": running}, **kw)
    return {"inventory_hostname": name, "ansible_facts": {"hotswap_host": st}}


def test_each_host_is_planned_and_the_hosts_that_lose_state_are_named():
    r = rollout_plan([_host("a", "1.0.0"), _host("b", "1.5.0"), _host("c"), {"inventory_hostname": "d"},
                      _host("e", "3.0.0")], MANIFEST)
    assert r["plans"]["a"]["action"] == "hot" and r["plans"]["b"]["action"] == "cold"
    assert r["plans"]["c"]["action"] == "install" and r["plans"]["d"] == {"error": "not read"}
    assert "older than the running 3.0.0" in r["plans"]["e"]["error"]
    assert r["loses_state"] == ["b"] and r["not_applied"] == {"a": ["demo: the Application module changed"]}
    assert r["lines"][-1] == "in-memory state lost (the node restarts) on: b"
    assert any(x.startswith("b: 1.5.0 -> 2.0.0: cold (vm.args changed), the node restarts") for x in r["lines"])
    assert any("e: will be refused" in x for x in r["lines"])


def test_no_host_loses_state_is_said_too():
    assert rollout_plan([_host("a", "1.0.0")], MANIFEST)["lines"][-1].endswith("on: no host")
