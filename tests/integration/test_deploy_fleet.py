"""The product path on the real fleet: playbooks/deploy.yml, rollback.yml and status.yml.

One fleet (3 targets + build host) and one progression of versions for the whole module:
first install of v1 -> check mode -> hot v2 under load -> rerun no-op -> failing canary -> rollback.
"""
import hashlib
import json
import os
import re

import pytest

from hotswap_testlib import sample
from hotswap_testlib.ansible_run import parse_recap, run_playbook

pytestmark = [pytest.mark.integration, pytest.mark.fleet]

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEPLOY = os.path.join(REPO, "playbooks", "deploy.yml")
ROLLBACK = os.path.join(REPO, "playbooks", "rollback.yml")
STATUS = os.path.join(REPO, "playbooks", "status.yml")
PORT = 4040
STORE = "/opt/hotswap-store"   # /opt is private to each fleet host: a fresh store per fleet
TARGETS = ["target1", "target2", "target3"]


@pytest.fixture(scope="module")
def env(fleet, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("deploy")
    srcs = {}
    for v in ("1.0.0", "2.0.0", "3.0.0"):
        srcs[v] = str(sample.materialise(tmp / ("src-" + v), v))

    def extra(version, **kw):
        e = {
            "hotswap_app": "sample",
            "hotswap_source": srcs[version],
            "hotswap_build_store": STORE,
            "hotswap_artifact_dir": str(tmp / "artifacts"),
            "hotswap_report_dir": str(tmp / "reports"),
            "hotswap_env": {"SAMPLE_PORT": str(PORT), "SAMPLE_GREETING": "hello-fleet"},
            "hotswap_service_manager": "daemon",
        }
        e.update(kw)
        return e

    return {"tmp": tmp, "srcs": srcs, "extra": extra}


def _client(fleet, host):
    return sample.SampleClient(fleet.host(host).address, PORT)


def _root_digest(fleet, host, root="/opt/sample"):
    """Checksums of every file under a root (and the store), read from the controller side."""
    base = str(fleet.opt_dir(host)) + root[len("/opt"):]
    h = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(base):
        dirnames.sort()
        for fn in sorted(filenames):
            p = os.path.join(dirpath, fn)
            if os.path.islink(p) or not os.path.isfile(p):
                continue
            h.update(os.path.relpath(p, base).encode() + b"\0")
            with open(p, "rb") as f:
                h.update(hashlib.sha256(f.read()).digest())
    return h.hexdigest()


def _deploy(fleet, env, version, check=False, diff=False, **kw):
    rc, out, err = run_playbook(fleet, DEPLOY, env["extra"](version, **kw), check=check, diff=diff)
    return rc, out, err, parse_recap(out)


def _agent_status(fleet, host):
    r = fleet.run(host, ["/usr/bin/python3", "/opt/.hotswap/sample/agent.py", "--root", "/opt/sample",
                         "--app", "sample", "status"])
    return json.loads(r.stdout)


def test_first_install_on_three_empty_hosts_then_rerun_changes_nothing(fleet, env):
    rc, out, err, recap = _deploy(fleet, env, "1.0.0")
    assert rc == 0, out[-4000:] + err[-2000:]
    for t in TARGETS:
        c = _client(fleet, t)
        assert c.vsn() == "1.0.0" and c.code() == "v1"
        assert c.config() == "hello-fleet"          # runtime.exs ran with the node's environment
        st = _agent_status(fleet, t)
        assert st["running"] == st["permanent"] == "1.0.0"
    rc, out, err, recap = _deploy(fleet, env, "1.0.0")
    assert rc == 0, out[-3000:]
    assert all(recap[h]["changed"] == 0 for h in recap), recap


def test_check_diff_shows_the_plan_and_changes_nothing(fleet, env):
    before = {t: _root_digest(fleet, t) for t in TARGETS + ["build1"] if t != "build1"}
    store_before = _root_digest(fleet, "build1", STORE)
    rc, out, err, recap = _deploy(fleet, env, "2.0.0", check=True, diff=True)
    assert rc == 0, out[-4000:] + err[-2000:]
    # per host: the summary row (from, to, action), the reasons line and the diff naming the plan
    for t in TARGETS:
        assert re.search(t + r"\s+1\.0\.0\s+2\.0\.0\s+hot\s", out), out[-3000:]
        assert t + ": hot because relup has a hot edge from 1.0.0" in out, out[-3000:]
    assert out.count("+sample: 2.0.0 (1.0.0 -> 2.0.0: hot (relup has a hot edge from 1.0.0))") == len(TARGETS), out[-3000:]
    assert {t: _root_digest(fleet, t) for t in TARGETS} == before
    assert _root_digest(fleet, "build1", STORE) == store_before


def test_hot_deploy_under_load_keeps_every_process_state(fleet, env):
    pids, base = {}, {}
    for t in TARGETS:
        c = _client(fleet, t)
        for _ign in range(5):
            c.add(2)
        base[t] = c.get()
        pids[t] = _agent_status(fleet, t)["os_pid"]
    loads = {t: sample.LoadClient(fleet.host(t).address, PORT, interval=0.002) for t in TARGETS}
    for ld in loads.values():
        ld.start()
    rc, out, err, recap = _deploy(fleet, env, "2.0.0", hotswap_mode="hot")
    stats = {t: ld.stop() for t, ld in loads.items()}
    assert rc == 0, out[-4000:] + err[-2000:]
    for t in TARGETS:
        s = stats[t]
        c = _client(fleet, t)
        assert s["failed"] == 0, (t, s)
        assert c.get() == base[t] + s["acked"], (t, s)          # no acknowledged write lost
        kind, total, _writes = c.state().split()
        assert kind == "map" and int(total) == c.get()          # code_change transformed the state
        assert c.code() == "v2" and c.vsn() == "2.0.0"
        assert c.cmd("AUDIT").isdigit()                          # the new supervisor child runs
        assert c.config() == "hello-fleet"                       # runtime config survived the hot upgrade
        st = _agent_status(fleet, t)
        assert st["os_pid"] == pids[t]                           # same OS process
        assert st["permanent"] == "2.0.0"
        start_erl = fleet.run(t, ["cat", "/opt/sample/releases/start_erl.data"]).stdout.split()
        assert start_erl[1] == "2.0.0"


def test_rerun_of_the_same_deploy_is_a_noop(fleet, env):
    rc, out, err, recap = _deploy(fleet, env, "2.0.0")
    assert rc == 0, out[-3000:]
    assert all(recap[h]["changed"] == 0 for h in recap), recap


def test_failing_health_check_on_the_canary_reverts_it_and_stops_the_rollout(fleet, env):
    before = {t: _client(fleet, t).get() for t in TARGETS}
    rc, out, err, recap = _deploy(fleet, env, "3.0.0", hotswap_health_check="cmd:/bin/false")
    assert rc != 0
    assert "target1" in out and "reverted" in out, out[-3000:]
    c = _client(fleet, "target1")
    assert c.vsn() == "2.0.0" and c.get() == before["target1"]     # back on v2, state intact
    assert _agent_status(fleet, "target1")["permanent"] == "2.0.0"
    for t in ("target2", "target3"):                                   # later batches untouched
        assert _client(fleet, t).vsn() == "2.0.0"
        assert recap.get(t, {}).get("changed", 0) == 0


def test_cold_stop_and_start_boots_the_committed_release(fleet, env):
    t = "target3"
    agent = ["/usr/bin/python3", "/opt/.hotswap/sample/agent.py", "--root", "/opt/sample", "--app", "sample",
             "--user", "sample"]
    fleet.run(t, agent + ["stop"], timeout=60)
    fleet.run(t, agent + ["start"], timeout=60)
    c = _client(fleet, t)
    assert c.vsn() == "2.0.0" and c.code() == "v2"


def test_rollback_hot_keeps_state_and_status_shows_versions(fleet, env):
    totals = {t: _client(fleet, t).get() for t in TARGETS}
    rc, out, err = run_playbook(fleet, ROLLBACK, {"hotswap_app": "sample", "hotswap_service_manager": "daemon"})
    assert rc == 0, out[-4000:] + err[-2000:]
    for t in TARGETS:
        c = _client(fleet, t)
        assert c.vsn() == "1.0.0" and c.code() == "v1"
        assert c.get() == totals[t]
        assert c.state().split()[0] == "tuple"                 # code_change({:down, _}) ran
    rc, out, err = run_playbook(fleet, STATUS, {"hotswap_app": "sample"})
    assert rc == 0, out[-3000:]
    assert "target1" in out and "1.0.0" in out
