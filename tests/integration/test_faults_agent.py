"""Fault and bad-input tests of the host agent (roles/agent/files/hotswap_agent.py) against the
real sample app (tests/fixtures/sample_app) on loopback.

Packages are made by the collection's own Builder (plugins/module_utils/_build.py), as the build
role makes them: store A holds 1.0.0 and a 2.0.0 whose Counter.code_change raises
(FLAGS raise_code_change); store B shares A's 1.0.0 and holds a good 2.0.0.  Both 2.0.0 upgrade
packages carry a relup from 1.0.0.

Run: .venv/bin/pytest -m "fault or bad_input" tests/integration/test_faults_agent.py
Build the packages only: .venv/bin/python tests/integration/test_faults_agent.py /tmp/somedir
"""
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
AGENT = REPO / "roles" / "agent" / "files" / "hotswap_agent.py"
APP = "sample"
for p in (REPO / ".venv" / "collections", REPO / "tests"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

from hotswap_testlib import sample  # noqa: E402
from hotswap_testlib.requirements import require, require_root  # noqa: E402
from hotswap_testlib import local_user
from hotswap_testlib.layout import agent_dir

pytestmark = pytest.mark.integration


# --------------------------------------------------------------------------- packages (Builder)

def _run(argv, cwd=None, env=None):
    e = dict(os.environ)
    e.update(env or {})
    p = subprocess.run(argv, cwd=cwd, env=e, capture_output=True, text=True, check=False)
    return p.returncode, p.stdout, p.stderr


def _sha(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _build_one(builder, base, version, flags, bases):
    from ansible_collections.beam.hotswap.plugins.module_utils import _build
    src = sample.materialise(base / ("src-" + sample.build_dir_name(version, flags)), version, flags)
    arch = base / ("src-" + sample.build_dir_name(version, flags) + ".tar.gz")
    with tarfile.open(arch, "w:gz") as t:
        for n in sorted(os.listdir(src)):
            t.add(os.path.join(src, n), arcname=n)
    wd = builder.stage_archive(str(arch))
    _changed, manifest = builder.build(wd, "sha256:" + _build.tree_digest(wd), bases=bases)
    vdir = Path(builder.store.vdir(version))
    out = {"manifest": manifest, "full": str(vdir / manifest["artifacts"]["release"]["file"])}
    if "upgrade" in manifest["artifacts"]:
        out["upgrade"] = str(vdir / manifest["artifacts"]["upgrade"]["file"])
    return out


def build_packages(base: Path) -> dict:
    """Store A: 1.0.0 + 2.0.0 (raise_code_change); store B: A's 1.0.0 + a good 2.0.0."""
    from ansible_collections.beam.hotswap.plugins.module_utils import _build
    base = Path(base)
    done = base / "packages.json"
    if done.exists():
        return json.loads(done.read_text())
    base.mkdir(parents=True, exist_ok=True)
    a = _build.Builder(_run, str(base / "storeA"), APP)
    v1 = _build_one(a, base, "1.0.0", (), [])
    bad = _build_one(a, base, "2.0.0", ("raise_code_change",), ["1.0.0"])
    (base / "storeB" / APP).mkdir(parents=True, exist_ok=True)
    link = base / "storeB" / APP / "1.0.0"
    if not link.exists():
        os.symlink(a.store.vdir("1.0.0"), link)
    b = _build.Builder(_run, str(base / "storeB"), APP)
    good = _build_one(b, base, "2.0.0", (), ["1.0.0"])
    assert bad["manifest"]["edges"][0]["verdict"] == "hot", bad["manifest"]["edges"]
    assert good["manifest"]["edges"][0]["verdict"] == "hot", good["manifest"]["edges"]
    info = {"full1": v1["full"], "full1_sha": _sha(v1["full"]),
            "bad2": bad["upgrade"], "bad2_sha": _sha(bad["upgrade"]),
            "good2": good["upgrade"], "good2_sha": _sha(good["upgrade"]),
            "full2": good["full"], "full2_sha": _sha(good["full"]),
            "full1_release_dir": str(Path(a.store.vdir("1.0.0")) / "release")}
    done.write_text(json.dumps(info, indent=2))
    return info


# --------------------------------------------------------------------------- fixtures + helpers

def sagent(root, *args, env=None, timeout=240):
    cmd = [sys.executable, str(AGENT), "--root", str(root), "--app", APP, "--user", local_user.ensure_user(), *args]
    e = dict(os.environ, **(env or {}))
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=e, check=False)
    try:
        out = json.loads(p.stdout)
    except ValueError:
        raise AssertionError(f"agent printed no JSON: rc={p.returncode}\n{p.stdout}\n{p.stderr}")
    assert "Traceback" not in p.stderr, p.stderr
    return p.returncode, out


def tcp(port, *cmds):
    sample.wait_ping("127.0.0.1", port, timeout=30, expect=None)
    with sample.SampleClient("127.0.0.1", port, timeout=10) as c:
        return [c.cmd(x) for x in cmds]


def node_rpc(h, expr):
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELEASE_")}
    env.update(l.split("=", 1) for l in (agent_dir(h["root"]) / "env").read_text().split())
    p = subprocess.run([str(h["root"] / "bin" / APP), "rpc", expr], env=env, capture_output=True, text=True,
                       timeout=60, check=False)
    assert p.returncode == 0, p.stdout + p.stderr
    return p.stdout.strip()


def start_erl_vsn(root):
    return (Path(root) / "releases" / "start_erl.data").read_text().split()[1]


SM = ("--service-manager", "daemon")


@pytest.fixture(scope="session")
def pkgs(tmp_path_factory):
    require("mix", "erl")
    return build_packages(tmp_path_factory.mktemp("fault_pkgs"))


def _new_root(root: Path):
    port = sample.free_port()
    local_user.open_parents(root.parent)
    agent_dir(root).mkdir(parents=True, mode=0o711)
    (agent_dir(root) / "env").write_text(
        f"SAMPLE_PORT={port}\nRELEASE_DISTRIBUTION=name\nRELEASE_NODE=sample_{port}@127.0.0.1\n")
    (agent_dir(root) / "env").chmod(0o600)
    (agent_dir(root) / "cookie").write_text("hs_" + uuid.uuid4().hex)
    (agent_dir(root) / "cookie").chmod(0o400)
    return port


def _teardown_root(root: Path):
    rc, _out = sagent(root, "stop", *SM)
    pidf = agent_dir(root) / "pid"
    if rc != 0 and pidf.exists():  # last resort: only the pid the agent recorded for this root
        try:
            os.kill(int(pidf.read_text().strip()), 9)
        except (OSError, ValueError):
            pass


def _first_install(root, pkgs):
    rc, out = sagent(root, "first-install", "--version", "1.0.0", "--package", pkgs["full1"],
                     "--sha256", pkgs["full1_sha"], *SM)
    assert rc == 0 and out["host_version"] == "1.0.0", out.get("msg")


def _v1_node(root, pkgs):
    """A fresh root with 1.0.0 installed and running, for as long as the generator is open."""
    port = _new_root(root)
    try:
        _first_install(root, pkgs)
        yield {"root": root, "port": port, **pkgs}
    finally:
        _teardown_root(root)


@pytest.fixture
def host(pkgs, tmp_path):
    yield from _v1_node(tmp_path / "root", pkgs)


@pytest.fixture(scope="module")
def shared_host(pkgs, tmp_path_factory):
    """One v1 node for the bad-input tests (which, by definition, change nothing)."""
    yield from _v1_node(tmp_path_factory.mktemp("bad_input") / "root", pkgs)


def _status(root):
    rc, st = sagent(root, "status")
    assert rc == 0, st
    return st


def _hot(h, which, *extra, env=None):
    return sagent(h["root"], "hot", "--version", "2.0.0", "--package", h[which], "--sha256", h[which + "_sha"],
                  *extra, env=env)


# --------------------------------------------------------------------------- 1. code_change rehearsal

@pytest.mark.fault
def test_rehearsal_refuses_raising_code_change_and_keeps_state(host):
    root, port = host["root"], host["port"]
    assert tcp(port, "ADD 5", "ADD 7", "STATE") == ["OK 5", "OK 12", "tuple 12 2"]
    st0 = _status(root)
    rc, out = _hot(host, "bad2")
    print("\nREFUSED:", json.dumps({k: out.get(k) for k in ("msg", "rehearse_ms", "total_ms", "stage")}))
    assert rc == 1 and out["failed"] is True and out["stage"] == "rehearse", out
    msg = out["msg"]
    assert "Sample.Counter" in msg and "RuntimeError" in msg and "code_change deliberately raised" in msg, msg
    assert ("rehearsed on a copy of the live state; nothing was installed; the host keeps 1.0.0 and its state"
            in msg), msg
    assert out["host_version"] == "1.0.0" and out["changed"] is False and isinstance(out["rehearse_ms"], float)
    # the state really survived (over TCP, not just the pid), and so did the version
    assert tcp(port, "STATE", "VSN", "CODE") == ["tuple 12 2", "1.0.0", "v1"]
    st = _status(root)
    assert (st["os_pid"], st["running"], st["permanent"]) == (st0["os_pid"], "1.0.0", "1.0.0"), st
    assert [r["version"] for r in st["releases"]] == ["1.0.0"], st
    assert start_erl_vsn(root) == "1.0.0"
    assert not (root / "releases" / "2.0.0").exists() and not (root / "lib" / "sample-2.0.0").exists()
    assert not (root / "releases" / "sample-2.0.0.rel").exists()
    # an Agent that claims Counter as its module: release_handler would call
    # Agent.Server.code_change(1, state, []), which raises (Extra must be a fun) -> refused too
    node_rpc(host, 'spec = %{id: :hs_probe, modules: [Sample.Counter], start: {Agent, :start_link, [fn -> 0 end]}}; '
                   '{:ok, _} = Supervisor.start_child(Sample.Sup, spec)')
    rc, out = _hot(host, "good2")
    assert rc == 1 and out["stage"] == "rehearse" and "Agent.Server" in out["msg"], out
    assert tcp(port, "STATE", "VSN") == ["tuple 12 2", "1.0.0"]
    # a process whose state holds a pid, a port and an ETS table (and claims Counter as its module):
    # the rehearsal runs on a copy, with a warning
    node_rpc(host, ':ok = Supervisor.terminate_child(Sample.Sup, :hs_probe); '
                   ':ok = Supervisor.delete_child(Sample.Sup, :hs_probe); '
                   'keeper = spawn(fn -> Process.sleep(:infinity) end); '
                   '{:ok, s} = :gen_udp.open(0); :ok = :gen_udp.controlling_process(s, keeper); '
                   't = :ets.new(:hs_probe, [:public, {:heir, keeper, nil}]); '
                   'spec = %{id: :hs_probe, modules: [Sample.Counter], '
                   '         start: {GenServer, :start_link, [Sample.Conn, {s, t, keeper}]}}; '
                   '{:ok, _} = Supervisor.start_child(Sample.Sup, spec)')
    # the same version from another package is not blocked by the refused one
    rc, out = _hot(host, "good2")
    print("HOT with rehearsal:", json.dumps({k: out.get(k) for k in ("rehearse_ms", "install_ms", "total_ms",
                                                                     "rpc_ms", "rehearsal_warnings")}))
    assert rc == 0 and out["host_version"] == "2.0.0", out
    assert out["rehearse_ms"] > 0 and len(out["rehearsed"]) >= 2, out
    warns = " | ".join(out["rehearsal_warnings"])
    assert "Sample.Counter state holds" in warns and "ran on a copy" in warns, warns
    assert "a pid" in warns and "a port" in warns and "ETS table" in warns, warns
    assert tcp(port, "STATE", "VSN", "CODE") == ["map 12 2", "2.0.0", "v2"]
    st = _status(root)
    assert (st["os_pid"], st["running"], st["permanent"]) == (st0["os_pid"], "2.0.0", "2.0.0"), st
    assert start_erl_vsn(root) == "2.0.0"


# --------------------------------------------------------------------------- 2. node killed

@pytest.mark.fault
def test_node_killed_between_install_and_commit(host):
    root, port = host["root"], host["port"]
    tcp(port, "ADD 3")
    pid = _status(root)["os_pid"]
    rc, out = _hot(host, "good2", "--check", f"cmd:/bin/kill -9 {pid}", "--timeout", "20")
    print("\nKILLED before commit:", json.dumps({k: out.get(k) for k in ("msg", "total_ms", "reverted")}))
    assert rc == 1 and out["failed"] is True, out
    assert out["reverted"] is True and out["host_version"] == "1.0.0" and out["state_lost"] is True, out
    assert "died" in out["msg"], out
    st = _status(root)
    assert st["node_up"] and st["os_pid"] != pid and (st["running"], st["permanent"]) == ("1.0.0", "1.0.0"), st
    assert start_erl_vsn(root) == "1.0.0"
    assert tcp(port, "PING", "VSN", "STATE") == ["PONG", "1.0.0", "tuple 0 0"]
    rc, out = _hot(host, "good2")  # rerun converges
    assert rc == 0 and out["host_version"] == "2.0.0", out
    assert tcp(port, "VSN") == ["2.0.0"] and start_erl_vsn(root) == "2.0.0"


@pytest.mark.fault
def test_node_killed_before_install(host):
    root, port = host["root"], host["port"]
    pid = _status(root)["os_pid"]
    rc, out = _hot(host, "good2", env={"HOTSWAP_AGENT_FAULT": "before_install"})
    print("\nKILLED before install:", json.dumps({k: out.get(k) for k in ("msg", "total_ms")}))
    assert rc == 1 and out["failed"] is True and out["stage"] == "install", out
    assert out["host_version"] == "1.0.0" and out["reverted"] is True and out["node_up"] is True, out
    st = _status(root)
    assert st["node_up"] and st["os_pid"] != pid and (st["running"], st["permanent"]) == ("1.0.0", "1.0.0"), st
    assert tcp(port, "PING", "VSN") == ["PONG", "1.0.0"]
    rc, out = _hot(host, "good2")
    assert rc == 0 and out["host_version"] == "2.0.0", out
    assert tcp(port, "VSN", "STATE") == ["2.0.0", "map 0 0"]


@pytest.mark.fault
def test_node_killed_right_after_commit_fails_the_settle_window_and_is_restored(host):
    root, port = host["root"], host["port"]
    pid = _status(root)["os_pid"]
    rc, out = _hot(host, "good2", "--settle", "2", env={"HOTSWAP_AGENT_FAULT": "after_commit"})
    print("\nKILLED after commit:", json.dumps({k: out.get(k) for k in ("msg", "stage", "total_ms")}))
    assert rc == 1 and out["failed"] is True and out["stage"] == "settle", out
    assert out["reverted"] is True and out["host_version"] == "1.0.0" and out["state_lost"] is True, out
    assert "died" in out["msg"] and "after 2.0.0 was committed" in out["msg"], out
    st = _status(root)
    assert st["node_up"] and st["os_pid"] != pid and (st["running"], st["permanent"]) == ("1.0.0", "1.0.0"), st
    assert start_erl_vsn(root) == "1.0.0"
    assert tcp(port, "PING", "VSN") == ["PONG", "1.0.0"]
    rc, out = _hot(host, "good2", "--settle", "1")     # a rerun converges, and watches its own commit
    assert rc == 0 and out["host_version"] == "2.0.0" and out["settle_ms"] >= 1000, out
    assert tcp(port, "VSN") == ["2.0.0"]


def test_without_a_settle_window_a_node_killed_after_commit_goes_unseen_by_the_agent(host):
    # what the settle window is for: the same fault with --settle 0 (the agent's own default) answers ok
    rc, out = _hot(host, "good2", env={"HOTSWAP_AGENT_FAULT": "after_commit"})
    assert rc == 0 and out["host_version"] == "2.0.0" and "settle_ms" not in out, out
    assert not _status(host["root"])["node_up"]


@pytest.mark.fault
def test_node_killed_right_after_a_cold_start_fails_the_settle_window_and_the_old_release_comes_back(host):
    root, port = host["root"], host["port"]
    rc, out = sagent(root, "cold", "--version", "2.0.0", "--package", host["full2"], "--sha256", host["full2_sha"],
                     "--settle", "2", *SM, env={"HOTSWAP_AGENT_FAULT": "after_start"})
    print("\nKILLED after a cold start:", json.dumps({k: out.get(k) for k in ("msg", "stage", "total_ms")}))
    assert rc == 1 and out["failed"] is True and out["stage"] == "settle", out
    assert out["reverted"] is True and out["host_version"] == "1.0.0", out
    assert "died" in out["msg"] and "after 2.0.0 was started" in out["msg"], out
    st = _status(root)
    assert st["node_up"] and (st["running"], st["permanent"]) == ("1.0.0", "1.0.0"), st
    assert start_erl_vsn(root) == "1.0.0"
    assert tcp(port, "PING", "VSN") == ["PONG", "1.0.0"]


@pytest.mark.fault
def test_unknown_fault_value_is_ignored(host):
    rc, out = _hot(host, "good2", env={"HOTSWAP_AGENT_FAULT": "something_else"})
    assert rc == 0 and out["host_version"] == "2.0.0", out


# --------------------------------------------------------------------------- 5. disk full

@pytest.fixture
def tmpfs_host(pkgs, tmp_path):
    require_root("it mounts a tmpfs")
    require("mount")
    root = tmp_path / "tmpfs_root"
    root.mkdir()
    local_user.open_parents(root)
    size = sum(os.lstat(os.path.join(dp, f)).st_blocks * 512 for dp, _d, fs in os.walk(pkgs["full1_release_dir"])
               for f in fs)
    size_mb = size // (1 << 20) + 4  # the release + the agent's state, logs, a little room
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", str(root)],
                       capture_output=True, text=True, check=False)
    if r.returncode != 0:
        pytest.fail(f"cannot mount a tmpfs: {r.stderr.strip()}", pytrace=False)
    try:
        port = _new_root(root)
        _first_install(root, pkgs)
        yield {"root": root, "port": port, "size_mb": size_mb, **pkgs}
    finally:
        try:
            _teardown_root(root)
        finally:
            if subprocess.run(["umount", str(root)], check=False).returncode != 0:
                subprocess.run(["umount", "-l", str(root)], check=False)


@pytest.mark.fault
def test_disk_full_during_unpack(tmpfs_host):
    h = tmpfs_host
    root, port = h["root"], h["port"]
    tcp(port, "ADD 4")
    st = os.statvfs(root)
    free = st.f_bavail * st.f_frsize
    filler = root / "filler"  # the tmpfs is the release root; the agent's directory is beside it
    with open(filler, "wb") as f:
        f.truncate(0)
        left = free - 20 * 1024
        chunk = b"\0" * (1 << 20)
        while left > 0:
            f.write(chunk[:min(left, len(chunk))])
            left -= len(chunk)
    st = os.statvfs(root)
    assert st.f_bavail * st.f_frsize <= 64 * 1024
    before = sample.tree_listing(root)
    rc, out = _hot(h, "good2")
    print("\nDISK FULL:", json.dumps({k: out.get(k) for k in ("msg", "space_needed_kb", "space_free_kb")}))
    assert rc == 1 and out["failed"] is True, out
    assert "no space left on device while unpacking" in out["msg"] and "nothing changed" in out["msg"], out
    assert sample.tree_listing(root) == before
    assert not [n for n in os.listdir(agent_dir(root)) if n.startswith("staging")]
    assert not (root / "releases" / "2.0.0").exists() and not (root / "lib" / "sample-2.0.0").exists()
    st = _status(root)
    assert (st["running"], st["permanent"]) == ("1.0.0", "1.0.0") and start_erl_vsn(root) == "1.0.0"
    assert tcp(port, "STATE") == ["tuple 4 1"]
    filler.unlink()
    rc, out = _hot(h, "good2")
    assert rc == 0 and out["host_version"] == "2.0.0", out
    assert tcp(port, "STATE", "VSN") == ["map 4 1", "2.0.0"]


# --------------------------------------------------------------------------- 8. RELEASES / start_erl.data

@pytest.mark.fault
def test_corrupt_releases_status_then_hot_repairs(host):
    root, port = host["root"], host["port"]
    tcp(port, "ADD 2")
    (root / "releases" / "RELEASES").write_text("garbage {{{ [not, erlang\n")
    rc, st = sagent(root, "status")
    assert rc == 0 and st["releases_error"] and "RELEASES" in st["releases_error"], st
    assert st["node_up"] is True and st["running"] == "1.0.0", st
    rc, out = _hot(host, "good2")
    assert rc == 0 and out["host_version"] == "2.0.0", out
    assert any("RELEASES" in r for r in out["repaired"]), out
    assert tcp(port, "STATE", "VSN") == ["map 2 1", "2.0.0"]
    st = _status(root)
    assert st["releases_error"] is None and (st["running"], st["permanent"]) == ("2.0.0", "2.0.0"), st
    # the repaired file is one release_handler can work with: a hot downgrade
    rc, rv = sagent(root, "revert", "--version", "1.0.0")
    assert rc == 0 and rv["mode"] == "hot", rv
    assert tcp(port, "STATE", "VSN") == ["tuple 2 1", "1.0.0"]


@pytest.mark.fault
def test_start_repairs_start_erl_data_naming_a_removed_version(host):
    root, port = host["root"], host["port"]
    rc, out = sagent(root, "stop", *SM)
    assert rc == 0, out
    (root / "releases" / "start_erl.data").write_text("13.1.5 9.9.9\n")
    rc, out = sagent(root, "start", *SM)
    assert rc == 0 and out["host_version"] == "1.0.0", out.get("msg")
    assert any("start_erl.data" in r and "9.9.9" in r for r in out["repaired"]), out
    assert start_erl_vsn(root) == "1.0.0"
    assert tcp(port, "VSN") == ["1.0.0"]
    # and with RELEASES unreadable too, the node down: rebuilt from disk
    rc, out = sagent(root, "stop", *SM)
    (root / "releases" / "RELEASES").write_text("[{release, broken")
    (root / "releases" / "start_erl.data").write_text("13.1.5 7.7.7\n")
    rc, out = sagent(root, "start", *SM)
    assert rc == 0 and out["host_version"] == "1.0.0", out.get("msg")
    assert any("RELEASES" in r for r in out["repaired"]) and any("7.7.7" in r for r in out["repaired"]), out
    assert _status(root)["permanent"] == "1.0.0"


# --------------------------------------------------------------------------- bad input

def _retar(src, dst, edit=None, extra=()):
    """Copy package src to dst, passing each member through edit(m, data) -> (m, data) | None."""
    with tarfile.open(src, "r:*") as s, tarfile.open(dst, "w:gz") as d:
        for m in s.getmembers():
            data = s.extractfile(m).read() if m.isfile() else None
            if edit:
                r = edit(m, data)
                if r is None:
                    continue
                m, data = r
            if data is not None:
                m.size = len(data)
            d.addfile(m, io.BytesIO(data) if data is not None else None)
        for m, data in extra:
            if data is not None:
                m.size = len(data)
            d.addfile(m, io.BytesIO(data) if data is not None else None)
    return dst, _sha(dst)


def _ti(name, kind=tarfile.REGTYPE, linkname=""):
    ti = tarfile.TarInfo(name)
    ti.type = kind
    ti.linkname = linkname
    ti.mode = 0o644
    return ti


def _rename_app(m, data):
    m.name = m.name.replace("sample-2.0.0.rel", "other-2.0.0.rel")
    return m, data


def _other_app_in_rel(m, data):
    if m.name.endswith("sample-2.0.0.rel"):
        data = data.replace(b'{"sample","2.0.0"}', b'{"other","2.0.0"}')
    return m, data


def _garbage_rel(m, data):
    if m.name.endswith("sample-2.0.0.rel"):
        data = b"{release, {\"sample\", \"2.0.0\"}, this is not erlang"
    return m, data


BAD_PACKAGES = {
    "absolute": (None, [(_ti("/tmp/hotswap-evil"), b"x")], "absolute"),
    "dotdot": (None, [(_ti("releases/2.0.0/../../../escape.txt"), b"x")], ".."),
    "symlink_abs": (None, [(_ti("lib/sample-2.0.0/evil", tarfile.SYMTYPE, "/etc/passwd"), None)], "outside"),
    "symlink_up": (None, [(_ti("lib/sample-2.0.0/evil", tarfile.SYMTYPE, "../../../../etc"), None)], "outside"),
    "hardlink_up": (None, [(_ti("lib/sample-2.0.0/hl", tarfile.LNKTYPE, "../etc/passwd"), None)], "outside"),
    "hardlink_abs": (None, [(_ti("lib/sample-2.0.0/hl", tarfile.LNKTYPE, "/etc/passwd"), None)], "outside"),
    "chardev": (None, [(_ti("lib/sample-2.0.0/dev", tarfile.CHRTYPE), None)], "device"),
    "fifo": (None, [(_ti("lib/sample-2.0.0/fifo", tarfile.FIFOTYPE), None)], "device"),
    "other_app_name": (_rename_app, [], "sample-2.0.0.rel"),
    "other_app_in_rel": (_other_app_in_rel, [], "describes other 2.0.0"),
    "malformed_rel": (_garbage_rel, [], "unreadable"),
}


@pytest.mark.bad_input
@pytest.mark.parametrize("kind", sorted(BAD_PACKAGES))
def test_bad_package_exit_2_nothing_changed(shared_host, tmp_path, kind):
    h = shared_host
    root, port = h["root"], h["port"]
    edit, extra, why = BAD_PACKAGES[kind]
    pkg, sha = _retar(h["good2"], tmp_path / f"{kind}.tar.gz", edit, extra)
    before, st0 = sample.tree_listing(root), _status(root)
    tcp(port, "ADD 1")
    total = tcp(port, "GET")[0]
    for cmd in ("hot", "unpack"):
        rc, out = sagent(root, cmd, "--version", "2.0.0", "--package", str(pkg), "--sha256", sha)
        assert rc == 2 and out["failed"] is True and out["msg"].startswith("bad input: package refused"), out
        assert why in out["msg"] and "nothing changed" in out["msg"], out
    assert sample.tree_listing(root) == before
    assert not Path("/tmp/hotswap-evil").exists() and not (root.parent / "escape.txt").exists()
    st = _status(root)
    assert (st["os_pid"], st["running"], st["permanent"]) == (st0["os_pid"], "1.0.0", "1.0.0")
    assert tcp(port, "GET") == [total]


@pytest.mark.bad_input
@pytest.mark.parametrize("vsn", ["2.0.0; rm -rf /", "$(id)", "`id`", "2.0.0|x", "../2.0.0", "2.0.0/..", "a/b",
                                 "2.0.0\n", "..", "1..2", "-rf", ".hidden", "", "2.0.0 ", "x" * 65])
def test_bad_versions_exit_2(shared_host, vsn):
    root = shared_host["root"]
    before = sample.tree_listing(root)
    for args in (("hot", "--package", shared_host["good2"], "--sha256", shared_host["good2_sha"]),
                 ("install",), ("commit",), ("revert",)):
        rc, out = sagent(root, args[0], "--version", vsn, *args[1:])
        assert rc == 2 and out["msg"].startswith("bad input"), (args, out)
    assert sample.tree_listing(root) == before


@pytest.mark.bad_input
@pytest.mark.parametrize("root", ["/", "//", "/.", "/opt/..", "relative/root", "./x", "/opt/../etc"])
def test_bad_roots_exit_2(root):
    p = subprocess.run([sys.executable, str(AGENT), "--root", root, "--app", APP, "stop"],
                       capture_output=True, text=True, timeout=60, check=False)
    out = json.loads(p.stdout)
    assert p.returncode == 2 and "--root" in out["msg"], out


@pytest.mark.bad_input
@pytest.mark.parametrize("app", ["Sample", "sam;ple", "../sample", "sample/x", "sample\n", ""])
def test_bad_app_names_exit_2(shared_host, app):
    p = subprocess.run([sys.executable, str(AGENT), "--root", str(shared_host["root"]), "--app", app, "status"],
                       capture_output=True, text=True, timeout=60, check=False)
    assert p.returncode == 2 and json.loads(p.stdout)["msg"].startswith("bad input")


if __name__ == "__main__":
    print(json.dumps(build_packages(Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/hotswap-fault-pkgs")), indent=2))
