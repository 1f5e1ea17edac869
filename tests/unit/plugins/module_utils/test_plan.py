"""The plan is a pure function of a host's status and the manifest: one table row per situation."""
import pytest

from ansible_collections.beam.hotswap.plugins.module_utils import _plan

HOT_EDGE = {"from": "1.0.0", "verdict": "hot", "reasons": []}
COLD_EDGE = {"from": "1.0.0", "verdict": "cold", "reasons": ["vm.args changed"]}


def manifest(*edges):
    return {"app": "demo", "version": "2.0.0", "edges": list(edges),
            "artifacts": {"release": {"file": "r.tar.gz", "sha256": "a" * 64},
                          "upgrade": {"file": "u.tar.gz", "sha256": "b" * 64}}}


def host(running="1.0.0", permanent="1.0.0", up=True, **kw):
    return dict({"installed": True, "node_up": up, "running": running, "permanent": permanent}, **kw)


EMPTY = {"installed": False, "node_up": False}

DEPLOY = [
    # (case, status, manifest, mode, action, from, package, reason fragment)
    ("first install", EMPTY, manifest(), "auto", "install", None, "release", "first install"),
    ("first install, cold asked", EMPTY, manifest(), "cold", "install", None, "release", "first install"),
    ("already there", host("2.0.0", "2.0.0"), manifest(HOT_EDGE), "auto", "noop", "2.0.0", None, "running and permanent"),
    ("runs, not permanent", host("2.0.0", "1.0.0"), manifest(HOT_EDGE), "auto", "commit", "1.0.0", None, "not permanent"),
    ("permanent, node down", host(None, "2.0.0", up=False), manifest(), "auto", "start", None, None, "node is down"),
    ("hot edge", host(), manifest(HOT_EDGE), "auto", "hot", "1.0.0", "upgrade", "hot edge from 1.0.0"),
    ("hot edge, hot asked", host(), manifest(HOT_EDGE), "hot", "hot", "1.0.0", "upgrade", "hot edge"),
    ("hot edge, cold asked", host(), manifest(HOT_EDGE), "cold", "cold", "1.0.0", "release", "hotswap_mode=cold"),
    ("cold edge", host(), manifest(COLD_EDGE), "auto", "cold", "1.0.0", "release", "vm.args changed"),
    ("no edge from the running version", host(), manifest(), "auto", "cold", "1.0.0", "release", "no edge from 1.0.0"),
    ("node down, older permanent", host(None, "1.0.0", up=False), manifest(HOT_EDGE), "auto", "cold", "1.0.0",
     "release", "node is down"),
]


@pytest.mark.parametrize("case, status, man, mode, action, frm, package, why", DEPLOY, ids=[r[0] for r in DEPLOY])
def test_deploy_plan(case, status, man, mode, action, frm, package, why):
    plan = _plan.deploy(status, man, mode)
    assert (plan["action"], plan["from"], plan["to"], plan["package"]) == (action, frm, "2.0.0", package), case
    assert why in "; ".join(plan["reasons"]), plan


DEPLOY_REFUSED = [
    ("hot asked, first install", EMPTY, manifest(), "hot", "first install is cold"),
    ("hot asked, cold edge", host(), manifest(COLD_EDGE), "hot", "can only be cold: vm.args changed"),
    ("hot asked, node down", host(None, "1.0.0", up=False), manifest(HOT_EDGE), "hot", "node is down"),
    ("hot asked, permanent but down", host(None, "2.0.0", up=False), manifest(), "hot", "started cold"),
    ("unknown mode", host(), manifest(HOT_EDGE), "warm", "not one of auto, hot, cold"),
]


@pytest.mark.parametrize("case, status, man, mode, needle", DEPLOY_REFUSED, ids=[r[0] for r in DEPLOY_REFUSED])
def test_deploy_refusals_name_why(case, status, man, mode, needle):
    with pytest.raises(_plan.PlanError, match=needle):
        _plan.deploy(status, man, mode)


HELD = [{"version": "1.0.0"}, {"version": "2.0.0"}]
ROLLBACK = [
    # (case, status, target, mode, action, to, reason fragment)
    ("previous over the down edge", host("2.0.0", "2.0.0", releases=HELD, previous="1.0.0", relup_down=["1.0.0"]),
     None, "auto", "hot", "1.0.0", "down edge to 1.0.0"),
    ("no down edge", host("2.0.0", "2.0.0", releases=HELD, previous="1.0.0", relup_down=[]),
     "1.0.0", "auto", "cold", "1.0.0", "no down edge"),
    ("cold asked", host("2.0.0", "2.0.0", releases=HELD, relup_down=["1.0.0"]), "1.0.0", "cold", "cold", "1.0.0",
     "hotswap_mode=cold"),
    ("node down", host(None, "2.0.0", up=False, releases=HELD, relup_down=["1.0.0"]), "1.0.0", "auto", "cold",
     "1.0.0", "node is down"),
    ("already there", host("1.0.0", "1.0.0", releases=HELD), "1.0.0", "auto", "noop", "1.0.0", "running and permanent"),
]


@pytest.mark.parametrize("case, status, target, mode, action, to, why", ROLLBACK, ids=[r[0] for r in ROLLBACK])
def test_rollback_plan(case, status, target, mode, action, to, why):
    plan = _plan.rollback(status, target, mode)
    assert (plan["action"], plan["to"], plan["direction"]) == (action, to, "down"), case
    assert why in "; ".join(plan["reasons"]), plan


ROLLBACK_REFUSED = [
    ("nothing installed", EMPTY, None, "auto", "no release to roll back"),
    ("no previous release", host("2.0.0", "2.0.0", releases=[{"version": "2.0.0"}]), None, "auto", "no earlier release"),
    ("target not held", host("2.0.0", "2.0.0", releases=HELD), "0.9.0", "auto", "0.9.0 is not on the host"),
    ("hot asked, no down edge", host("2.0.0", "2.0.0", releases=HELD, relup_down=[]), "1.0.0", "hot", "can only be cold"),
]


@pytest.mark.parametrize("case, status, target, mode, needle", ROLLBACK_REFUSED, ids=[r[0] for r in ROLLBACK_REFUSED])
def test_rollback_refusals_name_why(case, status, target, mode, needle):
    with pytest.raises(_plan.PlanError, match=needle):
        _plan.rollback(status, target, mode)


def test_describe_and_diff_name_from_to_and_why():
    plan = _plan.deploy(host(), manifest(HOT_EDGE))
    assert _plan.describe(plan) == "1.0.0 -> 2.0.0: hot (relup has a hot edge from 1.0.0)"
    d = _plan.diff("demo", plan)
    assert "1.0.0" in d["before"] and "2.0.0" in d["after"]


def _older(*edges):
    return dict(manifest(*edges), version="1.0.0")


RUNS_V2 = host("2.0.0", "2.0.0")
DOWN_EDGE = {"from": "2.0.0", "verdict": "hot", "reasons": []}


@pytest.mark.parametrize("case, status, man, mode, allow, needle", [
    ("older, only cold", RUNS_V2, _older(), "auto", False, "1.0.0 is older than the running 2.0.0"),
    ("older, cold asked", RUNS_V2, _older(DOWN_EDGE), "cold", False, "roll back with rollback.yml"),
    ("older, node down", host(None, "2.0.0", up=False), _older(DOWN_EDGE), "auto", False,
     "older than the permanent 2.0.0"),
])
def test_a_downgrade_that_would_go_cold_is_refused_pointing_at_rollback(case, status, man, mode, allow, needle):
    with pytest.raises(_plan.PlanError, match=needle) as e:
        _plan.deploy(status, man, mode, allow)
    assert "hotswap_allow_downgrade" in str(e.value), case


@pytest.mark.parametrize("case, status, man, mode, allow, action", [
    ("older with a hot edge goes hot", RUNS_V2, _older(DOWN_EDGE), "auto", False, "hot"),
    ("older, cold, allowed", RUNS_V2, _older(), "auto", True, "cold"),
    ("same version is never a downgrade", RUNS_V2, manifest(), "auto", False, "noop"),
    ("pre-release before release counts as older, hot edge", host("1.0.0", "1.0.0"),
     dict(manifest({"from": "1.0.0", "verdict": "hot"}), version="1.0.0-rc.1"), "auto", False, "hot"),
])
def test_downgrades_that_may_go(case, status, man, mode, allow, action):
    assert _plan.deploy(status, man, mode, allow)["action"] == action, case
