"""Fleet-level reliability: faults and bad input through the playbooks, and the security rows of
docs/operations.md, on the real fleet.

One fleet, one release root (/opt/rel, SAMPLE_PORT 4060, store /opt/rel-store), one progression:
first install of v1 with a secret cookie -> file modes / run user -> bad input (nothing changes) ->
build failing halfway -> an old agent on a host -> link cut mid-rollout to v2 (rerun converges) ->
two concurrent deploys of v3 -> build host gone, rollback still works.

The tests of this module depend on each other's order (like test_deploy_fleet.py).
"""
import hashlib
import json
import os
import pwd
import re
import stat
import subprocess
import threading
import time

import pytest

from hotswap_testlib import sample
from hotswap_testlib.ansible_run import ANSIBLE_PLAYBOOK, ansible_env, parse_recap, run_playbook
from hotswap_testlib.layout import agent_dir, agent_cmd

pytestmark = [pytest.mark.integration, pytest.mark.fleet]

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEPLOY = os.path.join(REPO, "playbooks", "deploy.yml")
ROLLBACK = os.path.join(REPO, "playbooks", "rollback.yml")
STATUS = os.path.join(REPO, "playbooks", "status.yml")
APP = "sample"
ROOT = "/opt/rel"
STORE = "/opt/rel-store"
PORT = 4060
COOKIE = "SECRETCOOKIE123"
TARGETS = ["target1", "target2", "target3"]
AGENT = agent_cmd(ROOT, APP)


@pytest.fixture(scope="module")
def env(fleet, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("reliability")
    srcs = {}
    for v in ("1.0.0", "2.0.0", "3.0.0"):
        srcs[v] = str(sample.materialise(tmp / ("src-" + v), v))
    broken = sample.materialise(tmp / "src-broken", "6.0.0")
    with open(broken / "lib" / "sample" / "counter.ex", "a") as f:
        f.write("\ndefmodule Sample.Broken do\n  def oops(, do: :x\nend\n")
    srcs["broken"] = str(broken)

    def extra(version, **kw):
        e = {
            "hotswap_app": APP,
            "hotswap_root": ROOT,
            "hotswap_source": srcs[version],
            "hotswap_build_store": STORE,
            "hotswap_artifact_dir": str(tmp / "artifacts"),
            "hotswap_report_dir": str(tmp / "reports"),
            # its own node name: other suites' nodes run on the same hosts in the same session
            "hotswap_env": {"SAMPLE_PORT": str(PORT), "SAMPLE_GREETING": "hello-rel", "RELEASE_NODE": "rel"},
            "hotswap_service_manager": "daemon",
            "hotswap_cookie": COOKIE,
            "hotswap_health_timeout": 60,
        }
        e.update(kw)
        return e

    return {"tmp": tmp, "srcs": srcs, "extra": extra, "timings": {}}


# --------------------------------------------------------------------------- helpers

def _client(fleet, host):
    return sample.SampleClient(fleet.host(host).address, PORT)


def _host_path(fleet, host, path):
    assert path.startswith("/opt/")
    return str(fleet.opt_dir(host)) + path[len("/opt"):]


def _root_digest(fleet, host, root=ROOT):
    """Checksums (and modes) of every file under a root, read from the controller side.  ``tmp/`` is the
    running node's scratch (run_erl logs) and changes by itself, so it is left out."""
    base = _host_path(fleet, host, root)
    h = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(base):
        if dirpath == base:
            dirnames[:] = [d for d in dirnames if d != "tmp"]
        dirnames.sort()
        for fn in sorted(filenames):
            p = os.path.join(dirpath, fn)
            if os.path.islink(p) or not os.path.isfile(p):
                continue
            st = os.stat(p)
            h.update(os.path.relpath(p, base).encode() + b"\0" + oct(st.st_mode).encode())
            with open(p, "rb") as f:
                h.update(hashlib.sha256(f.read()).digest())
    return h.hexdigest()


def _digests(fleet):
    return {t: _root_digest(fleet, t) for t in TARGETS}


def _deploy(fleet, env, version, check=False, args=(), **kw):
    t0 = time.monotonic()
    rc, out, err = run_playbook(fleet, DEPLOY, env["extra"](version, **kw), check=check, args=args, timeout=1500)
    return rc, out, err, parse_recap(out), time.monotonic() - t0


def _agent_status(fleet, host):
    r = fleet.run(host, AGENT + ["status"], check=False, timeout=120)
    return json.loads(r.stdout)


def _healthy_permanent(fleet, host, versions):
    """The host runs one of ``versions``, that release is permanent, and the node answers it."""
    st = _agent_status(fleet, host)
    assert st["node_up"], (host, st)
    assert st["running"] == st["permanent"], (host, st)
    assert st["running"] in versions, (host, st)
    assert sample.wait_ping(fleet.host(host).address, PORT, timeout=30)
    assert _client(fleet, host).vsn() == st["running"], (host, st)
    return st


def _no_traceback(out, err):
    assert "Traceback" not in out + err, (out + err)[-4000:]


def _failed_msgs(out):
    """The text of every fatal/failed result (to check the message names what is wrong)."""
    return "\n".join(line for line in out.splitlines() if "fatal:" in line or "FAILED!" in line or '"msg"' in line)


# --------------------------------------------------------------------------- security: first install

def test_first_install_with_a_cookie_never_prints_or_journals_it(fleet, env):
    rc, out, err, recap, secs = _deploy(fleet, env, "1.0.0", args=["-vvv"])
    env["timings"]["first install v1 (-vvv)"] = secs
    assert rc == 0, out[-5000:] + err[-2000:]
    for t in TARGETS:
        _healthy_permanent(fleet, t, {"1.0.0"})
        assert _client(fleet, t).config() == "hello-rel"
    # the node really uses the cookie (releases/COOKIE) ...
    for t in TARGETS:
        with open(_host_path(fleet, t, ROOT + "/releases/COOKIE")) as f:
            assert f.read().strip() == COOKIE
    # ... and it is nowhere in the output, the journals, the reports or the controller artifacts
    assert COOKIE not in out and COOKIE not in err
    places = []
    for t in TARGETS:
        places.append(_host_path(fleet, t, agent_dir(ROOT) + "/journal.jsonl"))
    for sub in ("reports", "artifacts"):
        for dirpath, _d, files in os.walk(env["tmp"] / sub):
            places += [os.path.join(dirpath, f) for f in files]
    assert any(p.endswith(".json") and "reports" in p for p in places), places
    for p in places:
        with open(p, "rb") as f:
            assert COOKIE.encode() not in f.read(), p
    # the same with -v on a rerun (no-op): still absent
    rc, out, err, recap, _ign = _deploy(fleet, env, "1.0.0", args=["-v"])
    assert rc == 0, out[-3000:]
    assert all(recap[h]["changed"] == 0 for h in recap), recap
    assert COOKIE not in out + err


def _check(path, owner, mode, rows, what):
    st = os.lstat(path)
    got_owner = pwd.getpwuid(st.st_uid).pw_name
    got_mode = stat.S_IMODE(st.st_mode)
    if (got_owner, got_mode) != (owner, mode):
        rows.append("%s: %s %s %04o, docs/operations.md says %s %04o"
                    % (what, path, got_owner, got_mode, owner, mode))


def test_files_on_hosts_have_the_owner_and_mode_of_operations_md(fleet, env):
    mismatches = []
    for t in TARGETS:
        def p(rel, t=t):
            return _host_path(fleet, t, ROOT + rel)
        _check(p(""), APP, 0o750, mismatches, t + " ROOT/")
        _check(p("/releases/RELEASES"), APP, 0o644, mismatches, t + " releases/RELEASES")
        _check(p("/releases/start_erl.data"), APP, 0o644, mismatches, t + " releases/start_erl.data")
        _check(p("/releases/COOKIE"), APP, 0o400, mismatches, t + " releases/COOKIE")

        def a(rel, t=t):
            return _host_path(fleet, t, agent_dir(ROOT) + rel)
        _check(a("/.."), "root", 0o711, mismatches, t + " PARENT/.hotswap/")
        _check(a(""), "root", 0o711, mismatches, t + " PARENT/.hotswap/NAME/")
        _check(a("/agent.py"), "root", 0o700, mismatches, t + " agent.py")
        _check(a("/node.erl"), "root", 0o600, mismatches, t + " node.erl")
        _check(a("/env"), "root", 0o600, mismatches, t + " env")
        _check(a("/cookie"), "root", 0o400, mismatches, t + " cookie")
        _check(a("/.erlang.cookie"), APP, 0o400, mismatches, t + " .erlang.cookie")
        _check(a("/packages"), "root", 0o700, mismatches, t + " packages/")
        for f in sorted(os.listdir(a("/packages"))):
            _check(os.path.join(a("/packages"), f), "root", 0o600, mismatches, t + " packages/" + f)
        assert not os.path.lexists(p("/.hotswap")), t + ": the agent's state is inside the node user's tree"
    assert not mismatches, "\n".join(mismatches)


def test_agent_written_journal_and_lock_are_0600_as_operations_md_says(fleet, env):
    mismatches = []
    for t in TARGETS:
        _check(_host_path(fleet, t, agent_dir(ROOT) + "/journal.jsonl"), "root", 0o600, mismatches,
               t + " .hotswap/journal.jsonl")
        _check(_host_path(fleet, t, agent_dir(ROOT) + "/lock"), "root", 0o600, mismatches, t + " .hotswap/lock")
    assert not mismatches, "\n".join(mismatches)


def test_the_node_runs_as_hotswap_user_not_root(fleet, env):
    uid = pwd.getpwnam(APP).pw_uid
    assert uid != 0
    for t in TARGETS:
        pid = _agent_status(fleet, t)["os_pid"]
        assert pid
        with open("/proc/%d/status" % pid) as f:
            uids = re.search(r"^Uid:\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)", f.read(), re.M).groups()
        assert {int(u) for u in uids} == {uid}, (t, pid, uids)


# --------------------------------------------------------------------------- bad input

BAD_INPUTS = [
    ("mode-warm", dict(hotswap_mode="warm"), ["hotswap_mode", "warm"]),
    ("root-slash", dict(hotswap_root="/"), ["hotswap_root"]),
    ("root-relative", dict(hotswap_root="opt/rel"), ["hotswap_root", "opt/rel"]),
    ("no-such-group", dict(hotswap_target_hosts="nosuchgroup"), ["nosuchgroup", "matches no host"]),
    ("version-shell", dict(hotswap_version="1.0;rm -rf /"), ["hotswap_version", "1.0;rm -rf /"]),
    ("version-path", dict(hotswap_version="../1.0"), ["hotswap_version", "../1.0"]),
    ("version-slash", dict(hotswap_version="1.0/x"), ["hotswap_version"]),
]


@pytest.mark.bad_input
@pytest.mark.parametrize("name,kw,needles", BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_input_fails_on_the_controller_and_changes_nothing(fleet, env, name, kw, needles):
    before = _digests(fleet)
    store_before = _root_digest(fleet, "build1", STORE)
    rc, out, err, recap, secs = _deploy(fleet, env, "1.0.0", **kw)
    assert rc != 0, out[-3000:]
    _no_traceback(out, err)
    msgs = _failed_msgs(out)
    for n in needles:
        assert n in msgs, (n, msgs[-3000:])
    assert "nothing was changed" in msgs.lower(), msgs[-3000:]
    for t in TARGETS:                                    # no host was even contacted
        assert t not in recap or recap[t]["changed"] == 0, recap
    assert _digests(fleet) == before
    assert _root_digest(fleet, "build1", STORE) == store_before


@pytest.mark.bad_input
def test_app_that_is_not_the_releases_name_fails_the_build_naming_it(fleet, env):
    before = _digests(fleet)
    rc, out, err, recap, secs = _deploy(fleet, env, "1.0.0", hotswap_app="nosuch")
    assert rc != 0, out[-3000:]
    _no_traceback(out, err)
    msgs = _failed_msgs(out)
    assert "nosuch" in msgs and "hotswap_app" in msgs, msgs[-3000:]
    for t in TARGETS:
        assert recap.get(t, {}).get("changed", 0) == 0, recap
    assert _digests(fleet) == before
    for t in TARGETS:
        _healthy_permanent(fleet, t, {"1.0.0"})


def _release_play(env, file_name, task_name, manifest_var):
    """A one-task playbook: beam.hotswap.release on target1 with the manifest in extra var ``manifest_var``."""
    play = env["tmp"] / file_name
    play.write_text(
        "- hosts: target1\n"
        "  gather_facts: false\n"
        "  tasks:\n"
        "    - name: %s\n"
        "      beam.hotswap.release:\n"
        "        app: %s\n"
        "        root: %s\n"
        "        manifest: \"{{ %s }}\"\n"
        "        service_manager: daemon\n"
        "        artifact_dir: %s\n" % (task_name, APP, ROOT, manifest_var, env["tmp"] / "artifacts"))
    return play


BAD_MANIFESTS = [
    ("missing-fields", {"schema": 1, "app": APP}),
    ("no-artifacts", {"schema": 1, "app": APP, "version": "9.0.0", "edges": []}),
    ("bad-version", {"schema": 1, "app": APP, "version": "../9", "artifacts": {}, "edges": []}),
    ("edge-not-a-dict", {"schema": 1, "app": APP, "version": "9.0.0", "artifacts": {}, "edges": ["nonsense"]}),
]


@pytest.mark.bad_input
@pytest.mark.parametrize("name,manifest", BAD_MANIFESTS, ids=[b[0] for b in BAD_MANIFESTS])
def test_unusable_manifest_is_refused_by_the_release_module(fleet, env, name, manifest):
    play = _release_play(env, "manifest-%s.yml" % name, "Deploy from a broken manifest", "bad_manifest")
    before = _digests(fleet)
    rc, out, err = run_playbook(fleet, str(play), {"bad_manifest": manifest}, args=["-vvv"], timeout=600)
    assert rc != 0, out[-3000:]
    _no_traceback(out, err)
    assert "manifest" in _failed_msgs(out) and "not usable" in out, out[-3000:]
    assert _digests(fleet) == before


@pytest.mark.bad_input
def test_package_built_for_another_os_fingerprint_is_refused(fleet, env):
    """A real, published manifest whose build-host fingerprint says another glibc: refused before any change."""
    man_path = next(iter(sorted((env["tmp"] / "artifacts" / APP).glob("*/manifest.json"))))
    manifest = json.loads(man_path.read_text())
    manifest["os"] = dict(manifest["os"], glibc="2.17-elsewhere")
    play = _release_play(env, "manifest-other-os.yml", "Deploy a package built for another OS", "foreign_manifest")
    before = _digests(fleet)
    rc, out, err = run_playbook(fleet, str(play), {"foreign_manifest": manifest}, timeout=600)
    assert rc != 0, out[-3000:]
    _no_traceback(out, err)
    msgs = _failed_msgs(out)
    assert "built for another OS" in msgs and "glibc 2.17-elsewhere" in msgs, msgs[-3000:]
    assert _digests(fleet) == before


# --------------------------------------------------------------------------- fault 7a: the build fails halfway

@pytest.mark.fault
def test_build_failing_halfway_touches_no_target(fleet, env):
    before = _digests(fleet)
    rc, out, err, recap, secs = _deploy(fleet, env, "broken")
    env["timings"]["failing build"] = secs
    assert rc != 0, out[-3000:]
    _no_traceback(out, err)
    assert "counter.ex" in out, out[-4000:]
    assert recap.get("build1", {}).get("failed", 0) >= 1, recap
    for t in TARGETS:
        assert recap.get(t, {}).get("changed", 0) == 0, recap
    assert _digests(fleet) == before
    for t in TARGETS:
        _healthy_permanent(fleet, t, {"1.0.0"})


# --------------------------------------------------------------------------- fault 9: an old agent on a host

@pytest.mark.fault
def test_old_agent_is_refused_by_status_and_reinstalled_by_deploy(fleet, env):
    path = _host_path(fleet, "target1", agent_dir(ROOT) + "/agent.py")
    with open(path) as f:
        src = f.read()
    old = re.sub(r'^AGENT_VERSION = "[^"]*"', 'AGENT_VERSION = "0.9.0"', src, count=1, flags=re.M)
    assert old != src
    with open(path, "w") as f:
        f.write(old)
    rc, out, err = run_playbook(fleet, STATUS, {"hotswap_app": APP, "hotswap_root": ROOT}, timeout=600)
    assert rc != 0, out[-3000:]
    _no_traceback(out, err)
    msgs = _failed_msgs(out)
    assert "target1" in msgs and "0.9.0" in msgs and "beam.hotswap.agent" in msgs and "re-run" in msgs, msgs
    rc, out, err, recap, secs = _deploy(fleet, env, "1.0.0")
    env["timings"]["deploy reinstalling an old agent"] = secs
    assert rc == 0, out[-4000:] + err[-2000:]
    assert recap["target1"]["changed"] >= 1, recap        # the agent was reinstalled ...
    for t in ("target2", "target3"):
        assert recap[t]["changed"] == 0, recap
    with open(path) as f:
        assert f.read() == src
    assert _agent_status(fleet, "target1")["agent_version"] != "0.9.0"
    rc, out, err = run_playbook(fleet, STATUS, {"hotswap_app": APP, "hotswap_root": ROOT}, timeout=600)
    assert rc == 0, out[-3000:]
    rc, out, err, recap, _ign = _deploy(fleet, env, "1.0.0")  # ... and the same deploy now converges
    assert rc == 0 and all(recap[h]["changed"] == 0 for h in recap), recap


# --------------------------------------------------------------------------- fault 4: a link cut mid-rollout

@pytest.mark.fault
def test_link_cut_mid_rollout_stops_it_and_the_rerun_converges(fleet, env):
    base = {}
    for t in TARGETS:
        c = _client(fleet, t)
        c.add(3)
        base[t] = c.get()
    loads = {t: sample.LoadClient(fleet.host(t).address, PORT, interval=0.005, max_duration=1200)
             for t in ("target1", "target3")}
    for ld in loads.values():
        ld.start()
    cut = threading.Event()
    stop = threading.Event()

    def watch():
        while not stop.is_set():
            try:
                if _client(fleet, "target1").vsn() == "2.0.0":
                    fleet.cut_link("target2")
                    cut.set()
                    return
            except OSError:
                pass
            time.sleep(0.05)

    th = threading.Thread(target=watch, daemon=True)
    th.start()
    try:
        rc, out, err, recap, secs = _deploy(fleet, env, "2.0.0")
    finally:
        stop.set()
        th.join(10)
        stats = {t: ld.stop() for t, ld in loads.items()}
        if cut.is_set():
            fleet.restore_link("target2")
    env["timings"]["deploy v2 with target2 cut"] = secs
    assert cut.is_set(), "target1 never answered 2.0.0: " + out[-3000:]
    assert rc != 0, out[-3000:]
    _no_traceback(out, err)
    r2 = recap.get("target2", {})
    assert r2.get("unreachable", 0) + r2.get("failed", 0) >= 1, recap
    assert "target2" in _failed_msgs(out) and ("UNREACHABLE" in out or "unreachable" in out.lower()), out[-3000:]
    assert recap.get("target3", {}).get("changed", 0) == 0, recap       # the rollout stopped
    # every host is on the old or the new release, healthy and permanent; no acknowledged write lost
    _healthy_permanent(fleet, "target1", {"2.0.0"})
    _healthy_permanent(fleet, "target2", {"1.0.0", "2.0.0"})
    _healthy_permanent(fleet, "target3", {"1.0.0"})
    for t, s in stats.items():
        assert s["failed"] == 0, (t, s)
        assert _client(fleet, t).get() == base[t] + s["acked"], (t, s)
    # the same deploy, rerun, converges: changed only where needed
    rc, out, err, recap, secs = _deploy(fleet, env, "2.0.0")
    env["timings"]["rerun of deploy v2"] = secs
    assert rc == 0, out[-4000:] + err[-2000:]
    assert recap["target1"]["changed"] == 0, recap
    assert recap["target3"]["changed"] >= 1, recap
    for t in TARGETS:
        _healthy_permanent(fleet, t, {"2.0.0"})
    assert _client(fleet, "target3").get() >= base["target3"]


# --------------------------------------------------------------------------- fault 6: two deploys at once

def _lock_holder(fleet, host):
    """The pid written in the lock file when that process is alive (pids are global: no pid namespaces)."""
    try:
        with open(_host_path(fleet, host, agent_dir(ROOT) + "/lock")) as f:
            pid = json.loads(f.read() or "{}").get("pid")
    except (OSError, ValueError):
        return None
    return pid if pid and os.path.exists("/proc/%d" % pid) else None


GATE = "/opt/rel-gate/go"


def _open_gates(fleet):
    for t in TARGETS:
        path = _host_path(fleet, t, GATE)
        os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
        with open(path, "w") as f:
            f.write("go\n")


@pytest.mark.fault
def test_a_second_deploy_while_one_runs_fails_fast_on_the_lock(fleet, env):
    """The first deploy's health check (``cmd:/usr/bin/test -e /opt/rel-gate/go``, retried by the agent every
    0.5 s) holds each host's agent lock until the test opens the gate, after the second deploy has ended.
    (A slow check such as ``cmd:/bin/sleep 8`` cannot be used: the agent gives each cmd attempt at most 5 s.)"""
    for t in TARGETS:
        path = _host_path(fleet, t, GATE)
        if os.path.exists(path):
            os.unlink(path)
    vars1 = env["extra"]("3.0.0", hotswap_health_check="cmd:/usr/bin/test -e " + GATE, hotswap_health_timeout=600,
                         hotswap_serial=["100%"])
    vf = env["tmp"] / "vars-first.json"
    vf.write_text(json.dumps(vars1))
    log = open(env["tmp"] / "first-deploy.log", "w+")
    t0 = time.monotonic()
    first = subprocess.Popen([str(ANSIBLE_PLAYBOOK), "-i", str(fleet.inventory_path), DEPLOY, "-e", "@" + str(vf)],
                             env=ansible_env(fleet), stdout=log, stderr=subprocess.STDOUT,
                             stdin=subprocess.DEVNULL, cwd=REPO, text=True)
    try:
        holder = None
        deadline = time.monotonic() + 900
        while time.monotonic() < deadline and first.poll() is None:
            holder = _lock_holder(fleet, "target1")
            if holder:
                break
            time.sleep(0.2)
        assert holder, "the first deploy never took target1's lock"
        rc2, out2, err2, recap2, secs2 = _deploy(fleet, env, "3.0.0")
        still_held = _lock_holder(fleet, "target1") == holder
        _open_gates(fleet)
        rc1 = first.wait(timeout=900)
    finally:
        _open_gates(fleet)
        if first.poll() is None:
            first.kill()
            first.wait()
    log.seek(0)
    out1 = log.read()
    log.close()
    env["timings"]["first deploy (gated health check)"] = time.monotonic() - t0
    env["timings"]["second deploy (refused)"] = secs2
    assert still_held, "the first deploy let go of the lock before the second ended"
    assert rc1 == 0, out1[-5000:]
    assert rc2 != 0, out2[-5000:]
    _no_traceback(out2, err2)
    msgs = _failed_msgs(out2)
    assert "target1" in msgs and "another agent holds" in msgs and ("pid %d" % holder) in msgs, msgs[-3000:]
    for t in ("target2", "target3"):                      # the second stopped at its canary
        assert recap2.get(t, {}).get("changed", 0) == 0, recap2
    for t in TARGETS:
        _healthy_permanent(fleet, t, {"3.0.0"})
    rc, out, err, recap, _ign = _deploy(fleet, env, "3.0.0")
    assert rc == 0 and all(recap[h]["changed"] == 0 for h in recap), (recap, out[-3000:])


# --------------------------------------------------------------------------- fault 7b: the build host disappears

@pytest.mark.fault
def test_rollback_works_without_the_build_host(fleet, env):
    expect = {t: _agent_status(fleet, t)["previous"] for t in TARGETS}
    assert all(expect.values()), expect
    fleet.cut_link("build1")
    try:
        rc, out, err = run_playbook(fleet, ROLLBACK, {"hotswap_app": APP, "hotswap_root": ROOT,
                                                      "hotswap_service_manager": "daemon",
                                                      "hotswap_report_dir": str(env["tmp"] / "reports")},
                                    timeout=1200)
    finally:
        fleet.restore_link("build1")
    assert rc == 0, out[-5000:] + err[-2000:]
    _no_traceback(out, err)
    assert "build1" not in parse_recap(out)
    for t in TARGETS:
        _healthy_permanent(fleet, t, {expect[t]})


def test_report_timings(env):
    print("\nreliability timings: " + ", ".join("%s %.0fs" % kv for kv in env["timings"].items()))
