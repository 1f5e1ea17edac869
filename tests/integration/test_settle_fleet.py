"""The settle window on the fleet: a node that dies right after its hot commit fails the play, is brought
back to the release it had, and the later batches are never touched.  And deploy.yml never downgrades
cold without being told to.

Own release root (/opt/settle), node name, port, store and artifact dirs, beside the other modules' nodes.
The node is killed from the controller (the fleet's processes are visible here) the moment the host's
start_erl.data names the new version, i.e. right after make_permanent, inside the settle window.
"""
import json
import os
import re
import signal
import threading
import time

import pytest

from hotswap_testlib import sample
from hotswap_testlib.ansible_run import parse_recap, run_playbook
from hotswap_testlib.layout import agent_cmd

pytestmark = [pytest.mark.integration, pytest.mark.fleet]

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEPLOY = os.path.join(REPO, "playbooks", "deploy.yml")
ROOT = "/opt/settle"
PORT = 4080
NODE = "settle"
STORE = "/opt/settle-store"
TARGETS = ["target1", "target2", "target3"]
AGENT = agent_cmd(ROOT, "sample")


@pytest.fixture(scope="module")
def env(fleet, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("settle")
    srcs = {v: str(sample.materialise(tmp / ("src-" + v), v)) for v in ("1.0.0", "2.0.0")}

    def extra(version, **kw):
        e = {"hotswap_app": "sample", "hotswap_root": ROOT, "hotswap_source": srcs[version],
             "hotswap_build_store": STORE, "hotswap_artifact_dir": str(tmp / "artifacts"),
             "hotswap_report_dir": str(tmp / "reports"), "hotswap_service_manager": "daemon",
             "hotswap_env": {"SAMPLE_PORT": str(PORT), "SAMPLE_GREETING": "hello-settle", "RELEASE_NODE": NODE}}
        e.update(kw)
        return e
    return {"extra": extra}


def _status(fleet, host):
    return json.loads(fleet.run(host, AGENT + ["status"]).stdout)


def _kill_after_commit(fleet, host, version, pid, stop):
    """SIGKILL ``pid`` as soon as the host's start_erl.data names ``version`` (the commit)."""
    path = fleet.opt_dir(host) / ROOT[len("/opt/"):] / "releases" / "start_erl.data"
    while not stop.is_set():
        try:
            if path.read_text().split()[1] == version:
                os.kill(pid, signal.SIGKILL)
                return
        except (OSError, IndexError):
            pass
        time.sleep(0.01)


@pytest.mark.fault
def test_a_node_that_dies_right_after_its_commit_fails_the_play_and_is_restored(fleet, env):
    rc, out, err = run_playbook(fleet, DEPLOY, env["extra"]("1.0.0"), timeout=1200)
    assert rc == 0, out[-3000:] + err[-1500:]
    before = {t: _status(fleet, t) for t in TARGETS}
    assert all(s["running"] == "1.0.0" and s["node_up"] for s in before.values()), before
    stop = threading.Event()
    killer = threading.Thread(target=_kill_after_commit,
                              args=(fleet, "target1", "2.0.0", before["target1"]["os_pid"], stop), daemon=True)
    killer.start()
    try:
        rc, out, err = run_playbook(fleet, DEPLOY, env["extra"]("2.0.0", hotswap_mode="hot",
                                                                hotswap_settle_seconds=3), timeout=1200)
    finally:
        stop.set()
        killer.join(5)
    recap = parse_recap(out)
    print("\n".join(line for line in out.splitlines() if '"msg"' in line or "FAILED" in line)[-3000:])
    assert rc != 0 and recap["target1"]["failed"] == 1, out[-4000:]
    # killed right after the commit: seen by the settle watch, or (when the kill lands before the node's
    # reply to the install call reaches the agent) by the install call itself; either way the host is back
    assert "died" in out, out[-4000:]
    assert re.search(r"target1\s+1\.0\.0\s+2\.0\.0\s+hot\s+FAILED, reverted", out), out[-3000:]
    st = _status(fleet, "target1")
    assert st["node_up"] and (st["running"], st["permanent"]) == ("1.0.0", "1.0.0"), st
    assert st["os_pid"] != before["target1"]["os_pid"]          # restarted cold: its state was lost, and said so
    assert sample.SampleClient(fleet.host("target1").address, PORT).vsn() == "1.0.0"
    for t in ("target2", "target3"):                              # the later batches never started
        s = _status(fleet, t)
        assert (s["running"], s["permanent"], s["os_pid"]) == ("1.0.0", "1.0.0", before[t]["os_pid"]), (t, s)


@pytest.mark.bad_input
def test_deploy_yml_refuses_a_cold_downgrade_and_points_at_rollback(fleet, env):
    rc, out, err = run_playbook(fleet, DEPLOY, env["extra"]("2.0.0"), timeout=1200)
    assert rc == 0, out[-3000:] + err[-1500:]
    before = {t: _status(fleet, t) for t in TARGETS}
    assert all((s["running"], s["permanent"]) == ("2.0.0", "2.0.0") for s in before.values()), before
    rc, out, err = run_playbook(fleet, DEPLOY, env["extra"]("1.0.0", hotswap_mode="cold"), timeout=1200)
    assert rc != 0 and parse_recap(out)["target1"]["failed"] == 1, out[-3000:]
    assert "1.0.0 is older than the running 2.0.0" in out and "rollback.yml" in out, out[-3000:]
    for t in TARGETS:                      # nothing changed anywhere: same release, same OS process
        s = _status(fleet, t)
        assert (s["running"], s["permanent"], s["os_pid"]) == ("2.0.0", "2.0.0", before[t]["os_pid"]), (t, s)
