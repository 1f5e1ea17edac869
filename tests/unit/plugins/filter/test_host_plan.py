from ansible_collections.beam.hotswap.plugins.filter.host_plan import host_plan

MANIFEST = {"app": "demo", "version": "2.0.0", "artifacts": {"upgrade": {}, "release": {}},
            "edges": [{"from": "1.0.0", "verdict": "hot", "reasons": []},
                      {"from": "1.5.0", "verdict": "cold", "reasons": ["vm.args changed"]}]}


def _host(running=None, up=True, **kw):
    st = dict({"installed": bool(running), "node_up": up, "running": running, "permanent": running}, **kw)
    return {"inventory_hostname": "h", "ansible_facts": {"hotswap_host": st}}


def test_a_deploy_is_planned_as_the_release_task_plans_it_with_its_summary():
    p = host_plan(_host("1.0.0"), manifest=MANIFEST)
    assert (p["action"], p["from"], p["to"], p["loses_state"]) == ("hot", "1.0.0", "2.0.0", False)
    assert p["summary"] == "1.0.0 -> 2.0.0: hot (relup has a hot edge from 1.0.0)"
    cold = host_plan(_host("1.5.0"), manifest=MANIFEST)
    assert (cold["action"], cold["loses_state"]) == ("cold", True)
    assert host_plan(_host(), manifest=MANIFEST)["action"] == "install"
    assert host_plan(_host("2.0.0"), manifest=MANIFEST)["action"] == "noop"


def test_a_rollback_is_planned_from_what_the_host_holds():
    hv = _host("2.0.0", previous="1.0.0", releases=[{"version": "1.0.0"}, {"version": "2.0.0"}],
               relup_down=["1.0.0"])
    p = host_plan(hv, state="rolled_back")
    assert (p["action"], p["from"], p["to"], p["direction"]) == ("hot", "2.0.0", "1.0.0", "down")
    assert host_plan(hv, state="rolled_back", mode="cold")["loses_state"] is True


def test_a_host_the_release_task_would_refuse_says_why_and_an_unread_one_says_so():
    p = host_plan(_host("3.0.0"), manifest=MANIFEST)
    assert p["action"] == "refused" and "older than the running 3.0.0" in p["error"] and p["to"] == "2.0.0"
    assert host_plan(_host("1.0.0"), manifest={})["action"] == "refused"
    assert host_plan({"inventory_hostname": "h"}, manifest=MANIFEST)["action"] == "unknown"
