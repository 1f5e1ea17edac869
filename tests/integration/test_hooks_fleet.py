"""User hooks on the fleet (hotswap_{before,after}_{build,upgrade}_tasks_file): a hook file that does not exist is
refused before anything changes; the build hooks run on the build host around the build and the upgrade hooks on
each target right before and after its release task, in that order, with ``hotswap_hook`` (from/to, action, whether
the node's in-memory state is lost); a host with nothing to do runs no upgrade hook; a before-upgrade hook that fails
stops its host before anything changes on it (same release, same OS process) and the rollout stops.

Every hook appends one JSON line to /opt/hooks-hooklog on the host it runs on (each fleet host has its own /opt).
Own release root (/opt/hooks), node name, port, store and artifact dirs, beside the other modules' nodes. The tests
run in file order on one fleet root: each starts from where the previous left it.
"""
import json
import os

import pytest

from hotswap_testlib import sample
from hotswap_testlib.ansible_run import parse_recap, run_playbook
from hotswap_testlib.layout import agent_cmd

pytestmark = [pytest.mark.integration, pytest.mark.fleet]

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEPLOY = os.path.join(REPO, "playbooks", "deploy.yml")
ROOT = "/opt/hooks"
PORT = 4170
NODE = "hooks"
STORE = "/opt/hooks-store"
TARGETS = ["target1", "target2", "target3"]
AGENT = agent_cmd(ROOT, "sample")
LOG = "hooks-hooklog"   # under each host's /opt

# each hook logs what it sees (without the manifest, which is big) on the host it runs on
LOG_TASK = """
- name: Log this hook on the host it runs on
  ansible.builtin.shell: >-
    printf '%s\\n' {{ (hotswap_hook | dict2items | rejectattr('key', 'in', ['manifest', 'reasons']) | items2dict
                       | combine({'host': inventory_hostname,
                                  'manifest_version': (hotswap_hook.manifest | default({})).version | default(none)})
                       | to_json) | quote }} >> /opt/hooks-hooklog
  changed_when: false
  check_mode: false      # a hook's own tasks decide what they do in check mode: this one logs in check mode too
"""
FAIL_ON_TARGET2 = LOG_TASK + """
- name: Refuse target2
  ansible.builtin.fail:
    msg: the before-upgrade hook says no to {{ inventory_hostname }}
  when: inventory_hostname == 'target2'
"""


@pytest.fixture(scope="module")
def env(fleet, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hooks")
    srcs = {v: str(sample.materialise(tmp / ("src-" + v), v)) for v in ("1.0.0", "2.0.0")}
    (tmp / "log.yml").write_text("---" + LOG_TASK)
    (tmp / "fail_on_target2.yml").write_text("---" + FAIL_ON_TARGET2)
    hooks = {f"hotswap_{s}_tasks_file": str(tmp / "log.yml")
             for s in ("before_build", "after_build", "before_upgrade", "after_upgrade")}

    def extra(version, **kw):
        e = {"hotswap_app": "sample", "hotswap_root": ROOT, "hotswap_source": srcs[version],
             "hotswap_build_store": STORE, "hotswap_artifact_dir": str(tmp / "artifacts"),
             "hotswap_report_dir": str(tmp / "reports"), "hotswap_service_manager": "daemon",
             "hotswap_serial": [1, 1, 1], "hotswap_settle_seconds": 1,
             "hotswap_env": {"SAMPLE_PORT": str(PORT), "SAMPLE_GREETING": "hello-hooks", "RELEASE_NODE": NODE}}
        e.update(hooks)
        e.update(kw)
        return e
    return {"extra": extra, "tmp": tmp}


def _status(fleet, host):
    return json.loads(fleet.run(host, AGENT + ["status"]).stdout)


def _log(fleet, host):
    """the hook lines written on ``host`` since the last call (the file is emptied)"""
    path = fleet.opt_dir(host) / LOG
    if not path.exists():
        return []
    lines = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    path.write_text("")
    return lines


def _play(fleet, extra, **kw):
    rc, out, err = run_playbook(fleet, DEPLOY, extra, timeout=900, **kw)
    print("\n".join(x for x in (out + err).splitlines() if '"msg"' in x or "FAILED" in x or "WARNING" in x)[-4000:])
    return rc, out + "\n" + err


@pytest.mark.bad_input
def test_a_hook_file_that_does_not_exist_is_refused_before_any_host_changes(fleet, env):
    missing = str(env["tmp"] / "no-such-hook.yml")
    rc, out = _play(fleet, env["extra"]("1.0.0", hotswap_before_upgrade_tasks_file=missing))
    assert rc != 0, out[-3000:]
    assert "hotswap_before_upgrade_tasks_file: no such file " + missing in out, out[-3000:]
    assert "nothing was changed" in out, out[-3000:]
    for h in TARGETS + ["build1"]:               # nothing built, nothing installed, no hook ran
        assert not (fleet.opt_dir(h) / "hooks").exists(), h
        assert not (fleet.opt_dir(h) / "hooks-store").exists(), h
        assert _log(fleet, h) == [], h


def test_hooks_run_around_the_build_and_each_hosts_release_task_with_its_plan(fleet, env):
    rc, out = _play(fleet, env["extra"]("1.0.0"))
    assert rc == 0, out[-4000:]
    build = _log(fleet, "build1")
    assert [(x["stage"], x["host"]) for x in build] == [("before_build", "build1"), ("after_build", "build1")], build
    assert build[0]["version"] == "" and build[0]["store"] == STORE and build[0]["check_mode"] is False, build
    assert (build[1]["version"], build[1]["manifest_version"], build[1]["changed"]) == ("1.0.0", "1.0.0", True), build
    for h in TARGETS:
        lines = _log(fleet, h)
        assert [(x["stage"], x["host"]) for x in lines] == [("before_upgrade", h), ("after_upgrade", h)], (h, lines)
        before, after = lines
        assert (before["from"], before["to"], before["action"], before["loses_state"]) == (
            None, "1.0.0", "install", False), before
        assert (before["app"], before["root"], before["state"]) == ("sample", ROOT, "deployed"), before
        assert (after["action"], after["changed"], after["host_version"], after["state_lost"]) == (
            "install", True, "1.0.0", False), after
        assert _status(fleet, h)["running"] == "1.0.0"

    # check mode: the hooks are included (this one logs anyway) and see the plan; no node moves
    pids = {h: _status(fleet, h)["os_pid"] for h in TARGETS}
    rc, out = _play(fleet, env["extra"]("2.0.0", hotswap_mode="hot"), check=True, diff=True)
    assert rc == 0, out[-4000:]
    assert [(x["stage"], x["check_mode"]) for x in _log(fleet, "build1")] == [
        ("before_build", True), ("after_build", True)]
    for h in TARGETS:
        lines = _log(fleet, h)
        assert [(x["stage"], x["check_mode"], x["from"], x["to"], x["action"]) for x in lines] == [
            ("before_upgrade", True, "1.0.0", "2.0.0", "hot"), ("after_upgrade", True, "1.0.0", "2.0.0", "hot")], lines
        assert (lines[1]["host_version"], lines[1]["state_lost"]) == ("1.0.0", False), lines
        s = _status(fleet, h)
        assert (s["running"], s["permanent"], s["os_pid"]) == ("1.0.0", "1.0.0", pids[h]), (h, s)

    # the same deploy again: the build hooks run (nothing built), no host has anything to do, so no upgrade hook
    rc, out = _play(fleet, env["extra"]("1.0.0"))
    assert rc == 0, out[-4000:]
    assert all(r["changed"] == 0 for h, r in parse_recap(out).items() if h in TARGETS), out[-3000:]
    assert [(x["stage"], x["changed"] if "changed" in x else None) for x in _log(fleet, "build1")] == [
        ("before_build", None), ("after_build", False)]
    assert all(_log(fleet, h) == [] for h in TARGETS)


def test_a_failing_before_upgrade_hook_stops_its_host_before_anything_changes(fleet, env):
    before = {h: _status(fleet, h) for h in TARGETS}
    assert all((s["running"], s["permanent"], s["node_up"]) == ("1.0.0", "1.0.0", True) for s in before.values())
    rc, out = _play(fleet, env["extra"]("2.0.0", hotswap_mode="hot",
                                        hotswap_before_upgrade_tasks_file=str(env["tmp"] / "fail_on_target2.yml")))
    recap = parse_recap(out)
    assert rc != 0 and recap["target2"]["failed"] == 1, out[-4000:]
    assert "target2: the before-upgrade hook failed (Refuse target2: the before-upgrade hook says no to target2)" in out
    assert "before the release task ran: the host still runs 1.0.0, its release untouched" in out, out[-4000:]
    # the first batch went hot, with both hooks, and kept its node (no state lost)
    t1 = _log(fleet, "target1")
    assert [(x["stage"], x["from"], x["to"], x["action"], x["loses_state"]) for x in t1] == [
        ("before_upgrade", "1.0.0", "2.0.0", "hot", False), ("after_upgrade", "1.0.0", "2.0.0", "hot", False)], t1
    assert (t1[1]["changed"], t1[1]["host_version"], t1[1]["state_lost"]) == (True, "2.0.0", False), t1
    s1 = _status(fleet, "target1")
    assert (s1["running"], s1["permanent"], s1["os_pid"]) == ("2.0.0", "2.0.0", before["target1"]["os_pid"]), s1
    # target2: its hook ran and failed; no after hook, same release, same OS process
    assert [x["stage"] for x in _log(fleet, "target2")] == ["before_upgrade"]
    s2 = _status(fleet, "target2")
    assert (s2["running"], s2["permanent"], s2["os_pid"]) == ("1.0.0", "1.0.0", before["target2"]["os_pid"]), s2
    assert sample.SampleClient(fleet.host("target2").address, PORT).vsn() == "1.0.0"
    # the rollout stopped: target3 was never touched; the summary names target2 as failed
    assert _log(fleet, "target3") == []
    s3 = _status(fleet, "target3")
    assert (s3["running"], s3["os_pid"]) == ("1.0.0", before["target3"]["os_pid"]), s3
    assert "target2" in out and "FAILED" in out, out[-3000:]


def test_a_failing_after_upgrade_hook_fails_its_host_which_stays_on_the_new_release(fleet, env):
    (env["tmp"] / "after_fail_on_target2.yml").write_text(
        "---" + FAIL_ON_TARGET2.replace("before-upgrade", "after-upgrade"))
    before = {h: _status(fleet, h) for h in TARGETS}
    rc, out = _play(fleet, env["extra"]("2.0.0", hotswap_mode="hot",
                                        hotswap_after_upgrade_tasks_file=str(env["tmp"] / "after_fail_on_target2.yml")))
    assert rc != 0 and parse_recap(out)["target2"]["failed"] == 1, out[-4000:]
    assert ("target2: the after-upgrade hook failed (Refuse target2: the after-upgrade hook says no to target2); "
            "the upgrade itself succeeded and the host runs 2.0.0") in out, out[-4000:]
    assert _log(fleet, "target1") == []                    # nothing to do there: no hook
    assert [x["stage"] for x in _log(fleet, "target2")] == ["before_upgrade", "after_upgrade"]
    s2 = _status(fleet, "target2")                         # moved hot, committed: the hook's failure undoes nothing
    assert (s2["running"], s2["permanent"], s2["os_pid"]) == ("2.0.0", "2.0.0", before["target2"]["os_pid"]), s2
    assert _log(fleet, "target3") == []                    # the rollout stopped
    assert _status(fleet, "target3")["running"] == "1.0.0"


def test_rollback_yml_runs_the_upgrade_hooks_around_its_release_task(fleet, env):
    pid = _status(fleet, "target1")["os_pid"]
    extra = {k: v for k, v in env["extra"]("1.0.0").items() if "build" not in k and k != "hotswap_source"}
    rc, out, err = run_playbook(fleet, os.path.join(REPO, "playbooks", "rollback.yml"),
                                dict(extra, hotswap_target_hosts="target1"), timeout=600)
    assert rc == 0, (out + err)[-4000:]
    lines = _log(fleet, "target1")
    assert [(x["stage"], x["state"], x["from"], x["to"], x["action"]) for x in lines] == [
        ("before_upgrade", "rolled_back", "2.0.0", "1.0.0", "hot"),
        ("after_upgrade", "rolled_back", "2.0.0", "1.0.0", "hot")], lines
    assert (lines[1]["changed"], lines[1]["host_version"], lines[1]["state_lost"]) == (True, "1.0.0", False), lines
    s = _status(fleet, "target1")
    assert (s["running"], s["permanent"], s["os_pid"]) == ("1.0.0", "1.0.0", pid), s
