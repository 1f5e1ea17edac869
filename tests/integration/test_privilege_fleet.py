"""Privilege separation on the fleet (issue 15): every way the app's unprivileged user, or a crafted package,
could become root or read the cookie is performed for real on the test fleet, then the normal playbooks run
and the OUTCOME is checked (a planted program never recorded uid 0, decoys untouched, secrets in no argv,
nothing outside the release root written); plus two acceptance tests: a host installed by the previous
release of the collection (cbeff31, state in ROOT/.hotswap) upgrades hot to the new layout with its state, and
the file table of docs/operations.md matches the fleet.

One fleet (target1, target2: release root /opt/priv, node hsppriv on port 4140; target3: the migration and
first-install attacks; the controller itself for ansible_connection=local).  The tests of this module depend
on each other's order; destructive ones come last and put back what they broke.
"""
import fcntl
import glob
import hashlib
import json
import os
import pwd
import re
import secrets
import shutil
import signal
import stat
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from hotswap_testlib import attacks, sample
from hotswap_testlib.ansible_run import ANSIBLE_PLAYBOOK, ansible_env, parse_recap, run_playbook
from hotswap_testlib.layout import agent_cmd, agent_dir

pytestmark = [pytest.mark.integration, pytest.mark.fleet]

REPO = Path(__file__).resolve().parents[2]
DEPLOY = str(REPO / "playbooks" / "deploy.yml")
ROLLBACK = str(REPO / "playbooks" / "rollback.yml")
STATUS = str(REPO / "playbooks" / "status.yml")
APP = "sample"
USER = "sample"                     # hotswap_user (the default: the app's name)
ROOT = "/opt/priv"
STATE = agent_dir(ROOT)             # /opt/.hotswap/priv
STORE = "/opt/priv-store"
PORT = 4140                         # ports 4140-4149 belong to this module
HTTP_PORT = 4141
NODE = "hsppriv"
TARGETS = ["target1", "target2"]
PATTERN = "target1:target2"
AGENT = agent_cmd(ROOT, APP)
REC = "/opt/hsp-rec"                # 1777, root's: where planted programs record `id -u`
OLD_COMMIT = "cbeff31"
MIG_ROOT, MIG_PORT, MIG_NODE = "/opt/mig", 4143, "hspmig"
P3_ROOT, P3_PORT, P3_NODE = "/opt/priv3", 4142, "hspp3"
MIG2_ROOT, MIG2_PORT, MIG2_NODE = "/opt/mig2", 4144, "hspmig2"
LOCAL_PORT, LOCAL_NODE = 4149, "hsplocal"
NODE_NAMES = (NODE, MIG_NODE, P3_NODE, LOCAL_NODE, MIG2_NODE)


# --------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def env(fleet, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("privilege")
    os.chmod(tmp, 0o700)
    srcs = {v: str(sample.materialise(tmp / ("src-" + v), v)) for v in ("1.0.0", "2.0.0")}
    cookie = "HSPCOOKIE" + secrets.token_hex(8)
    token = "HSPTOKEN" + secrets.token_hex(8)
    watch = attacks.ArgvWatch(node_names=NODE_NAMES)
    watch.add(cookie, "cookie")
    watch.add(token, "health-token")
    watch.start()
    for t in ("target1", "target2", "target3"):
        rec = _host_path(fleet, t, REC)
        os.makedirs(rec, exist_ok=True)
        os.chmod(rec, 0o1777)

    def extra(version, **kw):
        e = {
            "hotswap_app": APP,
            "hotswap_root": ROOT,
            "hotswap_source": srcs[version],
            "hotswap_build_store": STORE,
            "hotswap_artifact_dir": str(tmp / "artifacts"),
            "hotswap_report_dir": str(tmp / "reports"),
            "hotswap_env": {"SAMPLE_PORT": str(PORT), "RELEASE_NODE": NODE},
            "hotswap_service_manager": "daemon",
            "hotswap_cookie": cookie,
            "hotswap_health_timeout": 60,
            "hotswap_target_hosts": PATTERN,
            "hotswap_serial": ["100%"],
            "hotswap_settle_seconds": 1,
        }
        e.update(kw)
        return e

    e = {"tmp": tmp, "srcs": srcs, "extra": extra, "cookie": cookie, "token": token, "watch": watch,
         "timings": {}, "saved": {}}
    try:
        yield e
    finally:
        watch.stop()
        print("\nprivilege timings: " + ", ".join("%s %.0fs" % kv for kv in e["timings"].items()))


# --------------------------------------------------------------------------- helpers

def _host_path(fleet, host, path):
    assert path.startswith("/opt/") or path == "/opt", path
    return str(fleet.opt_dir(host)) + path[len("/opt"):]


def _tail(out, err="", n=4000):
    return (out[-n:] + "\n--- stderr ---\n" + err[-1500:]) if err else out[-n:]


def _play(fleet, env, playbook, extra, label, check=False, args=(), timeout=1500, run_env=None):
    t0 = time.monotonic()
    rc, out, err = run_playbook(fleet, playbook, extra, check=check, args=args, timeout=timeout, env=run_env)
    env["timings"][label] = time.monotonic() - t0
    return rc, out, err, parse_recap(out)


def _deploy(fleet, env, version, label, check=False, args=(), **kw):
    return _play(fleet, env, DEPLOY, env["extra"](version, **kw), label, check=check, args=args)


def _rollback(fleet, env, label, **kw):
    e = {"hotswap_app": APP, "hotswap_root": ROOT, "hotswap_service_manager": "daemon",
         "hotswap_target_hosts": PATTERN, "hotswap_serial": ["100%"], "hotswap_settle_seconds": 1,
         "hotswap_report_dir": str(env["tmp"] / "reports")}
    e.update(kw)
    return _play(fleet, env, ROLLBACK, e, label)


def _status_play(fleet, env, label, root=ROOT, pattern=PATTERN):
    return _play(fleet, env, STATUS, {"hotswap_app": APP, "hotswap_root": root, "hotswap_target_hosts": pattern},
                 label, timeout=600)


def _agent(fleet, host, args, root=ROOT, user=True, timeout=300, input=None):
    cmd = agent_cmd(root, APP) + (["--user", USER] if user else []) + list(args)
    r = fleet.run(host, cmd, check=False, timeout=timeout, input=input)
    try:
        out = json.loads(r.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        out = {"unparsed": r.stdout[-2000:], "stderr": r.stderr[-2000:]}
    return r.returncode, out


def _status(fleet, host, root=ROOT):
    return _agent(fleet, host, ["status"], root=root, user=False)[1]


def _client(fleet, host, port=PORT):
    return sample.SampleClient(fleet.host(host).address, port)


def _releases_file(fleet, host, root=ROOT):
    return _host_path(fleet, host, root + "/releases/RELEASES")


def _permanent(fleet, host, root=ROOT):
    with open(_releases_file(fleet, host, root)) as f:
        text = f.read()
    for chunk in text.split("{release,")[1:]:
        m = re.match(r'\s*"[^"]*",\s*"([^"]*)"', chunk)
        if m and re.search(r",\s*permanent\s*\}", chunk):
            return m.group(1)
    return None


def _journal(fleet, host, root=ROOT):
    p = _host_path(fleet, host, agent_dir(root) + "/journal.jsonl")
    try:
        with open(p) as f:
            return [json.loads(x) for x in f if x.strip()]
    except FileNotFoundError:
        return []


def _mode(path):
    st = os.lstat(path)
    return stat.S_IMODE(st.st_mode), st.st_uid


def _ensure_on(fleet, env, version, label):
    """Bring target1/target2 to ``version`` (permanent, running) when they are not already there."""
    sts = {t: _status(fleet, t) for t in TARGETS}
    if all(s.get("running") == version and s.get("permanent") == version and s.get("node_up") for s in sts.values()):
        return
    rc, out, err, recap = _deploy(fleet, env, version, label, hotswap_allow_downgrade=True)
    assert rc == 0, f"setup: could not bring {PATTERN} to {version}: " + _tail(out, err)


def _packages(fleet, host, version, kind):
    """Path (on the host) of the stored package of ``version``: kind 'upgrade' or 'full'."""
    d = _host_path(fleet, host, STATE + "/packages")
    names = sorted(os.listdir(d))
    for n in names:
        full = "full" in n
        if version in n and (full if kind == "full" else not full):
            return STATE + "/packages/" + n, n.split("-", 1)[0]
    raise AssertionError(f"setup: no {kind} package of {version} in {d}: {names}")


def _controller_artifact(env, version, kind):
    """(path, sha256) of the controller's copy of a package of ``version``."""
    d = env["tmp"] / "artifacts" / APP / version
    for p in sorted(d.iterdir()):
        if p.name.endswith(".tar.gz") and (("full" in p.name) == (kind == "full")):
            return p, hashlib.sha256(p.read_bytes()).hexdigest()
    raise AssertionError(f"setup: no {kind} artifact of {version} in {d}: {sorted(os.listdir(d))}")


def _place(fleet, host, src, dest):
    """Copy a controller file onto a host's /opt (root's, 0600)."""
    p = _host_path(fleet, host, dest)
    os.makedirs(os.path.dirname(p), mode=0o700, exist_ok=True)
    shutil.copyfile(src, p)
    os.chmod(p, 0o600)
    return dest


def _failed_msgs(out):
    return "\n".join(line for line in out.splitlines() if "fatal:" in line or "FAILED!" in line or '"msg"' in line)


def _kill_pid(pid):
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _lock_holder(fleet, host, root=ROOT):
    try:
        with open(_host_path(fleet, host, agent_dir(root) + "/lock")) as f:
            pid = json.loads(f.read() or "{}").get("pid")
    except (OSError, ValueError):
        return None
    return pid if pid and os.path.exists("/proc/%d" % pid) else None


def _opt_outside(fleet, host, *roots):
    """Snapshot of the host's /opt without the release roots and agent dirs named, and the record dir."""
    skip = [REC[len("/opt/"):]]
    for r in roots:
        skip += [r[len("/opt/"):], agent_dir(r)[len("/opt/"):]]
    return attacks.snapshot(fleet.opt_dir(host), skip=skip, contents=True)


# =========================================================================== 1. first install; cookie at rest (8)

def test_first_install_keeps_the_cookie_private(fleet, env):
    """Item 8 (at rest): the build store, the controller's artifact dir and their tarballs are private to
    root; releases/COOKIE is 0400 and the node user's after the first install."""
    rc, out, err, recap = _deploy(fleet, env, "1.0.0", "first install v1")
    assert rc == 0, _tail(out, err)
    problems = []
    uid = attacks.uid_of(USER)
    for t in TARGETS:
        st = _status(fleet, t)
        assert st.get("node_up") and st.get("running") == "1.0.0", (t, st)
        mode, owner = _mode(_host_path(fleet, t, ROOT + "/releases/COOKIE"))
        if (mode, owner) != (0o400, uid):
            problems.append(f"{t}: releases/COOKIE is mode {mode:04o} uid {owner}, expected 0400 {USER} (uid {uid})")
    # the build store on build1 and the controller's artifact dir: nothing readable by other users
    places = [("build store", _host_path(fleet, "build1", STORE)),
              ("controller artifact dir", str(env["tmp"] / "artifacts"))]
    for what, top in places:
        mode, _o = _mode(top)
        if mode & 0o077:
            problems.append(f"{what} {top} is mode {mode:04o}: others may read the cookie in the full tarball")
        for dp, dns, fns in os.walk(top):
            rel = os.path.relpath(dp, top)
            if rel.count(os.sep) <= 1 and rel != ".":
                m, _o = _mode(dp)
                if m & 0o077:
                    problems.append(f"{what}: directory {rel} is mode {m:04o} (expected 0700)")
            for f in fns:
                if f.endswith((".tar.gz", ".tgz")):
                    m, _o = _mode(os.path.join(dp, f))
                    if m & 0o077:
                        problems.append(f"{what}: tarball {os.path.join(rel, f)} is mode {m:04o} (expected 0600)")
    assert not problems, "cookie readable by other users:\n" + "\n".join(problems)


# =========================================================================== 2. planted programs (1, 10)

def _real_erl_call(fleet, host):
    found = sorted(p for p in Path(_host_path(fleet, host, ROOT)).glob("erts-*/bin/erl_call")
                   if not p.parent.parent.name.startswith("erts-99"))
    assert found, "setup: the release has no erts-*/bin/erl_call"
    return ROOT + str(found[-1])[len(_host_path(fleet, host, ROOT)):]


def test_planted_erl_call_bin_app_and_health_script_never_run_as_root(fleet, env):
    """Item 1 (and 10): the app user plants ROOT/erts-99.0/bin/erl_call, wraps bin/APP and writes a cmd:
    health script inside ROOT, each recording `id -u`; then status.yml, deploy --check, a hot deploy and a cold
    rollback run.  No record may say 0."""
    uid = attacks.uid_of(USER)
    planted = {}
    for t in TARGETS:
        real = _real_erl_call(fleet, t)
        r1 = attacks.write_as(fleet, t, USER, ROOT + "/erts-99.0/bin/erl_call",
                              attacks.recorder(REC + "/erl_call", then=real))
        r2 = attacks.as_user(fleet, t, USER, f"mv {ROOT}/bin/{APP} {ROOT}/bin/.{APP}-real")
        r3 = attacks.write_as(fleet, t, USER, f"{ROOT}/bin/{APP}",
                              attacks.recorder(REC + "/bin_app", then=f"{ROOT}/bin/.{APP}-real"))
        r4 = attacks.write_as(fleet, t, USER, ROOT + "/hc.sh", attacks.recorder(REC + "/health") + "exit 0\n")
        planted[t] = [r.returncode for r in (r1, r2, r3, r4)]
    # the layout gives ROOT to the app user: planting must have worked (else this test proves nothing)
    assert all(v == [0, 0, 0, 0] for v in planted.values()), \
        f"the app user could not plant its programs in {ROOT} (rc per step): {planted}"

    rc_s, out_s, err_s, _r = _status_play(fleet, env, "status.yml with planted erl_call")
    rc_c, out_c, err_c, _r = _deploy(fleet, env, "2.0.0", "deploy --check v2 (planted)", check=True)
    rc_h, out_h, err_h, _r = _deploy(fleet, env, "2.0.0", "hot deploy v2 (planted, cmd: check)",
                                     hotswap_health_check="cmd:" + ROOT + "/hc.sh", hotswap_mode="hot")
    rc_r, out_r, err_r, _r = _rollback(fleet, env, "cold rollback to v1 (planted)", hotswap_mode="cold")
    runs = {"status.yml": rc_s, "deploy --check": rc_c, "hot deploy": rc_h, "cold rollback": rc_r}
    env["saved"]["planted_runs"] = (runs, out_h, out_r)
    found = {}
    for t in TARGETS:
        for name in ("erl_call", "bin_app", "health"):
            found[(t, name)] = attacks.read_record(_host_path(fleet, t, f"{REC}/{name}"))
    print(f"\nplanted-program records (uids; None: never ran): {found}; playbook exit codes {runs}")
    as_root = {k: v for k, v in found.items() if v and "0" in v}
    assert not as_root, ("ATTACK SUCCEEDED: a program the app user planted in the release root ran as root "
                         f"(uid 0): {as_root}; all records: {found}; playbook exit codes: {runs}")
    others = {k: v for k, v in found.items() if v and set(v) - {str(uid)}}
    assert not others, f"planted programs ran as an unexpected uid (node user is {uid}): {others}"
    # the playbooks still did their work with the planted files present (run as the node user)
    assert rc_s == 0, "status.yml failed with a planted erl_call: " + _tail(out_s, err_s)
    assert rc_c == 0, "deploy --check failed with a planted erl_call: " + _tail(out_c, err_c)
    assert rc_h == 0, "hot deploy failed with planted programs: " + _tail(out_h, err_h)
    assert rc_r == 0, "cold rollback failed with planted programs: " + _tail(out_r, err_r)


def test_cmd_health_check_runs_as_the_node_user(fleet, env):
    """Item 10: the `cmd:` health check of the hot deploy above ran, as the node's user (never root)."""
    uid = attacks.uid_of(USER)
    runs, out_h, _out_r = env["saved"].get("planted_runs", ({}, "", ""))
    for t in TARGETS:
        rec = attacks.read_record(_host_path(fleet, t, REC + "/health"))
        assert rec is not None, (f"{t}: the cmd: health check never ran during the hot deploy (exit codes {runs}): "
                                 + out_h[-3000:])
        assert "0" not in rec, f"ATTACK SUCCEEDED: {t}: the cmd: health check ran as root (uids {rec})"
        assert set(rec) == {str(uid)}, f"{t}: the cmd: health check ran as uids {rec}, expected {uid} ({USER})"


def test_planted_bin_app_never_runs_as_root_when_the_node_is_started(fleet, env):
    """Item 1: the app user wraps bin/APP with a recorder and kills its own node; status.yml and the next deploy
    (which starts the node again) never run the planted bin/APP as root."""
    uid = attacks.uid_of(USER)
    for t in TARGETS:
        r = attacks.as_user(fleet, t, USER,
                            f"[ -e {ROOT}/bin/.{APP}-real ] || mv {ROOT}/bin/{APP} {ROOT}/bin/.{APP}-real")
        w = attacks.write_as(fleet, t, USER, f"{ROOT}/bin/{APP}",
                             attacks.recorder(REC + "/bin_app2", then=f"{ROOT}/bin/.{APP}-real"))
        assert r.returncode == 0 and w.returncode == 0, \
            f"setup: the app user could not wrap bin/{APP}: {r.stderr} {w.stderr}"
        pid = _status(fleet, t).get("os_pid")
        assert pid, f"setup: {t}: no node to kill"
        k = attacks.as_user(fleet, t, USER, f"kill -9 {pid}")
        assert k.returncode == 0, f"setup: the app user could not kill its node: {k.stderr}"
    time.sleep(1)
    rc_s = _status_play(fleet, env, "status.yml (node down, bin/APP planted)")[0]
    rc, out, err, _r = _deploy(fleet, env, "1.0.0", "deploy v1 (node down, bin/APP planted)")
    found = {t: attacks.read_record(_host_path(fleet, t, REC + "/bin_app2")) for t in TARGETS}
    print(f"\nplanted bin/{APP} records: {found}; status.yml rc {rc_s}, deploy rc {rc}")
    as_root = {t: v for t, v in found.items() if v and "0" in v}
    assert not as_root, f"ATTACK SUCCEEDED: the bin/{APP} the app user planted ran as root: {as_root}"
    others = {t: v for t, v in found.items() if v and set(v) - {str(uid)}}
    assert not others, f"the planted bin/{APP} ran as an unexpected uid: {others}"
    assert rc == 0, "the deploy did not bring the killed node back: " + _tail(out, err)
    for t in TARGETS:
        assert _status(fleet, t).get("node_up"), f"{t}: the node is still down after the deploy"


def test_cleanup_planted_programs(fleet, env):
    """Put bin/APP back and remove the planted files (as the app user: what it planted is its own)."""
    for t in TARGETS:
        attacks.as_user(fleet, t, USER,
                        f"rm -rf {ROOT}/erts-99.0 {ROOT}/hc.sh; "
                        f"if [ -e {ROOT}/bin/.{APP}-real ]; then mv -f {ROOT}/bin/.{APP}-real {ROOT}/bin/{APP}; fi")
        for name in ("erl_call", "bin_app", "bin_app2", "health"):
            p = _host_path(fleet, t, f"{REC}/{name}")
            if os.path.exists(p):
                os.unlink(p)
        st = _status(fleet, t)
        assert st.get("node_up"), f"{t}: the node is down after the planted-program test: {st}"


# =========================================================================== 3. a planted agent (2)

PLANTED_AGENT = """#!/usr/bin/env python3
import os
with open("{rec}", "a") as f:
    f.write("%d\\n" % os.getuid())
"""


def test_agent_planted_in_the_release_root_never_runs_as_root(fleet, env):
    """Item 2: the app user makes ROOT/.hotswap/ of its own (agent.py, node.erl, node.exs, env, cookie) and tries to write
    into the agent's directory beside ROOT; status.yml, deploy --check and a deploy run.  The planted agent.py
    never runs as root, and the real agent's files are unchanged."""
    t = "target2"
    real_agent = _host_path(fleet, t, STATE + "/agent.py")
    with open(real_agent, "rb") as f:
        real_before = f.read()
    legacy = ROOT + "/.hotswap"
    # old layout: move the root-owned directory away if there is one; new layout: just make our own
    attacks.as_user(fleet, t, USER, f"[ -e {legacy} ] && mv {legacy} {ROOT}/.hotswap-moved-away; true")
    body = PLANTED_AGENT.format(rec=REC + "/agent")
    r1 = attacks.write_as(fleet, t, USER, legacy + "/agent.py", body)
    attacks.write_as(fleet, t, USER, legacy + "/node.erl", "io:format(\"planted~n\").\n", mode="644")
    attacks.write_as(fleet, t, USER, legacy + "/node.exs", "IO.puts(:planted)\n", mode="644")
    attacks.write_as(fleet, t, USER, legacy + "/env", "LD_PRELOAD=/opt/hsp-rec/evil.so\n", mode="600")
    attacks.write_as(fleet, t, USER, legacy + "/VERSION", "9.9.9\n", mode="644")
    assert r1.returncode == 0, f"setup: the app user could not create {legacy}/agent.py: {r1.stderr}"
    # the agent's own directory: the app user can neither write into it nor rename it
    w = attacks.as_user(fleet, t, USER, f"echo x > {STATE}/agent.py || echo x > {STATE}/planted; "
                                        f"mv {STATE} {STATE}-x || mv /opt/.hotswap /opt/.hotswap-x")
    runs = {}
    runs["status.yml"] = _status_play(fleet, env, "status.yml (planted agent)")[0]
    runs["deploy --check"] = _deploy(fleet, env, "1.0.0", "deploy --check (planted agent)", check=True)[0]
    rc, out, err, _r = _deploy(fleet, env, "1.0.0", "deploy v1 (planted agent)",
                               hotswap_env={"SAMPLE_PORT": str(PORT), "RELEASE_NODE": NODE, "HSP_X": "1"})
    runs["deploy"] = rc
    rec = attacks.read_record(_host_path(fleet, t, REC + "/agent"))
    print(f"\nplanted agent.py: records {rec}; writes into {STATE}: rc {w.returncode}; playbook exit codes {runs}")
    with open(real_agent, "rb") as f:
        real_after = f.read()
    planted_state = sorted(os.listdir(_host_path(fleet, t, "/opt/.hotswap"))) if os.path.isdir(
        _host_path(fleet, t, "/opt/.hotswap")) else None
    assert not (rec and "0" in rec), (f"ATTACK SUCCEEDED: the agent.py the app user planted in {legacy} ran as "
                                      f"root (records {rec}; playbook exit codes {runs})")
    assert rec is None, f"the planted agent.py was run at all (as uids {rec}): the controller ran a file of ROOT"
    assert w.returncode != 0 and real_after == real_before, \
        f"ATTACK SUCCEEDED: the app user wrote into or renamed the agent's directory {STATE}: {w.stdout} {w.stderr}"
    assert os.path.isdir(_host_path(fleet, t, STATE)) and "priv" in (planted_state or []), planted_state
    assert rc == 0, "deploy with a planted ROOT/.hotswap failed: " + _tail(out, err)
    attacks.as_user(fleet, t, USER, f"rm -rf {legacy} {ROOT}/.hotswap-moved-away")


# =========================================================================== 4. interrupted failing health check (7)

@pytest.mark.fault
def test_interrupted_failing_health_check_is_never_committed(fleet, env):
    """Item 7: a hot upgrade to v2 whose health check fails is SIGKILLed during the health wait; then `commit`
    (with the same failing check) and a re-run of the deploy: v2 is never made permanent."""
    t = "target1"
    st = _status(fleet, t)
    assert st.get("running") == "1.0.0" and st.get("permanent") == "1.0.0", f"setup: {t} is not on v1: {st}"
    pkg, sha = _controller_artifact(env, "2.0.0", "upgrade")
    dest = _place(fleet, t, pkg, "/opt/hsp-pkgs/" + pkg.name)
    cmd = AGENT + ["--user", USER, "hot", "--package", dest, "--sha256", sha, "--version", "2.0.0",
                   "--check", "cmd:/bin/false", "--timeout", "120"]
    proc = subprocess.Popen(fleet.ssh_argv(t, "--") + [" ".join(cmd)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
    killed = None
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if _client(fleet, t).vsn() == "2.0.0":
                    break
            except OSError:
                pass
            time.sleep(0.1)
        time.sleep(1.0)                      # inside the health wait (cmd:/bin/false retried every 0.5 s)
        holder = _lock_holder(fleet, t)
        assert holder, "setup: the hot agent never reached its health wait holding the lock: " + \
            (proc.stdout.read() if proc.poll() is not None else "")
        _kill_pid(holder)
        killed = holder
    finally:
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    assert killed
    time.sleep(0.5)
    perm_after_kill = _permanent(fleet, t)
    rc_commit, out_commit = _agent(fleet, t, ["commit", "--version", "2.0.0", "--check", "cmd:/bin/false"])
    perm_after_commit = _permanent(fleet, t)
    rc, out, err, _r = _deploy(fleet, env, "2.0.0", "re-run deploy v2 (failing check)",
                               hotswap_health_check="cmd:/bin/false", hotswap_health_timeout=5,
                               hotswap_target_hosts="target1")
    perm_after_rerun = _permanent(fleet, t)
    assert perm_after_kill != "2.0.0", "v2 became permanent although its health check never passed (agent killed)"
    assert perm_after_commit != "2.0.0", (f"ATTACK SUCCEEDED: `commit` made v2 permanent although its health check "
                                          f"fails (commit rc {rc_commit}: {out_commit})")
    assert rc_commit != 0, f"`commit` with a failing health check reported success: {out_commit}"
    assert perm_after_rerun != "2.0.0", ("ATTACK SUCCEEDED: the re-run deploy committed v2 whose health check "
                                         "fails: " + _tail(out, err))
    assert rc != 0, "the re-run deploy with a failing health check reported success: " + _tail(out, err)
    env["saved"]["rerun_out"] = out


@pytest.mark.fault
def test_a_failed_rerun_leaves_the_host_on_its_permanent_release(fleet, env):
    """README: a failed host is always back on the release it had, running and permanent -- also after the
    re-run of an interrupted hot upgrade whose health check fails (the test above)."""
    t = "target1"
    st = _status(fleet, t)
    out = env["saved"].get("rerun_out", "")
    assert st.get("node_up") and st.get("running") == st.get("permanent") == "1.0.0", \
        (f"{t} is not back on v1, running and permanent, after the failed re-run (running {st.get('running')}, "
         f"permanent {st.get('permanent')}, current {st.get('current')}): " + _failed_msgs(out)[-2500:])


# =========================================================================== 5. cookie in temp files after SIGKILL (8)

@pytest.mark.fault
def test_no_cookie_left_in_temp_files_after_agent_sigkill(fleet, env):
    """Item 8: agents talking to the node are SIGKILLed at various moments; no file holding the cookie is left
    anywhere but the node's releases/COOKIE and the root-only agent directory (and the node's own run_erl log,
    a documented limit)."""
    t = "target1"
    cookie = env["cookie"].encode()
    killed = 0

    def agent_pid():
        for d in os.listdir("/proc"):
            if d.isdigit():
                try:
                    cl = Path(f"/proc/{d}/cmdline").read_bytes().split(b"\0")
                except OSError:
                    continue
                # the python3 process running STATE/agent.py ... status for our root
                if len(cl) > 1 and cl[1] == (STATE + "/agent.py").encode() and ROOT.encode() in cl and b"status" in cl:
                    return int(d)
        return None

    for i in range(8):
        p = subprocess.Popen(fleet.ssh_argv(t, "--") + [" ".join(AGENT + ["--user", USER, "status"])],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while p.poll() is None and time.monotonic() < deadline:
            pid = agent_pid()
            if pid:
                time.sleep(0.01 * i)         # at different moments of its talk with the node
                _kill_pid(pid)
                killed += 1
                break
        p.wait(timeout=60)
    assert killed, "setup: no agent was caught running to be killed"
    basetemp = str(env["tmp"].parent.parent)
    hits = attacks.files_holding(["/tmp", "/var/tmp", "/dev/shm", "/run/user"], cookie,
                                 skip=[basetemp, "/tmp/hP", "/tmp/hsp-old"], max_depth=3)
    hits += list(attacks.files_holding([fleet.opt_dir(t)], cookie, max_depth=12,
                                       skip=[_host_path(fleet, t, STATE),
                                             _host_path(fleet, t, ROOT + "/tmp/log"),
                                             _host_path(fleet, t, ROOT + "/releases/COOKIE")]))
    assert not hits, f"the cookie was left in files other users may reach: {hits}"
    assert _status(fleet, t).get("node_up")


# =========================================================================== 6. settings before the lock (9)

def test_settings_are_not_written_while_another_agent_holds_the_lock(fleet, env):
    """Item 9: with the agent's lock held, a deploy with a changed hotswap_env and hotswap_cookie is refused
    and writes neither."""
    t = "target1"
    files = [STATE + "/env", STATE + "/cookie", ROOT + "/releases/COOKIE", STATE + "/.erlang.cookie"]

    def digest():
        out = {}
        for f in files:
            p = _host_path(fleet, t, f)
            try:
                with open(p, "rb") as fh:
                    out[f] = (hashlib.sha256(fh.read()).hexdigest(), _mode(p))
            except FileNotFoundError:
                out[f] = None
        return out

    before = digest()
    st = _status(fleet, t)
    other = "1.0.0" if st.get("running") == "2.0.0" else "2.0.0"    # a deploy that changes the host
    settings = {"env": {"SAMPLE_PORT": str(PORT), "RELEASE_NODE": NODE, "HSP_LOCKED": "1"},
                "cookie": env["cookie"] + "X"}
    lock = _host_path(fleet, t, STATE + "/lock")
    fd = os.open(lock, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        # a second agent (a write command) with new settings on its stdin
        rc_a, out_a = _agent(fleet, t, ["prune", "--keep", "5", "--settings-stdin"], input=json.dumps(settings))
        after_agent = digest()
        rc, out, err, recap = _deploy(fleet, env, other, "deploy while the lock is held",
                                      hotswap_target_hosts="target1",
                                      hotswap_env=settings["env"], hotswap_cookie=settings["cookie"],
                                      hotswap_allow_downgrade=True)
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
    after = digest()
    changed_a = [f for f in files if before[f] != after_agent[f]]
    changed = [f for f in files if before[f] != after[f]]
    assert not changed_a, (f"ATTACK SUCCEEDED: an agent refused by the lock still wrote the settings: {changed_a}; "
                           f"agent said (rc {rc_a}) {out_a}")
    assert rc_a != 0 and "lock" in out_a.get("msg", ""), f"the second agent was not refused on the lock: {out_a}"
    assert not changed, (f"ATTACK SUCCEEDED: settings were written although another agent held the lock: {changed}; "
                         + _tail(out, err))
    assert rc != 0, f"the deploy of {other} with changed settings succeeded while the lock was held: " + _tail(out, err)
    assert "lock" in _failed_msgs(out), "the refusal does not name the lock: " + _failed_msgs(out)[-2000:]


# =========================================================================== 7. hotswap_user "" / root (11)

@pytest.mark.bad_input
@pytest.mark.parametrize("user", ["", "root"], ids=["empty", "root"])
def test_hotswap_user_empty_or_root_is_refused_before_any_host_changes(fleet, env, user):
    """Item 11: -e hotswap_user= and -e hotswap_user=root fail on the controller, naming hotswap_user, and no
    host changes."""
    snaps = {t: _opt_outside(fleet, t, ROOT) for t in TARGETS}
    roots = {t: attacks.snapshot(_host_path(fleet, t, ROOT), skip=["tmp"]) for t in TARGETS}
    states = {t: attacks.snapshot(_host_path(fleet, t, STATE), skip=["__pycache__"], contents=True) for t in TARGETS}
    rc, out, err, recap = _deploy(fleet, env, "2.0.0", "deploy hotswap_user=%r" % user,
                                  args=["-e", "hotswap_user=" + user])
    assert rc != 0, f"ATTACK SUCCEEDED: hotswap_user={user!r} was accepted: " + _tail(out, err)
    msgs = _failed_msgs(out)
    assert "hotswap_user" in msgs, f"the refusal of hotswap_user={user!r} does not name hotswap_user: " + msgs[-2000:]
    for t in TARGETS:
        assert recap.get(t, {}).get("changed", 0) == 0, recap
        assert attacks.diff_snapshots(roots[t], attacks.snapshot(_host_path(fleet, t, ROOT), skip=["tmp"])) == []
        assert attacks.diff_snapshots(states[t], attacks.snapshot(_host_path(fleet, t, STATE), skip=["__pycache__"],
                                                                  contents=True)) == []
        assert attacks.diff_snapshots(snaps[t], _opt_outside(fleet, t, ROOT)) == []
        st = _status(fleet, t)
        assert st.get("node_up"), (t, st)
        uids = {int(x) for x in re.search(r"^Uid:\s+(.*)$", Path(f"/proc/{st['os_pid']}/status").read_text(),
                                          re.M).group(1).split()}
        assert uids == {attacks.uid_of(USER)}, f"{t}: the node runs as uids {uids}"


# =========================================================================== 8. health URL token (13)

class _Health:
    """A tiny HTTP server answering 200 on /health, in a target's network namespace (127.0.0.1:HTTP_PORT)."""

    def __init__(self, fleet, host, tmp):
        d = tmp / ("www-" + host)
        d.mkdir(exist_ok=True)
        (d / "health").write_text("ok\n")
        self.proc = subprocess.Popen(["nsenter", "-t", str(fleet.pids[host]), "-n", "--", "/usr/bin/python3", "-m",
                                      "http.server", "--bind", "127.0.0.1", "--directory", str(d), str(HTTP_PORT)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
        self.pid = self.proc.pid
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            r = fleet.exec_in(host, ["/usr/bin/python3", "-c",
                                     "import urllib.request;urllib.request.urlopen('http://127.0.0.1:%d/health')"
                                     % HTTP_PORT], check=False)
            if r.returncode == 0:
                return
            time.sleep(0.2)
        raise AssertionError(f"setup: the health server on {host} did not come up")

    def stop(self):
        _kill_pid(self.pid)
        self.proc.wait(timeout=10)


def test_health_url_token_is_in_no_argv_and_no_verbose_output(fleet, env):
    """Item 13: a hot deploy whose health check is an URL with a token, run with -vvv: the token shows in no
    process's command line on the host (sampled all along) and not in the output."""
    servers = [_Health(fleet, t, env["tmp"]) for t in TARGETS]
    try:
        url = "http://127.0.0.1:%d/health?token=%s" % (HTTP_PORT, env["token"])
        rc, out, err, recap = _deploy(fleet, env, "2.0.0", "hot deploy v2 (URL check, -vvv)", args=["-vvv"],
                                      hotswap_health_check=url, hotswap_mode="hot")
    finally:
        for s in servers:
            s.stop()
    assert env["token"] not in out + err, "the health URL's token is printed by -vvv: " + \
        [line for line in (out + err).splitlines() if env["token"] in line][0][:300]
    hits = {k: v for k, v in env["watch"].hits.items() if k[1] == "health-token"}
    assert not hits, f"the health URL's token showed in a process's command line: {hits}"
    assert rc == 0, _tail(out.replace(env["token"], "<token>"), err)
    for t in TARGETS:
        st = _status(fleet, t)
        assert st.get("running") == st.get("permanent") == "2.0.0", (t, st)


@pytest.mark.bad_input
def test_env_key_with_a_trailing_newline_is_refused(fleet, env):
    """Item 13: an hotswap_env key with a trailing newline is refused and the env file is unchanged."""
    envs = {t: Path(_host_path(fleet, t, STATE + "/env")).read_bytes() for t in TARGETS}
    bad_env = {"SAMPLE_PORT": str(PORT), "RELEASE_NODE": NODE, "HSP_BAD\n": "x"}
    # the agent itself (a write command, the settings on its stdin)
    rc_a, out_a = _agent(fleet, "target1", ["prune", "--keep", "5", "--settings-stdin"],
                         input=json.dumps({"env": bad_env}))
    env_a = Path(_host_path(fleet, "target1", STATE + "/env")).read_bytes()
    # and through the playbook
    rc, out, err, recap = _deploy(fleet, env, "2.0.0", "deploy with a bad env key", hotswap_env=bad_env)
    assert env_a == envs["target1"] and b"HSP_BAD" not in env_a, \
        f"the agent wrote an env key with a trailing newline: {env_a!r} (agent said {out_a})"
    assert rc_a == 2 and "HSP_BAD" in out_a.get("msg", ""), f"the agent did not refuse the key as bad input: {out_a}"
    for t in TARGETS:
        assert Path(_host_path(fleet, t, STATE + "/env")).read_bytes() == envs[t], f"{t}: the env file changed"
    assert "internal error" not in out and "Traceback" not in out + err, _tail(out, err)
    assert rc != 0, ("deploy.yml accepted an hotswap_env key with a trailing newline (exit 0; on a no-op deploy the "
                     "settings go to the agent's `status`, which neither checks nor writes them): "
                     + _tail(out, err, 1500))


def test_cookie_is_in_no_process_argv(fleet, env):
    """Item 8: all along the deploys, rollbacks and agent runs so far, no process on the hosts had the cookie
    on its command line (the nodes' own VMs excepted: the release's start script, a documented limit)."""
    w = env["watch"]
    hits = {k: v for k, v in w.hits.items() if k[1] == "cookie"}
    assert w.samples > 100, f"the argv watch sampled only {w.samples} times"
    assert not hits, f"ATTACK SUCCEEDED: the cookie was in a process's argv ({w.samples} samples): {hits}"


# =========================================================================== B. the file table of docs/operations.md

def test_files_on_targets_match_the_table_in_operations_md(fleet, env):
    """Acceptance B: every row of "Files the collection writes on a target" (path, owner, mode) against stat
    on target1 and target2 after the deploys above."""
    rows = attacks.file_table((REPO / "docs" / "operations.md").read_text())
    assert rows, "docs/operations.md has no table under a heading 'Files the collection writes on a target'"
    parent = os.path.dirname(ROOT)
    mismatches, checked, notes = [], 0, []
    for row in rows:
        c = row["cells"]
        pcol = next((k for k in c if "path" in k), None)
        ocol = next((k for k in c if "owner" in k), None)
        mcol = next((k for k in c if "mode" in k), None)
        if not (pcol and ocol and mcol):
            mismatches.append(f"row without path/owner/mode columns: {row['line']}")
            continue
        owner = attacks.parse_owner(c[ocol])
        mode = attacks.parse_mode(c[mcol])
        rest = " ".join(v for k, v in c.items() if k not in (pcol, ocol, mcol))
        if "systemd" in c[pcol] or ("only with" in rest and "systemd" in rest):
            notes.append(f"not applicable (daemon service manager): {c[pcol]}")
            continue
        want_user = USER if "hotswap_user" in owner else owner
        for pat in attacks.expand_row_paths(c[pcol]):
            p = pat.replace("PARENT/", parent + "/").replace("STATE", STATE).replace("ROOT", ROOT)
            p = p.replace("APP", APP).replace("SHA256-FILE", "*").replace("SHA256", "*")
            is_glob = "*" in p
            for t in TARGETS:
                base = _host_path(fleet, t, p.rstrip("/") or "/")
                matches = sorted(glob.glob(base)) if is_glob else [base]
                if not is_glob and not os.path.lexists(base):
                    mismatches.append(f"{t}: {pat} ({p}) does not exist; table row: {row['line'].strip()}")
                    continue
                for m in matches:
                    st = os.lstat(m)
                    got_user = pwd.getpwuid(st.st_uid).pw_name
                    got_mode = stat.S_IMODE(st.st_mode)
                    checked += 1
                    if got_user != want_user or (mode is not None and got_mode != mode):
                        shown = "/opt" + str(m)[len(str(fleet.opt_dir(t))):]
                        mismatches.append(f"{t}: {shown}: {got_user} {got_mode:04o}; docs/operations.md says "
                                          f"{want_user} {'%04o' % mode if mode is not None else '?'} (row {pat})")
    assert checked >= 10, f"only {checked} paths of the table could be checked: {rows}"
    assert not mismatches, "the fleet differs from docs/operations.md's file table:\n" + "\n".join(mismatches)


# =========================================================================== 9. crafted packages (6, 13)

SECRET = "/opt/secret-root-only"


@pytest.mark.bad_input
def test_package_with_a_link_chain_to_a_root_only_secret_is_refused(fleet, env):
    """Item 6: the real v2 upgrade package plus a symlink through another symlink and then '..' (lexically
    inside, really /) and a hard link through it to a root-only secret.  Refused as a package, the secret never
    copied into ROOT."""
    t = "target1"
    secret_text = b"root-only-" + secrets.token_hex(12).encode() + b"\n"
    sp = _host_path(fleet, t, SECRET)
    with open(sp, "wb") as f:
        f.write(secret_text)
    os.chmod(sp, 0o600)
    src, _sha = _controller_artifact(env, "2.0.0", "upgrade")
    evil = env["tmp"] / "evil-2.0.1.tar.gz"
    d = "lib/evil-1.0"
    attacks.rewrite_version(src, evil, "2.0.0", "2.0.1", APP, extra_members=[
        attacks.dir_member(d),
        attacks.symlink_member(d + "/up", "."),
        attacks.symlink_member(d + "/p", "up/" * 12 + "../" * 14),
        attacks.hardlink_member(d + "/stolen", d + "/p" + SECRET),
        attacks.symlink_member(d + "/s2", "p" + SECRET),
    ])
    sha = hashlib.sha256(evil.read_bytes()).hexdigest()
    dest = _place(fleet, t, evil, "/opt/hsp-pkgs/evil-2.0.1.tar.gz")
    before = attacks.snapshot(_host_path(fleet, t, ROOT), skip=["tmp"])
    rc, out = _agent(fleet, t, ["unpack", "--package", dest, "--sha256", sha, "--version", "2.0.1"])
    print(f"\ncrafted package: rc {rc}: {out.get('msg')}")
    st = os.lstat(sp)
    copies = attacks.files_holding([_host_path(fleet, t, ROOT)], secret_text, max_depth=20)
    linked = [os.path.join(dp, n) for dp, _d, fns in os.walk(_host_path(fleet, t, ROOT)) for n in fns
              if os.lstat(os.path.join(dp, n)).st_ino == st.st_ino]
    assert not copies and not linked, (f"ATTACK SUCCEEDED: the root-only secret was copied/linked into the release "
                                       f"root: {copies + linked}; agent said {out}")
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_nlink) == (0o600, 0, 1), \
        f"the secret changed: mode {stat.S_IMODE(st.st_mode):04o} uid {st.st_uid} links {st.st_nlink}"
    assert rc != 0 and "package refused" in out.get("msg", ""), \
        f"the crafted package was not refused as such (rc {rc}): {out}"
    assert "internal error" not in out.get("msg", "")
    assert attacks.diff_snapshots(before, attacks.snapshot(_host_path(fleet, t, ROOT), skip=["tmp"])) == []


@pytest.mark.bad_input
def test_truncated_package_is_refused_as_truncated(fleet, env):
    """Item 13: half a package: 'truncated or damaged', never 'internal error'."""
    t = "target1"
    src, _sha = _controller_artifact(env, "2.0.0", "upgrade")
    data = src.read_bytes()
    cut = env["tmp"] / "cut-2.0.1.tar.gz"
    cut.write_bytes(data[: len(data) // 2])
    sha = hashlib.sha256(cut.read_bytes()).hexdigest()
    dest = _place(fleet, t, cut, "/opt/hsp-pkgs/cut-2.0.1.tar.gz")
    rc, out = _agent(fleet, t, ["unpack", "--package", dest, "--sha256", sha, "--version", "2.0.1"])
    msg = out.get("msg", "")
    assert rc != 0 and "truncated or damaged" in msg and "internal error" not in msg, (rc, out)


# =========================================================================== 10. symlinks in releases/ (3)

def test_symlinks_planted_in_releases_are_never_written_through(fleet, env):
    """Item 3: the app user points temp names (RELEASES.hotswap-tmp, start_erl.data.hotswap-tmp,
    COOKIE.hotswap-tmp), RELEASES and start_erl.data at root-owned decoys; a revert, a no-op hot and a cold
    rollback (and back) run.  The decoys keep owner, mode and content.  releases/COOKIE linked to a root-only
    secret: the secret never reaches a file the node user can read (its .erlang.cookie, the release root)."""
    t = "target1"
    _ensure_on(fleet, env, "2.0.0", "ensure v2 (symlinks)")
    rel = _host_path(fleet, t, ROOT + "/releases")
    real = {n: Path(rel, n).read_bytes() for n in ("RELEASES", "start_erl.data")}
    real_cookie = Path(rel, "COOKIE").read_bytes()
    secret = b"rootsecret" + secrets.token_hex(10).encode()
    decoys = {}
    plants = {"RELEASES.hotswap-tmp": b"decoy-1\n", "start_erl.data.hotswap-tmp": b"decoy-2\n",
              "COOKIE.hotswap-tmp": b"decoy-3\n", "RELEASES": real["RELEASES"],
              "start_erl.data": real["start_erl.data"],
              "COOKIE": secret}
    for i, (name, content) in enumerate(plants.items()):
        dp = f"/opt/decoy-owned-by-root-{i}"
        p = _host_path(fleet, t, dp)
        with open(p, "wb") as f:
            f.write(content)
        os.chown(p, 0, 0)
        os.chmod(p, 0o644 if name in real else 0o600)   # the node may read RELEASES/start_erl.data through them
        decoys[dp] = (content, stat.S_IMODE(os.lstat(p).st_mode))
        r = attacks.as_user(fleet, t, USER, f"rm -f {ROOT}/releases/{name}; ln -sfn {dp} {ROOT}/releases/{name}")
        assert r.returncode == 0, f"setup: the app user could not plant releases/{name}: {r.stderr}"
    pkg, sha = _packages(fleet, t, "2.0.0", "upgrade")
    results = {}
    results["revert"] = _agent(fleet, t, ["revert", "--version", "2.0.0"])
    results["no-op hot"] = _agent(fleet, t, ["hot", "--package", pkg, "--sha256", sha, "--version", "2.0.0"])
    results["cold rollback"] = _rollback(fleet, env, "cold rollback (planted links)", hotswap_mode="cold",
                                         hotswap_target_hosts="target1")[0]
    results["deploy back"] = _deploy(fleet, env, "2.0.0", "deploy v2 back (planted links)",
                                     hotswap_target_hosts="target1", hotswap_mode="cold")[0]
    results["status.yml"] = _status_play(fleet, env, "status.yml (planted links)", pattern="target1")[0]
    leaked = attacks.files_holding([_host_path(fleet, t, ROOT), _host_path(fleet, t, STATE + "/.erlang.cookie")],
                                   secret, skip=[_host_path(fleet, t, ROOT + "/tmp")], max_depth=20)
    print("\nplanted links in releases/: " + "; ".join(
        f"{k}: {v if isinstance(v, int) else (v[0], v[1].get('msg') or v[1].get('result'))}"
        for k, v in results.items()))
    bad = []
    for dp, (content, mode) in decoys.items():
        p = _host_path(fleet, t, dp)
        st = os.lstat(p)
        got = Path(p).read_bytes()
        if (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode), got) != (0, 0, mode, content):
            bad.append(f"{dp}: uid {st.st_uid} mode {stat.S_IMODE(st.st_mode):04o} content "
                       f"{'changed' if got != content else 'same'}")
    # put the release back: the links go, the real files come back (the app user's)
    for name in plants:
        p = Path(rel, name)
        if p.is_symlink():
            p.unlink()
            if name in real or name == "COOKIE":
                p.write_bytes(real.get(name, real_cookie))
                os.chown(p, attacks.uid_of(USER), pwd.getpwnam(USER).pw_gid)
                os.chmod(p, 0o400 if name == "COOKIE" else 0o644)
    assert not bad, ("ATTACK SUCCEEDED: root wrote through a link the app user planted in releases/ "
                     f"(decoys changed): {bad}; results: {results}")
    assert not leaked, ("ATTACK SUCCEEDED: a root-only file the app user linked as releases/COOKIE was copied where "
                        f"the node user reads it: {leaked}")


# =========================================================================== 11. versions as paths (4)

def test_crafted_versions_in_RELEASES_never_reach_outside_the_root(fleet, env):
    """Item 4: a RELEASES entry 0.1.0/../../../decoy-dir (releases/0.1.0 made, the node killed: the app user can
    do both) plus prune (agent prune --keep 1, and a deploy with hotswap_keep_releases=1, which starts the node
    again) must not remove /opt/decoy-dir; a crafted permanent entry plus a cold rollback
    must write nothing outside ROOT and the agent's directory (no file under /tmp, /opt or /etc/systemd/system)."""
    t = "target1"
    decoy = _host_path(fleet, t, "/opt/decoy-dir")
    os.makedirs(decoy, exist_ok=True)
    Path(decoy, "keep").write_text("decoy\n")
    relp = _releases_file(fleet, t)
    original = Path(relp).read_bytes()
    text = original.decode()
    evil_tag = "hsp-evil-" + secrets.token_hex(4)
    # a copy of a real entry (its libs list included) under the crafted version, status old
    ent = re.findall(r"\{release,.*?,\s*(?:permanent|old|current|unpacked)\s*\}", text, re.S)[-1]
    ent = re.sub(r'^\{release,\s*"%s",\s*"[^"]+"' % APP, '{release,"%s","0.1.0/../../../decoy-dir"' % APP, ent)
    ent = re.sub(r"(permanent|current|unpacked)(\s*\})$", r"old\2", ent)
    crafted = text[:text.index("[") + 1] + ent + "," + text[text.index("[") + 1:]
    r = attacks.write_as(fleet, t, USER, ROOT + "/releases/RELEASES", crafted, mode="644")
    assert r.returncode == 0, f"setup: the app user could not write RELEASES: {r.stderr}"
    # releases/0.1.0 must exist for the kernel to resolve the '..'s; with the node down the agent prunes from the
    # files (not through release_handler, which knows only what it booted with): the app user kills its node
    pid = _status(fleet, t).get("os_pid")
    k = attacks.as_user(fleet, t, USER, f"mkdir -p {ROOT}/releases/0.1.0 && kill -9 {pid}")
    assert k.returncode == 0, f"setup: {k.stderr}"
    time.sleep(1)
    outside0 = _opt_outside(fleet, t, ROOT)
    systemd0 = set(os.listdir("/etc/systemd/system")) if os.path.isdir("/etc/systemd/system") else set()
    res = {}
    res["agent prune --keep 1"] = _agent(fleet, t, ["prune", "--keep", "1"])
    res["deploy keep 1"] = _deploy(fleet, env, "2.0.0", "deploy keep_releases=1 (crafted RELEASES)",
                                   hotswap_target_hosts="target1", hotswap_keep_releases=1)[0]
    pruned = not Path(decoy, "keep").exists()
    print("\ncrafted RELEASES, prune: " + "; ".join(
        f"{k}: {v if isinstance(v, int) else (v[0], v[1].get('msg') or v[1].get('result'))}" for k, v in res.items()))
    # a crafted permanent entry (the real one demoted), then a cold rollback
    i = text.index("[") + 1     # RELEASES starts with a %% coding comment
    pent = re.sub(r'^\{release,\s*"%s",\s*"[^"]+"' % APP,
                  '{release,"%s","1.0.0/../../../../../../tmp/%s"' % (APP, evil_tag), ent)
    pent = re.sub(r"old(\s*\})$", r"permanent\1", pent)
    perm = text[:i] + pent + "," + re.sub(r",(\s*)permanent(\s*)\}", r",\1old\2}", text[i:])
    attacks.write_as(fleet, t, USER, ROOT + "/releases/RELEASES", perm, mode="644")
    res["cold rollback"] = _rollback(fleet, env, "cold rollback (crafted permanent)", hotswap_mode="cold",
                                     hotswap_target_hosts="target1")[0]
    res["agent rollback cold"] = _agent(fleet, t, ["rollback", "--version", "1.0.0", "--mode", "cold"])
    print("crafted RELEASES, all: " + "; ".join(
        f"{k}: {v if isinstance(v, int) else (v[0], v[1].get('msg') or v[1].get('result'))}" for k, v in res.items()))
    outside1 = _opt_outside(fleet, t, ROOT)
    systemd1 = set(os.listdir("/etc/systemd/system")) if os.path.isdir("/etc/systemd/system") else set()
    strays = [p for p in ("/tmp", "/opt", "/var/tmp", "/") for n in (os.listdir(p) if os.path.isdir(p) else [])
              if evil_tag in n]
    strays += [n for n in os.listdir(fleet.opt_dir(t)) if evil_tag in n]
    # put RELEASES back: drop the crafted entries from what is there now (the agent may have rewritten it)
    now = Path(relp).read_text()
    kept = [e for e in re.findall(r"\{release,.*?,\s*(?:permanent|old|current|unpacked)\s*\}", now, re.S)
            if "decoy-dir" not in e and evil_tag not in e]
    if any(re.search(r",\s*permanent\s*\}$", e) for e in kept):
        Path(relp).write_text("[" + ",\n ".join(kept) + "].\n")
    else:
        Path(relp).write_bytes(original)
    os.chown(relp, attacks.uid_of(USER), pwd.getpwnam(USER).pw_gid)
    os.chmod(relp, 0o644)
    assert not pruned, f"ATTACK SUCCEEDED: prune removed /opt/decoy-dir through a crafted version: {res}"
    new_units = [n for n in systemd1 - systemd0 if APP in n or "hotswap" in n or evil_tag in n]
    assert not new_units, f"ATTACK SUCCEEDED: files appeared in /etc/systemd/system: {new_units}"
    assert not strays, f"ATTACK SUCCEEDED: the crafted permanent version became a path outside the root: {strays}"
    diff = [x for x in attacks.diff_snapshots(outside0, outside1) if "hsp-pkgs" not in x]
    assert not diff, f"ATTACK SUCCEEDED: files outside ROOT changed: {diff}; results {res}"
    # the app user killed its node for the attack: the next deploy starts it again
    rc, out, err, _r = _deploy(fleet, env, "2.0.0", "deploy v2 after the crafted RELEASES",
                               hotswap_target_hosts="target1", hotswap_allow_downgrade=True)
    st = _status(fleet, t)
    assert st.get("node_up"), f"{t}: the deploy after the crafted RELEASES (put back) did not start the node: " + \
        _tail(out, err)


# =========================================================================== 12. "installed" from deletable files (5)

def test_deleting_RELEASES_and_bin_does_not_make_the_host_fresh(fleet, env):
    """Item 5: the app user deletes releases/RELEASES and bin/APP; the next deploy does not take the host for a
    fresh one (no first install over it, no restart)."""
    t = "target1"
    _ensure_on(fleet, env, "2.0.0", "ensure v2 (deleted RELEASES)")
    st0 = _status(fleet, t)
    n0 = len(_journal(fleet, t))
    saved = {n: Path(_host_path(fleet, t, ROOT + "/" + n)).read_bytes() for n in ("releases/RELEASES", f"bin/{APP}")}
    r = attacks.as_user(fleet, t, USER, f"rm -f {ROOT}/releases/RELEASES {ROOT}/bin/{APP}")
    assert r.returncode == 0, f"setup: the app user could not delete its files: {r.stderr}"
    rc, out, err, recap = _deploy(fleet, env, "2.0.0", "deploy after RELEASES/bin deleted",
                                  hotswap_target_hosts="target1")
    new_entries = _journal(fleet, t)[n0:]
    new_ops = [j.get("op") for j in new_entries]
    fresh = [{k: j.get(k) for k in ("op", "result", "changed", "msg")} for j in new_entries
             if j.get("op") == "first-install" and (j.get("result") == "ok" or j.get("changed"))]
    st1 = _status(fleet, t)
    # put the files back where the product did not
    for n, data in saved.items():
        p = Path(_host_path(fleet, t, ROOT + "/" + n))
        if not p.exists():
            p.write_bytes(data)
            os.chown(p, attacks.uid_of(USER), pwd.getpwnam(USER).pw_gid)
            os.chmod(p, 0o644 if n.startswith("releases") else 0o755)
    summary = (f"deploy rc {rc}; journal: {[{k: j.get(k) for k in ('op', 'result', 'msg')} for j in new_entries]}; "
               f"node pid {st0.get('os_pid')} -> {st1.get('os_pid')}")
    assert not fresh, (f"ATTACK SUCCEEDED: a first install ran over the installed host after the app user deleted "
                       f"RELEASES and bin/{APP}: {fresh}; {summary}")
    assert st1.get("os_pid") == st0.get("os_pid"), f"the node was restarted: {summary}"
    assert "first-install" not in new_ops and not re.search(r"target1[^\n]*first install", out), \
        f"the host was taken for a fresh one (a first install planned and tried, then refused): {summary}"


# =========================================================================== A. migration from the previous layout

def _old_collection(env):
    old = Path("/tmp/hsp-old")
    if old.exists():
        shutil.rmtree(old)
    subprocess.run(["git", "clone", "-q", str(REPO), str(old)], check=True, capture_output=True, timeout=120)
    subprocess.run(["git", "-C", str(old), "checkout", "-q", OLD_COMMIT], check=True, capture_output=True, timeout=60)
    coll = env["tmp"] / "old-collections"
    (coll / "ansible_collections" / "beam").mkdir(parents=True, exist_ok=True)
    link = coll / "ansible_collections" / "beam" / "hotswap"
    if not link.exists():
        link.symlink_to(old)
    return old, coll


def test_a_host_of_the_previous_layout_upgrades_hot_keeping_its_state(fleet, env):
    """Acceptance A: target3 installed by cbeff31's collection (state in ROOT/.hotswap); the node holds state;
    the current collection deploys v2: hot (same OS pid), state kept, ROOT/.hotswap gone, the agent's directory
    beside ROOT holds env, cookie and the journal with the old lines first."""
    t = "target3"
    mig_cookie = "HSPMIGCOOKIE" + secrets.token_hex(8)
    old, coll = _old_collection(env)
    env["old"] = (old, coll)
    base = {
        "hotswap_app": APP, "hotswap_root": MIG_ROOT, "hotswap_target_hosts": t, "hotswap_service_manager": "daemon",
        "hotswap_env": {"SAMPLE_PORT": str(MIG_PORT), "RELEASE_NODE": MIG_NODE}, "hotswap_cookie": mig_cookie,
        "hotswap_health_timeout": 60, "hotswap_serial": ["100%"], "hotswap_report_dir": str(env["tmp"] / "reports"),
    }
    old_vars = dict(base, hotswap_source=env["srcs"]["1.0.0"], hotswap_build_store="/opt/hsp-old-store",
                    hotswap_artifact_dir=str(env["tmp"] / "old-artifacts"))
    run_env = {"ANSIBLE_COLLECTIONS_PATH": str(coll), "PYTHONPATH": str(coll) + os.pathsep + str(old / "tests")}
    rc, out, err, _r = _play(fleet, env, str(old / "playbooks" / "deploy.yml"), old_vars, "old collection: install v1",
                             run_env=run_env)
    assert rc == 0, f"setup: the collection at {OLD_COMMIT} could not install v1: " + _tail(out, err)
    legacy = _host_path(fleet, t, MIG_ROOT + "/.hotswap")
    assert os.path.isfile(os.path.join(legacy, "agent.py")), f"setup: {OLD_COMMIT} did not use ROOT/.hotswap"
    env["watch"].add(mig_cookie, "cookie")
    c = _client(fleet, t, MIG_PORT)
    c.add(7)
    c.add(35)
    count = c.get()
    c.close()
    r = fleet.run(t, ["/usr/bin/python3", MIG_ROOT + "/.hotswap/agent.py", "--root", MIG_ROOT, "--app", APP, "status"],
                  check=False, timeout=120)
    pid0 = json.loads(r.stdout)["os_pid"]
    assert pid0, r.stdout
    with open(os.path.join(legacy, "journal.jsonl")) as f:
        old_lines = [x for x in f.read().splitlines() if x.strip()]
    assert old_lines, "setup: the old agent wrote no journal"
    new_vars = dict(base, hotswap_source=env["srcs"]["2.0.0"], hotswap_build_store=STORE,
                    hotswap_artifact_dir=str(env["tmp"] / "artifacts"), hotswap_settle_seconds=1)
    rc, out, err, _r = _play(fleet, env, DEPLOY, new_vars, "current collection: v2 over the old layout")
    assert rc == 0, "the current collection could not upgrade a host of the previous layout: " + _tail(out, err)
    st = _status(fleet, t, root=MIG_ROOT)
    c = _client(fleet, t, MIG_PORT)
    got, vsn = c.get(), c.vsn()
    c.close()
    state = _host_path(fleet, t, agent_dir(MIG_ROOT))
    assert st.get("running") == st.get("permanent") == "2.0.0" and vsn == "2.0.0", st
    assert st.get("os_pid") == pid0, f"the upgrade was not hot: OS pid {pid0} -> {st.get('os_pid')}"
    assert got == count, f"the node's state was lost: counter {count} -> {got}"
    assert not os.path.lexists(legacy), f"{MIG_ROOT}/.hotswap is still there: {os.listdir(legacy)}"
    missing = [n for n in ("env", "cookie", "journal.jsonl", "agent.py") if not os.path.isfile(os.path.join(state, n))]
    assert not missing, f"{agent_dir(MIG_ROOT)} lacks {missing}: {os.listdir(state)}"
    with open(os.path.join(state, "journal.jsonl")) as f:
        new_lines = [x for x in f.read().splitlines() if x.strip()]
    assert new_lines[:len(old_lines)] == old_lines, "the journal's old lines were not kept first"
    assert len(new_lines) > len(old_lines)
    with open(os.path.join(state, "env")) as f:
        assert "RELEASE_NODE=" + MIG_NODE in f.read()
    with open(os.path.join(state, "cookie")) as f:
        assert f.read().strip() == mig_cookie


def test_old_layout_agent_dir_replaced_by_the_app_user_is_never_run_as_root(fleet, env):
    """Item 2 on a host of the previous layout: the app user renames the root-owned ROOT/.hotswap away and makes
    its own with an agent.py; status.yml and a deploy with the current collection never run it as root."""
    t = "target3"
    old, coll = env.get("old") or _old_collection(env)
    base = {
        "hotswap_app": APP, "hotswap_root": MIG2_ROOT, "hotswap_target_hosts": t, "hotswap_service_manager": "daemon",
        "hotswap_env": {"SAMPLE_PORT": str(MIG2_PORT), "RELEASE_NODE": MIG2_NODE},
        "hotswap_cookie": "HSPMIG2COOKIE" + secrets.token_hex(8),
        "hotswap_health_timeout": 60, "hotswap_serial": ["100%"], "hotswap_report_dir": str(env["tmp"] / "reports"),
    }
    old_vars = dict(base, hotswap_source=env["srcs"]["1.0.0"], hotswap_build_store="/opt/hsp-old-store",
                    hotswap_artifact_dir=str(env["tmp"] / "old-artifacts"))
    run_env = {"ANSIBLE_COLLECTIONS_PATH": str(coll), "PYTHONPATH": str(coll) + os.pathsep + str(old / "tests")}
    rc, out, err, _r = _play(fleet, env, str(old / "playbooks" / "deploy.yml"), old_vars,
                             "old collection: install v1 (mig2)", run_env=run_env)
    assert rc == 0, f"setup: the collection at {OLD_COMMIT} could not install v1: " + _tail(out, err)
    legacy = MIG2_ROOT + "/.hotswap"
    r = attacks.as_user(fleet, t, USER, f"mv {legacy} {MIG2_ROOT}/.hotswap-away")
    moved = r.returncode == 0
    w = attacks.write_as(fleet, t, USER, legacy + "/agent.py", PLANTED_AGENT.format(rec=REC + "/agent2"))
    for n, body in (("node.erl", "io:format(\"planted~n\").\n"), ("node.exs", "IO.puts(:planted)\n"), ("env", "LD_PRELOAD=/opt/hsp-rec/evil.so\n"),
                    ("journal.jsonl", "{}\n"), ("VERSION", "1.1.0\n")):
        attacks.write_as(fleet, t, USER, legacy + "/" + n, body, mode="644")
    try:
        runs = {}
        runs["status.yml"] = _status_play(fleet, env, "status.yml (old layout replaced)", root=MIG2_ROOT, pattern=t)[0]
        new_vars = dict(base, hotswap_source=env["srcs"]["2.0.0"], hotswap_build_store=STORE,
                        hotswap_artifact_dir=str(env["tmp"] / "artifacts"), hotswap_settle_seconds=1)
        runs["deploy"] = _play(fleet, env, DEPLOY, new_vars, "deploy v2 (old layout replaced)")[0]
        rec = attacks.read_record(_host_path(fleet, t, REC + "/agent2"))
        print(f"\nold layout replaced: moved away {moved} ({r.stderr.strip()}), planted {w.returncode == 0}, "
              f"records {rec}, runs {runs}")
        assert not (rec and "0" in rec), (f"ATTACK SUCCEEDED: the agent.py the app user put in {legacy} (after "
                                          f"moving the root's away: {moved}) ran as root: records {rec}; runs {runs}")
        assert rec is None, f"the planted agent.py ran (uids {rec}): the controller ran a file of the release root"
        env_file = _host_path(fleet, t, agent_dir(MIG2_ROOT) + "/env")
        if os.path.exists(env_file):
            assert "LD_PRELOAD" not in Path(env_file).read_text(), \
                "ATTACK SUCCEEDED: the app user's ROOT/.hotswap/env was taken as the node's environment"
    finally:
        st = {}
        for a in (agent_dir(MIG2_ROOT) + "/agent.py", MIG2_ROOT + "/.hotswap-away/agent.py"):
            if os.path.exists(_host_path(fleet, t, a)):
                r = fleet.run(t, ["/usr/bin/python3", a, "--root", MIG2_ROOT, "--app", APP, "status"], check=False)
                try:
                    st = json.loads(r.stdout)
                except ValueError:
                    continue
                if st.get("os_pid"):
                    break
        if st.get("os_pid"):
            _kill_pid(st["os_pid"])


# =========================================================================== 13. first install into foreign dirs (5)

@pytest.mark.bad_input
def test_a_root_below_a_directory_the_app_user_can_write_is_refused(fleet, env):
    """The agent's directory sits beside ROOT: a parent the app user owns (it could rename the agent's directory
    and plant its own) is refused before anything is made there."""
    t = "target3"
    parent = "/opt/hsp-userdir"
    p = _host_path(fleet, t, parent)
    os.makedirs(p, exist_ok=True)
    os.chown(p, attacks.uid_of(USER), pwd.getpwnam(USER).pw_gid)
    os.chmod(p, 0o755)
    rc, out, err, recap = _deploy(fleet, env, "1.0.0", "first install below an app-owned dir",
                                  hotswap_root=parent + "/app", hotswap_target_hosts=t,
                                  hotswap_env={"SAMPLE_PORT": str(P3_PORT), "RELEASE_NODE": P3_NODE})
    made = sorted(os.listdir(p))
    st = _status(fleet, t, root=parent + "/app") if "app" in made and os.path.exists(
        os.path.join(p, ".hotswap", "app", "agent.py")) else {}
    if st.get("os_pid"):
        _kill_pid(st["os_pid"])
    shutil.rmtree(p, ignore_errors=True)
    assert not made, (f"ATTACK SUCCEEDED: the agent made {made} in {parent}, a directory the app user owns (it can "
                      f"rename the agent's directory there): deploy rc {rc}: " + _failed_msgs(out)[-1500:])
    assert rc != 0 and parent in _failed_msgs(out), "a root below an app-owned directory was not refused: " + \
        _tail(out, err)


@pytest.mark.bad_input
def test_first_install_into_a_system_directory_is_refused_and_chowns_nothing(fleet, env):
    """Item 5: hotswap_root=/opt (other programs' files: a setuid decoy) is refused; nothing is chowned, the
    setuid bit is kept, nothing is made."""
    t = "target3"
    suid = _host_path(fleet, t, "/opt/decoy-suid")
    with open(suid, "w") as f:
        f.write("#!/bin/sh\necho decoy\n")
    os.chown(suid, 0, 0)
    os.chmod(suid, 0o4755)
    had_root_hotswap = os.path.lexists("/.hotswap")
    skip = ["mig/tmp", ".hotswap/mig", "mig2", ".hotswap/mig2", REC[len("/opt/"):]]
    before = attacks.snapshot(fleet.opt_dir(t), skip=skip, contents=True)
    rc, out, err, recap = _deploy(fleet, env, "1.0.0", "first install into /opt", hotswap_root="/opt",
                                  hotswap_target_hosts=t,
                                  hotswap_env={"SAMPLE_PORT": str(P3_PORT), "RELEASE_NODE": P3_NODE})
    after = attacks.snapshot(fleet.opt_dir(t), skip=skip, contents=True)
    made_root_hotswap = not had_root_hotswap and os.path.lexists("/.hotswap")
    if made_root_hotswap:                      # the state dir of ROOT=/opt would be /.hotswap/opt
        shutil.rmtree("/.hotswap/opt", ignore_errors=True)
        with_other = os.listdir("/.hotswap")
        if not with_other:
            os.rmdir("/.hotswap")
    st = os.lstat(suid)
    diff = attacks.diff_snapshots(before, after)
    mig_state = _host_path(fleet, t, agent_dir(MIG_ROOT))
    opt = fleet.opt_dir(t)
    if (os.lstat(opt).st_uid, stat.S_IMODE(os.lstat(opt).st_mode)) != (0, 0o755):   # put the host's /opt back
        os.chown(opt, 0, 0)
        os.chmod(opt, 0o755)
    problems = []
    if not (st.st_mode & stat.S_ISUID and st.st_uid == 0):
        problems.append(f"the setuid decoy was taken: uid {st.st_uid} mode {oct(st.st_mode)}")
    if diff:
        problems.append(f"the host's /opt changed: {diff[:20]}")
    if not os.path.isdir(mig_state):
        problems.append(f"{agent_dir(MIG_ROOT)} (another root's agent directory) is gone: the agent for ROOT=/opt "
                        f"took /opt/.hotswap for its own legacy ROOT/.hotswap")
    if made_root_hotswap:
        problems.append("a /.hotswap directory was made on the host's /")
    assert not problems, ("ATTACK SUCCEEDED: a first install with hotswap_root=/opt: " + "; ".join(problems)
                          + f"; deploy rc {rc}: " + _failed_msgs(out)[-1500:])
    assert rc != 0, "a first install into /opt was accepted: " + _tail(out, err)
    assert "/opt" in _failed_msgs(out) and "internal error" not in out, _failed_msgs(out)[-2000:]


def test_first_install_follows_no_planted_top_level_symlink(fleet, env):
    """Item 5: an empty release root the admin gave the app user; the app user plants lib, releases and bin as
    links to a root-owned directory; the first install writes nothing there."""
    t = "target3"
    decoy = _host_path(fleet, t, "/opt/decoy-lib")
    os.makedirs(decoy, exist_ok=True)
    os.chmod(decoy, 0o755)
    Path(decoy, "keep").write_text("decoy\n")
    os.chmod(Path(decoy, "keep"), 0o600)
    root = _host_path(fleet, t, P3_ROOT)
    os.makedirs(root, exist_ok=True)
    os.chown(root, attacks.uid_of(USER), pwd.getpwnam(USER).pw_gid)
    os.chmod(root, 0o750)
    for n in ("lib", "releases", "bin"):
        r = attacks.as_user(fleet, t, USER, f"ln -sfn /opt/decoy-lib {P3_ROOT}/{n}")
        assert r.returncode == 0, r.stderr
    before = attacks.snapshot(decoy, contents=True)
    rc, out, err, recap = _deploy(fleet, env, "1.0.0", "first install over planted links", hotswap_root=P3_ROOT,
                                  hotswap_target_hosts=t,
                                  hotswap_env={"SAMPLE_PORT": str(P3_PORT), "RELEASE_NODE": P3_NODE})
    after = attacks.snapshot(decoy, contents=True)
    installed = os.path.exists(_host_path(fleet, t, agent_dir(P3_ROOT) + "/agent.py"))
    st = _status(fleet, t, root=P3_ROOT) if installed else {}
    if st.get("os_pid"):
        _kill_pid(st["os_pid"])
    shutil.rmtree(root, ignore_errors=True)
    shutil.rmtree(_host_path(fleet, t, agent_dir(P3_ROOT)), ignore_errors=True)
    diff = attacks.diff_snapshots(before, after)
    assert not diff, f"ATTACK SUCCEEDED: the first install wrote through a planted top-level link: {diff[:20]}"
    assert "internal error" not in out, _tail(out, err)


# =========================================================================== 14. ansible_connection=local (12)

def test_a_target_that_is_the_controller_itself(fleet, env):
    """Item 12: inventory host `local ansible_connection=local`, hotswap_root under a fresh root-owned directory
    in /tmp: status.yml, the first deploy and a hot deploy work."""
    top = tempfile.mkdtemp(prefix="hsp-local-", dir="/tmp")
    os.chmod(top, 0o755)           # the node user must reach its root; only root may write here
    root = top + "/app"
    inv = env["tmp"] / "local-inventory.ini"
    lines = Path(fleet.inventory_path).read_text().splitlines()
    build = [line for line in lines if line.startswith("build1 ")]
    inv.write_text("[hotswap_build]\n" + "\n".join(build) + "\n\n[hotswap_targets]\n"
                   "local ansible_connection=local ansible_python_interpreter=/usr/bin/python3\n\n"
                   "[all:vars]\n"
                   + "\n".join(line for line in lines if line.startswith("ansible_control_path_dir")) + "\n")
    lv = {"hotswap_app": APP, "hotswap_root": root, "hotswap_target_hosts": "local", "hotswap_build_store": STORE,
          "hotswap_artifact_dir": str(env["tmp"] / "artifacts"), "hotswap_report_dir": str(env["tmp"] / "reports"),
          "hotswap_env": {"SAMPLE_PORT": str(LOCAL_PORT), "RELEASE_NODE": LOCAL_NODE},
          "hotswap_service_manager": "daemon", "hotswap_cookie": env["cookie"], "hotswap_health_timeout": 60,
          "hotswap_settle_seconds": 1}
    agent = ["/usr/bin/python3", agent_dir(root) + "/agent.py", "--root", root, "--app", APP, "status"]

    def play(pb, vsn, label):
        keep = ("hotswap_app", "hotswap_root", "hotswap_target_hosts")
        e = dict(lv, hotswap_source=env["srcs"][vsn]) if vsn else {k: lv[k] for k in keep}
        vf = env["tmp"] / ("local-%s.json" % label.replace(" ", "-"))
        vf.write_text(json.dumps(e))
        t0 = time.monotonic()
        p = subprocess.run([str(ANSIBLE_PLAYBOOK), "-i", str(inv), pb, "-e", "@" + str(vf)], env=ansible_env(fleet),
                           capture_output=True, text=True, timeout=1200, cwd=str(REPO), stdin=subprocess.DEVNULL,
                           check=False)
        env["timings"]["local: " + label] = time.monotonic() - t0
        return p.returncode, p.stdout, p.stderr

    def status():
        r = subprocess.run(agent, capture_output=True, text=True, timeout=120, check=False)
        return json.loads(r.stdout)

    pid = None
    try:
        rc, out, err = play(DEPLOY, "1.0.0", "first deploy")
        assert rc == 0, "first deploy to ansible_connection=local failed: " + _tail(out, err)
        st = status()
        pid = st.get("os_pid")
        assert st.get("running") == "1.0.0" and pid, st
        rc, out, err = play(STATUS, None, "status")
        assert rc == 0, "status.yml on ansible_connection=local failed: " + _tail(out, err)
        rc, out, err = play(DEPLOY, "2.0.0", "hot deploy")
        assert rc == 0, "hot deploy on ansible_connection=local failed: " + _tail(out, err)
        st = status()
        assert st.get("running") == st.get("permanent") == "2.0.0", st
        assert st.get("os_pid") == pid, f"not hot: pid {pid} -> {st.get('os_pid')}"
        assert sample.SampleClient("127.0.0.1", LOCAL_PORT).vsn() == "2.0.0"
    finally:
        try:
            pid = status().get("os_pid") or pid
        except Exception:
            pass
        if pid:
            _kill_pid(pid)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and os.path.exists(f"/proc/{pid}"):
                time.sleep(0.1)
        shutil.rmtree(top, ignore_errors=True)
