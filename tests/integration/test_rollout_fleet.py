"""Fleet-level rollout acceptance: cold edges, health-gated cold deploys, rollback hot and cold,
the status table on a mixed fleet, fleet-wide revert, and pull mode (playbooks/deploy.yml,
rollback.yml, status.yml on the real netns fleet).

Own release root (/opt/rollout), node name, port, build store, artifact and report dirs, so it can
share a session (and a fleet) with test_deploy_fleet.py. One progression of versions per module:

  1.0.0 (install) -> 1.1.0 (vm.args changed: cold) -> 2.0.0 (failing health, then cold) -> 3.0.0 (hot)
  -> rollback 2.0.0 (hot) -> rollback 1.1.0 (cold) -> target1 alone on 2.0.0 (mixed)
  -> 4.0.0 with revert_on_failure=fleet (fails on target3) -> 5.0.0 pulled over HTTP from build1
"""
import glob
import hashlib
import json
import os
import re
import shutil
import subprocess
import time

import pytest

from hotswap_testlib import sample
from hotswap_testlib.ansible_run import parse_recap, run_playbook, task_result, task_results
from hotswap_testlib.layout import agent_dir, agent_cmd

pytestmark = [pytest.mark.integration, pytest.mark.fleet]

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEPLOY = os.path.join(REPO, "playbooks", "deploy.yml")
ROLLBACK = os.path.join(REPO, "playbooks", "rollback.yml")
STATUS = os.path.join(REPO, "playbooks", "status.yml")
ROOT = "/opt/rollout"
PORT = 4050
NODE = "rollout"              # RELEASE_NODE: not the default "sample", which test_deploy_fleet.py's node uses
STORE = "/opt/rollout-store"  # /opt is private to each fleet host
HTTP_PORT = 8450
TARGETS = ["target1", "target2", "target3"]
VERSIONS = {"1.0.0": (), "1.1.0": ("vmargs",), "2.0.0": (), "3.0.0": (), "4.0.0": (), "5.0.0": ()}
AGENT = agent_cmd(ROOT, "sample")
TIMINGS = []


@pytest.fixture(scope="module")
def env(fleet, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("rollout")
    srcs = {v: str(sample.materialise(tmp / ("src-" + v), v, flags)) for v, flags in VERSIONS.items()}
    counter = {"n": 0}

    def report_dir():
        counter["n"] += 1
        return str(tmp / "reports" / ("%02d" % counter["n"]))

    def common(**kw):
        e = {
            "hotswap_app": "sample",
            "hotswap_root": ROOT,
            "hotswap_service_manager": "daemon",
            "hotswap_report_dir": report_dir(),
        }
        e.update(kw)
        return e

    def extra(version, **kw):
        e = common(
            hotswap_source=srcs[version],
            hotswap_build_store=STORE,
            hotswap_artifact_dir=str(tmp / "artifacts"),
            hotswap_env={"SAMPLE_PORT": str(PORT), "SAMPLE_GREETING": "hello-rollout", "RELEASE_NODE": NODE},
        )
        e.update(kw)
        return e

    yield {"tmp": tmp, "srcs": srcs, "extra": extra, "common": common}
    with open(tmp / "timings.txt", "w") as f:
        f.writelines("%6.1f s  %s\n" % (dt, what) for what, dt in TIMINGS)


def _play(fleet, playbook, extra_vars, label, **kw):
    t0 = time.monotonic()
    rc, out, err = run_playbook(fleet, playbook, extra_vars, timeout=1200, **kw)
    TIMINGS.append((label, time.monotonic() - t0))
    return rc, out, err, parse_recap(out)


def _deploy(fleet, env, version, label=None, args=(), limit=None, **kw):
    return _play(fleet, DEPLOY, env["extra"](version, **kw), label or "deploy " + version, args=args, limit=limit)


def _rollback(fleet, env, label, limit=None, **kw):
    return _play(fleet, ROLLBACK, env["common"](**kw), label, limit=limit)


def _client(fleet, host):
    return sample.SampleClient(fleet.host(host).address, PORT, timeout=10)


def _status(fleet, host):
    r = fleet.run(host, AGENT + ["status"], timeout=120)
    return json.loads(r.stdout)


def _cmdline(fleet, host, pid):
    return fleet.run(host, ["cat", "/proc/%d/cmdline" % pid]).stdout.split("\0")


def _has_sbwt_none(argv):
    """vm.args' ``+sbwt none`` (erlexec hands it to beam.smp as ``-sbwt none``)."""
    return any(a in ("+sbwt", "-sbwt") and b == "none" for a, b in zip(argv, argv[1:]))


def _report(env_vars):
    files = sorted(glob.glob(os.path.join(env_vars["hotswap_report_dir"], "sample-*.json")))
    assert files, "no JSON report in %s" % env_vars["hotswap_report_dir"]
    with open(files[-1]) as f:
        return json.load(f)


# left out of "nothing changed": node logs, the journal, the lock, and the agent itself (the agent role
# re-installs it when the collection's copy changed, before any plan is made)
NOT_STATE = ("tmp", ".hotswap/journal.jsonl", ".hotswap/lock", ".hotswap/agent.py", ".hotswap/node.erl",
             ".hotswap/VERSION")


def _root_digest(fleet, host, root=ROOT, skip=NOT_STATE):
    """{relative path: sha256} of every file under a root, read from the controller side."""
    base = str(fleet.opt_dir(host)) + root[len("/opt"):]
    out = {}
    for dirpath, dirnames, filenames in os.walk(base):
        for fn in filenames:
            p = os.path.join(dirpath, fn)
            rel = os.path.relpath(p, base)
            if os.path.islink(p) or not os.path.isfile(p) or any(rel == s or rel.startswith(s + "/") for s in skip):
                continue
            with open(p, "rb") as f:
                out[rel] = hashlib.sha256(f.read()).hexdigest()[:16]
    return out


def _snapshot(fleet, hosts=tuple(TARGETS)):
    out = {}
    for t in hosts:
        st = _status(fleet, t)
        out[t] = {"digest": _root_digest(fleet, t), "os_pid": st["os_pid"], "running": st["running"],
                  "permanent": st["permanent"]}
    return out


def _diff(before, after):
    """What differs between two snapshots: {host: {key or path: (before, after)}}."""
    out = {}
    for t in before:
        b, a = before[t], after.get(t, {})
        d = {k: (b.get(k), a.get(k)) for k in set(b) | set(a) if k != "digest" and b.get(k) != a.get(k)}
        bd, ad = b.get("digest", {}), a.get("digest", {})
        d.update({p: (bd.get(p), ad.get(p)) for p in set(bd) | set(ad) if bd.get(p) != ad.get(p)})
        if d:
            out[t] = d
    return out


def _assert_on(fleet, host, version):
    """The host runs `version`, permanent, and answers on its port."""
    st = _status(fleet, host)
    assert st["node_up"] and st["running"] == version and st["permanent"] == version, (host, st)
    start_erl = fleet.run(host, ["cat", ROOT + "/releases/start_erl.data"]).stdout.split()
    assert start_erl[1] == version, (host, start_erl)
    assert _client(fleet, host).vsn() == version
    return st


def _outcome(out, host):
    """The one-line outcome of the release task for host ("FROM -> TO: ACTION (why)"; needs -v)."""
    r = task_result(out, "Deploy or roll back", host)
    assert r and r["result"], "no outcome printed for %s" % host
    return r["result"]["summary"]


def _tail(out, err, n=4000):
    return out[-n:] + "\n--- stderr ---\n" + err[-1500:]


# ----------------------------------------------------------------------------------------------- 1

def test_first_install_of_v1_on_three_hosts(fleet, env):
    rc, out, err, recap = _deploy(fleet, env, "1.0.0")
    assert rc == 0, _tail(out, err)
    for t in TARGETS:
        _assert_on(fleet, t, "1.0.0")
        c = _client(fleet, t)
        assert c.code() == "v1" and c.config() == "hello-rollout"
        assert not _has_sbwt_none(_cmdline(fleet, t, _status(fleet, t)["os_pid"]))


def test_hot_mode_on_a_cold_edge_fails_before_touching_the_host(fleet, env):
    before = _snapshot(fleet)
    rc, out, err, recap = _deploy(fleet, env, "1.1.0", label="deploy 1.1.0 mode=hot (refused)", hotswap_mode="hot")
    assert rc != 0, _tail(out, err)
    assert "target1" in out
    assert re.search(r"hotswap_mode=hot but 1\.0\.0 -> 1\.1\.0 can only be cold: [^\n]*vm\.args changed", out), \
        _tail(out, err)
    assert _diff(before, _snapshot(fleet)) == {}                       # no host touched (the canary neither)
    for t in ("target2", "target3"):
        assert recap.get(t, {}).get("changed", 0) == 0, recap


def test_vm_args_change_goes_cold_everywhere_in_auto_mode(fleet, env):
    pids = {t: _status(fleet, t)["os_pid"] for t in TARGETS}
    ev = env["extra"]("1.1.0")
    rc, out, err, recap = _play(fleet, DEPLOY, ev, "deploy 1.1.0 auto (cold)")
    assert rc == 0, _tail(out, err)
    report = _report(ev)
    rows = {r["host"]: r for r in report["rows"]}
    for t in TARGETS:
        # the reason, per host, in the summary
        assert re.search(r"^\s*\"?%s: cold because [^\n]*vm\.args changed" % t, out, re.M), _tail(out, err)
        st = _assert_on(fleet, t, "1.1.0")
        assert st["os_pid"] != pids[t]                         # a real restart
        assert _has_sbwt_none(_cmdline(fleet, t, st["os_pid"])), _cmdline(fleet, t, st["os_pid"])
        assert _client(fleet, t).config() == "hello-rollout"
        r = rows[t]
        assert r["action"] == "cold" and r["from"] == "1.0.0" and r["to"] == "1.1.0" and r["result"] == "changed", r
        assert isinstance(r["downtime_ms"], (int, float)) and r["downtime_ms"] > 0, r
    # the printed summary has a downtime_ms column with a figure per host
    head = next(line for line in out.splitlines() if "downtime_ms" in line and "host" in line)
    assert head
    for t in TARGETS:
        assert re.search(r"%s\s+1\.0\.0\s+1\.1\.0\s+cold\s+changed\s+\S+\s+\d" % t, out), _tail(out, err)


# ----------------------------------------------------------------------------------------------- 2

def test_cold_deploy_failing_its_health_check_leaves_the_canary_on_the_old_release(fleet, env):
    before = _snapshot(fleet)
    rc, out, err, recap = _deploy(fleet, env, "2.0.0", label="deploy 2.0.0 cold, health fails",
                                  hotswap_health_check="cmd:/bin/false", hotswap_health_timeout=3)
    assert rc != 0
    assert re.search(r"target1: 1\.1\.0 -> 2\.0\.0: cold [^\n]*failed", out), _tail(out, err)
    assert "reverted" in out and "runs 1.1.0" in out, _tail(out, err)
    assert recap["target1"]["failed"] >= 1, recap
    st = _assert_on(fleet, "target1", "1.1.0")               # back on 1.1.0: running, permanent, answering
    assert st["os_pid"] != before["target1"]["os_pid"]     # (it was restarted: cold)
    assert _has_sbwt_none(_cmdline(fleet, "target1", st["os_pid"]))
    for t in ("target2", "target3"):                       # later batches untouched
        assert _diff({t: before[t]}, _snapshot(fleet, [t])) == {}
        assert recap.get(t, {}).get("changed", 0) == 0


# ----------------------------------------------------------------------------------------------- 3

def test_deploy_v2_cold_then_v3_hot(fleet, env):
    # 1.1.0 -> 2.0.0 differs in vm.args: cold (and target1 retries the release its failed deploy left behind)
    rc, out, err, recap = _deploy(fleet, env, "2.0.0")
    assert rc == 0, _tail(out, err)
    for t in TARGETS:
        st = _assert_on(fleet, t, "2.0.0")
        assert not _has_sbwt_none(_cmdline(fleet, t, st["os_pid"]))
        assert _client(fleet, t).code() == "v2"
    pids = {t: _status(fleet, t)["os_pid"] for t in TARGETS}
    rc, out, err, recap = _deploy(fleet, env, "3.0.0", label="deploy 3.0.0 mode=hot", hotswap_mode="hot")
    assert rc == 0, _tail(out, err)
    for t in TARGETS:
        assert re.search(r"%s: hot because relup has a hot edge from 2\.0\.0" % t, out), _tail(out, err)
        st = _assert_on(fleet, t, "3.0.0")
        assert st["os_pid"] == pids[t]


def test_rollback_without_version_goes_back_hot_and_keeps_state(fleet, env):
    totals, pids = {}, {}
    for t in TARGETS:
        c = _client(fleet, t)
        for n in (3, 4, 5):
            c.add(n)
        totals[t] = c.get()
        pids[t] = _status(fleet, t)["os_pid"]
        assert _status(fleet, t)["previous"] == "2.0.0"
    rc, out, err, recap = _rollback(fleet, env, "rollback (previous, hot)")
    assert rc == 0, _tail(out, err)
    for t in TARGETS:
        assert re.search(r"%s: hot because the relup of 3\.0\.0 has a down edge to 2\.0\.0" % t, out), _tail(out, err)
        st = _assert_on(fleet, t, "2.0.0")
        assert st["os_pid"] == pids[t]
        c = _client(fleet, t)
        assert c.get() == totals[t]                          # state survived the downgrade
        assert c.code() == "v2"


def test_rollback_to_a_version_without_down_edge_goes_cold_and_is_live(fleet, env):
    pids = {t: _status(fleet, t)["os_pid"] for t in TARGETS}
    rc, out, err, recap = _rollback(fleet, env, "rollback 1.1.0 (cold)", hotswap_version="1.1.0")
    assert rc == 0, _tail(out, err)
    for t in TARGETS:
        assert re.search(r"%s: cold because the relup of 2\.0\.0 has no down edge to 1\.1\.0" % t, out), \
            _tail(out, err)
        st = _assert_on(fleet, t, "1.1.0")
        assert st["os_pid"] != pids[t]
        assert _has_sbwt_none(_cmdline(fleet, t, st["os_pid"]))   # 1.1.0's own vm.args again
        c = _client(fleet, t)
        assert c.code() == "v1" and c.config() == "hello-rollout"
        c.add(1)
        assert c.get() >= 1


# ----------------------------------------------------------------------------------------------- 4

def _status_rows(out):
    """{host: [running, permanent, unpacked, previous, node_up]} from the printed table."""
    rows = {}
    for line in out.splitlines():
        m = re.match(r'^\s*"(target\d)\s+(.*?)",?$', line)
        if m:
            rows[m.group(1)] = m.group(2).split()
    return rows


def test_status_shows_each_host_and_warns_on_a_mixed_fleet(fleet, env):
    rc, out, err, recap = _play(fleet, STATUS, env["common"](), "status (uniform)")
    assert rc == 0, _tail(out, err)
    rows = _status_rows(out)
    assert re.search(r"running\s+permanent\s+unpacked\s+previous\s+node_up", out), _tail(out, err)
    for t in TARGETS:
        running, permanent, _unpacked, previous, up = rows[t]
        assert (running, permanent, previous, up) == ("1.1.0", "1.1.0", "2.0.0", "yes"), rows[t]
    assert "WARNING: the fleet runs mixed versions" not in out

    rc, out, err, recap = _rollback(fleet, env, "rollback --limit target1 to 2.0.0", limit="target1",
                                    hotswap_version="2.0.0")
    assert rc == 0, _tail(out, err)
    assert set(recap) == {"target1"}, recap
    _assert_on(fleet, "target1", "2.0.0")

    rc, out, err, recap = _play(fleet, STATUS, env["common"](), "status (mixed)")
    assert rc == 0, _tail(out, err)
    rows = _status_rows(out)
    assert rows["target1"][:2] == ["2.0.0", "2.0.0"], rows
    assert rows["target2"][:2] == rows["target3"][:2] == ["1.1.0", "1.1.0"], rows
    m = re.search(r"WARNING: the fleet runs mixed versions: (\{[^\n]*\})", out.replace('\\"', '"'))
    assert m, _tail(out, err)
    assert json.loads(m.group(1)) == {"2.0.0": 1, "1.1.0": 2}


# ----------------------------------------------------------------------------------------------- 5

def test_revert_on_failure_fleet_puts_every_host_upgraded_in_this_run_back(fleet, env):
    before = {t: _status(fleet, t) for t in TARGETS}
    assert [before[t]["running"] for t in TARGETS] == ["2.0.0", "1.1.0", "1.1.0"]
    fleet.run("target3", ["touch", "/opt/fail-here"])
    try:
        rc, out, err, recap = _deploy(fleet, env, "4.0.0", label="deploy 4.0.0 revert=fleet (fails on target3)",
                                      args=["-v"], hotswap_serial=[1, 2], hotswap_revert_on_failure="fleet",
                                      hotswap_health_check="cmd:/usr/bin/test ! -e /opt/fail-here",
                                      hotswap_health_timeout=10)
    finally:
        fleet.run("target3", ["rm", "-f", "/opt/fail-here"])
    assert rc != 0, _tail(out, err)
    # target1 (batch 1) and target2 (batch 2) were upgraded by this run before target3 failed
    assert _outcome(out, "target1").startswith("2.0.0 -> 4.0.0: hot"), _tail(out, err)
    assert _outcome(out, "target2").startswith("1.1.0 -> 4.0.0: cold"), _tail(out, err)
    assert re.search(r"target3: 1\.1\.0 -> 4\.0\.0: cold [^\n]*failed", out), _tail(out, err)
    assert recap["target3"]["failed"] >= 1, recap
    reverts = [r for r in task_results(out) if r["task"] and "Revert the hosts this run already upgraded" in r["task"]]
    assert reverts and reverts[-1]["status"] in ("changed", "ok"), _tail(out, err)
    for t in TARGETS:
        st = _assert_on(fleet, t, before[t]["running"])
        assert "4.0.0" not in (st["running"], st["permanent"])
    assert _status(fleet, "target1")["os_pid"] == before["target1"]["os_pid"]   # reverted hot, over the down edge


# ----------------------------------------------------------------------------------------------- 6

@pytest.fixture(scope="module")
def http_server(fleet, env):
    """python3 -m http.server in build1's namespaces serving build1:/opt/www; killed by its PID."""
    www = fleet.opt_dir("build1") / "www"
    www.mkdir(parents=True, exist_ok=True)
    log = open(env["tmp"] / "http.log", "w")
    addr = fleet.host("build1").address
    proc = subprocess.Popen(["nsenter", "-t", str(fleet.pids[fleet.host("build1").name]), "-n", "-m", "-u", "--",
                             "python3", "-m", "http.server", str(HTTP_PORT), "--bind", addr, "--directory", "/opt/www"],
                            stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    try:
        for _ign in range(100):
            try:
                fleet.connect("build1", HTTP_PORT).close()
                break
            except OSError:
                time.sleep(0.1)
        else:
            raise RuntimeError("http.server on build1 did not come up")
        yield {"url": "http://%s:%d" % (addr, HTTP_PORT), "www": www, "log": env["tmp"] / "http.log"}
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        log.close()


def _gets(log_path, addr, since=0):
    """Paths the host at addr GET from the server (log from byte offset `since`)."""
    with open(log_path) as f:
        f.seek(since)
        return re.findall(r'^%s - - \[[^\]]*\] "GET (\S+) HTTP' % re.escape(addr), f.read(), re.M)


def test_pull_mode_refuses_a_missing_or_tampered_file_and_changes_nothing(fleet, env, http_server):
    before = _snapshot(fleet)
    # nothing published under that URL yet: HTTP 404 on the canary
    rc, out, err, recap = _deploy(fleet, env, "5.0.0", label="deploy 5.0.0 pull (404)",
                                  hotswap_artifact_url=http_server["url"] + "/good")
    assert rc != 0
    assert re.search(r"pulling http://\S+/good/sample/5\.0\.0/\S+ failed \(HTTP 404", out), _tail(out, err)
    assert _diff(before, _snapshot(fleet)) == {}
    # publish: a faithful copy under good/, one with one byte changed in each package under bad/
    src = env["tmp"] / "artifacts" / "sample" / "5.0.0"
    assert any(src.glob("*.tar.gz")), list(src.iterdir())
    for kind in ("good", "bad"):
        dst = http_server["www"] / kind / "sample" / "5.0.0"
        shutil.rmtree(dst, ignore_errors=True)
        shutil.copytree(src, dst)
    for p in (http_server["www"] / "bad" / "sample" / "5.0.0").glob("*.tar.gz"):
        data = bytearray(p.read_bytes())
        data[len(data) // 2] ^= 0x01
        p.write_bytes(bytes(data))
    rc, out, err, recap = _deploy(fleet, env, "5.0.0", label="deploy 5.0.0 pull (tampered)",
                                  hotswap_artifact_url=http_server["url"] + "/bad")
    assert rc != 0
    assert "target1" in out
    assert re.search(r"/bad/sample/5\.0\.0/\S+ does not match its sha256 in the manifest [^\n]*refused, nothing "
                     r"changed", out), _tail(out, err)
    assert _diff(before, _snapshot(fleet)) == {}
    assert not glob.glob(str(fleet.opt_dir("target1")) + "/.hotswap/rollout/*.part")


def test_pull_mode_hosts_fetch_only_what_they_need(fleet, env, http_server):
    ev = env["extra"]("5.0.0", hotswap_artifact_url=http_server["url"] + "/good")
    since = os.path.getsize(http_server["log"])
    rc, out, err, recap = _play(fleet, DEPLOY, ev, "deploy 5.0.0 pull (good, -v)", args=["-v"])
    assert rc == 0, _tail(out, err)
    manifest = json.loads((env["tmp"] / "artifacts" / "sample" / "5.0.0" / "manifest.json").read_text())
    results = {r["host"]: r["result"] for r in task_results(out)
               if r["task"] and "Deploy or roll back" in r["task"] and r["result"]}
    assert set(results) == set(TARGETS), list(results)
    for t in TARGETS:
        res = results[t]
        assert "uploaded" not in res, res                          # the controller pushed nothing
        want = manifest["artifacts"][res["plan"]["package"]]["file"]
        assert res["pulled"] == want, res
        assert _gets(http_server["log"], fleet.host(t).address, since) == ["/good/sample/5.0.0/" + want]
        _assert_on(fleet, t, "5.0.0")
    assert results["target1"]["plan"]["action"] == "hot" and results["target1"]["plan"]["package"] == "upgrade"
    for t in ("target2", "target3"):
        assert results[t]["plan"]["action"] == "cold" and results[t]["plan"]["package"] == "release"
    # again: nothing to do, nothing fetched
    rc, out, err, recap = _play(fleet, DEPLOY, ev, "deploy 5.0.0 pull (rerun)")
    assert rc == 0, _tail(out, err)
    assert all(recap[t]["changed"] == 0 for t in TARGETS), recap
    for t in TARGETS:
        assert len(_gets(http_server["log"], fleet.host(t).address, since)) == 1


# ----------------------------------------------------------------------------------------------- 7

def test_a_plan_made_from_stale_facts_is_refused_by_the_agent_and_made_again_by_the_module(fleet, env):
    """Facts are read, then someone else moves the host: the agent refuses the controller's plan
    (--expect-state), nothing happens on that plan, and the module plans again from the host itself."""
    _assert_on(fleet, "target1", "5.0.0")
    manifest = json.loads((env["tmp"] / "artifacts" / "sample" / "5.0.0" / "manifest.json").read_text())
    journal_before = fleet.run("target1", ["wc", "-l", agent_dir(ROOT) + "/journal.jsonl"]).stdout.split()[0]
    play = env["tmp"] / "stale.yml"
    play.write_text(json.dumps([{
        "hosts": "target1", "gather_facts": False,
        "roles": [{"role": "beam.hotswap.agent"}],
        "tasks": [
            {"name": "Another operator rolls the host back meanwhile",
             "ansible.builtin.command": {"argv": AGENT + ["--user", "sample", "rollback", "--version", "2.0.0",
                                                          "--mode", "hot"]},
             "changed_when": True},
            {"name": "Roll back to 2.0.0, planned from the stale facts",
             "beam.hotswap.release": {"app": "sample", "root": ROOT, "user": "sample", "state": "rolled_back",
                                      "version": "2.0.0", "service_manager": "daemon"}},
            {"name": "Deploy 5.0.0, planned from the stale facts",
             "beam.hotswap.release": {"app": "sample", "root": ROOT, "user": "sample", "manifest": manifest,
                                      "service_manager": "daemon",
                                      "artifact_dir": str(env["tmp"] / "artifacts")}},
        ]}]))
    rc, out, err, recap = _play(fleet, str(play), env["common"](), "stale facts (-v)", args=["-v"])
    assert rc == 0, _tail(out, err)
    back = task_result(out, "Roll back to 2.0.0, planned", "target1")["result"]
    fwd = task_result(out, "Deploy 5.0.0, planned", "target1")["result"]
    # the facts said 5.0.0 (the controller planned 5.0.0 -> 2.0.0 hot); the plan that ran starts from 2.0.0,
    # what the host really ran: made again on the host, and there was nothing to do
    assert back["changed"] is False and back["plan"]["action"] == "noop", back
    assert back["plan"]["from"] == "2.0.0", back
    # the facts said 5.0.0 (the controller planned nothing); the host ran 2.0.0: a hot upgrade after all
    assert fwd["changed"] is True and fwd["plan"]["action"] == "hot" and fwd["plan"]["from"] == "2.0.0", fwd
    _assert_on(fleet, "target1", "5.0.0")
    # the refused plans left no trace in the journal: only the operator's rollback and the upgrade
    lines = fleet.run("target1", ["tail", "-n", "+%d" % (int(journal_before) + 1),
                                  agent_dir(ROOT) + "/journal.jsonl"]).stdout.splitlines()
    assert [json.loads(x)["op"] for x in lines] == ["rollback", "hot"], lines
