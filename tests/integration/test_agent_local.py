"""Real-node tests of the host agent (roles/agent/files/hotswap_agent.py) on loopback.

A throwaway mix project (NOT the real sample app) is generated under a temp dir:
a GenServer counter whose state shape changes between 1.0.0 (an integer) and
2.0.0 (a map), `:sasl`, a hand-written appup, `:systools.make_relup/4` over the
two release trees, and an upgrade package in release_handler's format.

Run: .venv/bin/pytest -m integration tests/integration/test_agent_local.py
Build the fixture only (for poking at it by hand):
     .venv/bin/python tests/integration/test_agent_local.py /tmp/somedir
"""
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
import uuid
from pathlib import Path

import pytest

from hotswap_testlib import sample
from hotswap_testlib.requirements import require
from hotswap_testlib import local_user
from hotswap_testlib.layout import agent_dir

REPO = Path(__file__).resolve().parents[2]
AGENT = REPO / "roles" / "agent" / "files" / "hotswap_agent.py"
NODE_ERL = REPO / "roles" / "agent" / "files" / "hotswap_node.erl"
APP = "demo"

pytestmark = pytest.mark.integration

# --------------------------------------------------------------------------- fixture app

MIX_EXS = """
defmodule Demo.MixProject do
  use Mix.Project
  def project do
    [app: :demo, version: "@VSN@", elixir: "~> 1.14", start_permanent: true, deps: []]
  end
  def application do
    [extra_applications: [:logger, :sasl], mod: {Demo.Application, []}]
  end
end
"""

APPLICATION_EX = """
defmodule Demo.Application do
  use Application
  def start(_type, _args) do
    Supervisor.start_link([Demo.Counter], strategy: :one_for_one, name: Demo.Supervisor)
  end
end
"""

COUNTER_V1 = """
defmodule Demo.Counter do
  use GenServer
  @vsn "1"
  def start_link(_), do: GenServer.start_link(__MODULE__, 0, name: __MODULE__)
  def incr(n \\\\ 1), do: GenServer.call(__MODULE__, {:incr, n})
  def get, do: GenServer.call(__MODULE__, :get)
  def raw, do: :sys.get_state(__MODULE__)
  def code_version, do: 1
  @impl true
  def init(n), do: {:ok, n}
  @impl true
  def handle_call({:incr, k}, _from, n), do: {:reply, n + k, n + k}
  def handle_call(:get, _from, n), do: {:reply, n, n}
  @impl true
  def code_change({:down, _}, %{count: n}, _extra), do: {:ok, n}
  def code_change(_old, state, _extra), do: {:ok, state}
end
"""

COUNTER_V2 = """
defmodule Demo.Counter do
  use GenServer
  @vsn "2"
  def start_link(_), do: GenServer.start_link(__MODULE__, %{count: 0, upgraded: false}, name: __MODULE__)
  def incr(n \\\\ 1), do: GenServer.call(__MODULE__, {:incr, n})
  def get, do: GenServer.call(__MODULE__, :get)
  def raw, do: :sys.get_state(__MODULE__)
  def code_version, do: 2
  @impl true
  def init(s), do: {:ok, s}
  @impl true
  def handle_call({:incr, k}, _from, %{count: n} = s), do: {:reply, n + k, %{s | count: n + k}}
  def handle_call(:get, _from, %{count: n} = s), do: {:reply, n, s}
  @impl true
  def code_change({:down, _}, %{count: n}, _extra), do: {:ok, n}
  def code_change(_old, n, _extra) when is_integer(n), do: {:ok, %{count: n, upgraded: true}}
  def code_change(_old, s, _extra), do: {:ok, s}
end
"""

# v3: code_change from "2" raises -> release_handler restarts the VM in place (init:restart)
COUNTER_V3 = COUNTER_V2.replace('@vsn "2"', '@vsn "3"').replace(
    "  def code_change(_old, s, _extra), do: {:ok, s}",
    '  def code_change("2", _s, _extra), do: raise("boom in code_change")\n'
    "  def code_change(_old, s, _extra), do: {:ok, s}")

APPUP_V3 = """{"3.0.0",
 [{"2.0.0", [{update, 'Elixir.Demo.Counter', {advanced, []}}]}],
 [{"2.0.0", [{update, 'Elixir.Demo.Counter', {advanced, []}}]}]}.
"""

RUNTIME_EXS = """
import Config
config :demo, greeting: System.get_env("DEMO_GREETING", "unset")
"""

APPUP_V2 = """{"2.0.0",
 [{"1.0.0", [{update, 'Elixir.Demo.Counter', {advanced, []}}]}],
 [{"1.0.0", [{update, 'Elixir.Demo.Counter', {advanced, []}}]}]}.
"""


def _run(cmd, cwd=None, env=None, timeout=300):
    p = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    if p.returncode != 0:
        raise RuntimeError(f"{cmd} failed rc={p.returncode}\n{p.stdout}\n{p.stderr}")
    return p.stdout


def _mix_release(src: Path, vsn: str, counter: str) -> Path:
    (src / "lib" / "demo").mkdir(parents=True, exist_ok=True)
    (src / "config").mkdir(exist_ok=True)
    (src / "mix.exs").write_text(MIX_EXS.replace("@VSN@", vsn))
    (src / "lib" / "demo" / "application.ex").write_text(APPLICATION_EX)
    (src / "lib" / "demo" / "counter.ex").write_text(counter)
    (src / "config" / "runtime.exs").write_text(RUNTIME_EXS)
    env = dict(os.environ, MIX_ENV="prod", HEX_OFFLINE="1")
    _run(["mix", "release", "--overwrite", "--quiet"], cwd=src, env=env)
    return src / "_build" / "prod" / "rel" / APP


def _relup_and_package(base: Path, old: Path, new: Path, old_vsn: str, vsn: str, appup: str) -> Path:
    (new / "lib" / f"demo-{vsn}" / "ebin" / "demo.appup").write_text(appup)
    paths = [str(p) for r in (old, new) for p in sorted((r / "lib").glob("*/ebin"))]
    erl = (
        "R = systools:make_relup(\"%s\", [\"%s\"], [\"%s\"], [{path, %s}, {outdir, \"%s\"}, silent]),"
        "io:format(\"~p~n\", [R]), case R of {ok,_,_,_} -> halt(0); _ -> halt(1) end."
        % (new / "releases" / vsn / APP, old / "releases" / old_vsn / APP,
           old / "releases" / old_vsn / APP, json.dumps(paths), new / "releases" / vsn)
    )
    _run(["erl", "-noshell", "-eval", erl])
    assert (new / "releases" / vsn / "relup").exists()
    # upgrade package in release_handler's format: releases/APP-VSN.rel, releases/VSN/, new lib dirs
    pkg = base / f"demo-{vsn}.tar.gz"
    with tarfile.open(pkg, "w:gz") as tf:
        tf.add(new / "releases" / vsn / f"{APP}.rel", arcname=f"releases/{APP}-{vsn}.rel")
        tf.add(new / "releases" / vsn, arcname=f"releases/{vsn}")
        tf.add(new / "lib" / f"demo-{vsn}", arcname=f"lib/demo-{vsn}")
    return pkg


def build_fixture(base: Path) -> dict:
    """Build v1, v2, v3 release trees, relups (1->2, 2->3) and upgrade packages under base."""
    base.mkdir(parents=True, exist_ok=True)
    rel1 = _mix_release(base / "src1", "1.0.0", COUNTER_V1)
    rel2 = _mix_release(base / "src2", "2.0.0", COUNTER_V2)
    rel3 = _mix_release(base / "src3", "3.0.0", COUNTER_V3)
    pkg = _relup_and_package(base, rel1, rel2, "1.0.0", "2.0.0", APPUP_V2)
    pkg3 = _relup_and_package(base, rel2, rel3, "2.0.0", "3.0.0", APPUP_V3)
    info = {
        "base": str(base), "rel1": str(rel1), "rel2": str(rel2), "package": str(pkg),
        "sha256": hashlib.sha256(pkg.read_bytes()).hexdigest(),
        "package3": str(pkg3), "sha256_3": hashlib.sha256(pkg3.read_bytes()).hexdigest(),
    }
    (base / "fixture.json").write_text(json.dumps(info))
    return info


def make_bad_packages(info: dict, outdir: Path) -> dict:
    pkg = Path(info["package"])
    tampered = outdir / "tampered.tar.gz"
    data = bytearray(pkg.read_bytes())
    data[len(data) // 2] ^= 0x01
    tampered.write_bytes(bytes(data))
    evil = outdir / "evil.tar.gz"
    with tarfile.open(evil, "w:gz") as tf:
        with tarfile.open(pkg, "r:gz") as src:
            for m in src.getmembers():
                tf.addfile(m, src.extractfile(m) if m.isfile() else None)
        payload = b"pwned\n"
        ti = tarfile.TarInfo("releases/2.0.0/../../../escape.txt")
        ti.size = len(payload)
        import io
        tf.addfile(ti, io.BytesIO(payload))
    return {
        "tampered": str(tampered),
        "evil": str(evil),
        "evil_sha256": hashlib.sha256(evil.read_bytes()).hexdigest(),
    }


def deploy_v1(info: dict, root: Path, node: str):
    """Lay out v1 as a first install would: tree, RELEASES (the node user's), the agent's env."""
    local_user.open_parents(root.parent)
    shutil.copytree(info["rel1"], root, symlinks=True)
    erl = (
        'ok = release_handler:create_RELEASES("", "%s/releases", "%s/releases/1.0.0/%s.rel", []), halt().'
        % (root, root, APP)
    )
    _run(["erl", "-noshell", "-eval", erl])
    local_user.chown_tree(root)
    hs = agent_dir(root)
    hs.mkdir(mode=0o711, parents=True)
    (hs / "env").write_text(f"RELEASE_NODE={node}\nDEMO_GREETING=hello-from-env\n")
    os.chmod(hs / "env", 0o600)


# --------------------------------------------------------------------------- helpers

def agent(root, *args, timeout=120):
    cmd = [sys.executable, str(AGENT), "--root", str(root), "--app", APP, "--user", local_user.ensure_user(), *args]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    try:
        out = json.loads(p.stdout)
    except ValueError:
        raise AssertionError(f"agent printed no JSON: rc={p.returncode}\n{p.stdout}\n{p.stderr}")
    assert "Traceback" not in p.stderr, p.stderr
    return p.returncode, out


def rpc(root, node, expr):
    env = dict(os.environ, RELEASE_NODE=node, DEMO_GREETING="hello-from-env")
    p = subprocess.run([str(root / "bin" / APP), "rpc", expr], env=env,
                       capture_output=True, text=True, timeout=60, check=False)
    assert p.returncode == 0, p.stdout + p.stderr
    return p.stdout.strip()


@pytest.fixture(scope="session")
def built(tmp_path_factory):
    require("mix", "erl")
    base = tmp_path_factory.mktemp("hsfixture")
    info = build_fixture(base)
    info.update(make_bad_packages(info, base))
    return info


@pytest.fixture
def node(built, tmp_path):
    root = tmp_path / "root"
    name = "hsd" + uuid.uuid4().hex[:8]
    deploy_v1(built, root, name)
    rc, out = agent(root, "start")
    assert rc == 0, out
    yield {"root": root, "name": name, **built}
    rc, out = agent(root, "stop")
    if rc != 0:  # last resort: kill only the pid the agent recorded for this root
        pidf = agent_dir(root) / "pid"
        if pidf.exists():
            try:
                os.kill(int(pidf.read_text().strip()), 9)
            except (OSError, ValueError):
                pass


def counter(n):
    return rpc(n["root"], n["name"], "IO.puts(inspect({Demo.Counter.get(), Demo.Counter.code_version(), Demo.Counter.raw()}))")


# --------------------------------------------------------------------------- tests

def test_status_v1(node):
    rc, st = agent(node["root"], "status")
    assert rc == 0, st
    assert st["node_up"] is True
    assert st["running"] == "1.0.0" and st["permanent"] == "1.0.0"
    assert isinstance(st["os_pid"], int) and st["os_pid"] > 0
    assert st["agent_version"] == "1.3.0"


def test_hot_keeps_state_then_revert(node):
    root = node["root"]
    rpc(root, node["name"], "Demo.Counter.incr(41)")
    _ign, st0 = agent(root, "status")
    t0 = time.monotonic()
    rc, out = agent(root, "hot", "--package", node["package"], "--sha256", node["sha256"],
                    "--version", "2.0.0")
    wall = (time.monotonic() - t0) * 1000
    assert rc == 0, out
    print("\nHOT figures:", json.dumps({k: out.get(k) for k in ("total_ms", "install_ms", "rpc_calls")}),
          "agent wall ms %.0f" % wall)
    assert out["changed"] is True and out["host_version"] == "2.0.0"
    assert out["rpc_calls"] == 1
    assert counter(node) == "{41, 2, %{count: 41, upgraded: true}}"
    # runtime config survived the hot upgrade
    assert rpc(root, node["name"], "IO.puts(Application.get_env(:demo, :greeting))") == "hello-from-env"
    _ign, st = agent(root, "status")
    assert st["os_pid"] == st0["os_pid"]
    assert st["running"] == "2.0.0" and st["permanent"] == "2.0.0"
    assert (root / "releases" / "start_erl.data").read_text().split()[1] == "2.0.0"
    assert (agent_dir(root) / "unpacked" / "2.0.0.sha256").read_text().strip() == node["sha256"]
    # idempotent: same package again is a no-op
    rc, again = agent(root, "hot", "--package", node["package"], "--sha256", node["sha256"],
                      "--version", "2.0.0")
    assert rc == 0 and again["changed"] is False, again
    rpc(root, node["name"], "Demo.Counter.incr(1)")
    # hot revert keeps state (down code_change)
    t0 = time.monotonic()
    rc, rv = agent(root, "revert", "--version", "1.0.0")
    assert rc == 0, rv
    print("REVERT figures:", json.dumps({k: rv.get(k) for k in ("total_ms", "rpc_calls", "mode")}),
          "agent wall ms %.0f" % ((time.monotonic() - t0) * 1000))
    assert rv["mode"] == "hot"
    assert counter(node) == "{42, 1, 42}"
    _ign, st = agent(root, "status")
    assert st["os_pid"] == st0["os_pid"]
    assert st["running"] == "1.0.0" and st["permanent"] == "1.0.0"
    assert (root / "releases" / "start_erl.data").read_text().split()[1] == "1.0.0"
    # second upgrade after a revert works too (distillery#495-style regressions)
    rc, out = agent(root, "hot", "--package", node["package"], "--sha256", node["sha256"],
                    "--version", "2.0.0")
    assert rc == 0, out
    assert counter(node) == "{42, 2, %{count: 42, upgraded: true}}"
    # journal: one line per op, no env values
    journal = (agent_dir(root) / "journal.jsonl").read_text()
    lines = [json.loads(x) for x in journal.splitlines()]
    assert [x["op"] for x in lines if x["op"] in ("hot", "revert")] == ["hot", "hot", "revert", "hot"]
    assert "hello-from-env" not in journal
    cookie = (root / "releases" / "COOKIE").read_text().strip()
    assert cookie not in journal


def test_tampered_package_refused(node):
    root = node["root"]
    rpc(root, node["name"], "Demo.Counter.incr(5)")
    before = sample.tree_listing(root)
    rc, out = agent(root, "hot", "--package", node["tampered"], "--sha256", node["sha256"],
                    "--version", "2.0.0")
    assert rc == 1 and out["failed"] is True
    assert "sha256" in out["msg"]
    assert sample.tree_listing(root) == before
    assert counter(node) == "{5, 1, 5}"


def test_traversal_package_refused(node):
    root = node["root"]
    before = sample.tree_listing(root)
    rc, out = agent(root, "unpack", "--package", node["evil"], "--sha256", node["evil_sha256"],
                    "--version", "2.0.0")
    assert rc == 2 and out["failed"] is True, out   # a refused package is bad input
    assert ".." in out["msg"]
    assert sample.tree_listing(root) == before
    assert not (root.parent / "escape.txt").exists()
    assert not (root / "escape.txt").exists()


def test_failing_check_stays_on_v1(node):
    root = node["root"]
    rpc(root, node["name"], "Demo.Counter.incr(7)")
    _ign, st0 = agent(root, "status")
    rc, out = agent(root, "hot", "--package", node["package"], "--sha256", node["sha256"],
                    "--version", "2.0.0", "--check", "cmd:false", "--timeout", "2")
    assert rc == 1, out
    assert out["failed"] is True and out["reverted"] is True and out["host_version"] == "1.0.0", out
    assert counter(node) == "{7, 1, 7}"
    _ign, st = agent(root, "status")
    assert st["os_pid"] == st0["os_pid"]
    assert st["running"] == "1.0.0" and st["permanent"] == "1.0.0"
    assert (root / "releases" / "start_erl.data").read_text().split()[1] == "1.0.0"
    # and a retry with a passing check goes through
    rc, out = agent(root, "hot", "--package", node["package"], "--sha256", node["sha256"],
                    "--version", "2.0.0", "--check", "cmd:true")
    assert rc == 0, out
    assert counter(node) == "{7, 2, %{count: 7, upgraded: true}}"


def test_rpc_check_and_health(node):
    root = node["root"]
    rc, out = agent(root, "hot", "--package", node["package"], "--sha256", node["sha256"],
                    "--version", "2.0.0", "--check", "rpc:Demo.Counter.code_version() == 2")
    assert rc == 0, out
    rc, h = agent(root, "health", "--version", "2.0.0")
    assert rc == 0, h
    rc, h = agent(root, "health", "--version", "1.0.0", "--timeout", "1")
    assert rc == 1 and h["failed"], h


def test_lock_fails_fast(node):
    root = node["root"]
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import fcntl,os,sys,time\n"
         "f=open(sys.argv[1],'a+'); fcntl.flock(f, fcntl.LOCK_EX|fcntl.LOCK_NB)\n"
         "f.truncate(0); f.write('{\"pid\": %d, \"cmd\": \"hot\", \"since\": 0}' % os.getpid()); f.flush()\n"
         "print('locked', flush=True); time.sleep(30)",
         str(agent_dir(root) / "lock")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        t0 = time.monotonic()
        rc, out = agent(root, "hot", "--package", node["package"], "--sha256", node["sha256"],
                        "--version", "2.0.0")
        assert time.monotonic() - t0 < 5
        assert rc == 1 and out["failed"] is True
        assert str(holder.pid) in out["msg"]
    finally:
        holder.kill()
        holder.wait()
    assert counter(node) == "{0, 1, 0}"


def test_stepwise_and_prune(node):
    root = node["root"]
    rpc(root, node["name"], "Demo.Counter.incr(3)")
    rc, u = agent(root, "unpack", "--package", node["package"], "--sha256", node["sha256"],
                  "--version", "2.0.0")
    assert rc == 0 and u["changed"] is True, u
    rc, u2 = agent(root, "unpack", "--package", node["package"], "--sha256", node["sha256"],
                   "--version", "2.0.0")
    assert rc == 0 and u2["changed"] is False, u2
    _ign, st = agent(root, "status")
    assert "2.0.0" in st["unpacked"]
    rc, i = agent(root, "install", "--version", "2.0.0")
    assert rc == 0, i
    assert isinstance(i["install_ms"], (int, float))
    _ign, st = agent(root, "status")  # RELEASES never says 'current': the agent asks the node
    assert (st["running"], st["current"], st["permanent"]) == ("2.0.0", "2.0.0", "1.0.0"), st
    assert (root / "releases" / "start_erl.data").read_text().split()[1] == "1.0.0"
    rc, h = agent(root, "health", "--version", "2.0.0")
    assert rc == 0, h
    rc, c = agent(root, "commit", "--version", "2.0.0")
    assert rc == 0, c
    assert counter(node) == "{3, 2, %{count: 3, upgraded: true}}"
    # keep 1: 1.0.0 is the rollback target of permanent 2.0.0, so nothing goes
    rc, p = agent(root, "prune", "--keep", "1")
    assert rc == 0, p
    assert (root / "lib" / "demo-1.0.0").is_dir()


def test_unpack_and_status_with_node_down(built, tmp_path):
    root = tmp_path / "root"
    deploy_v1(built, root, "hsd" + uuid.uuid4().hex[:8])
    rc, st = agent(root, "status")
    assert rc == 0 and st["node_up"] is False and st["running"] is None, st
    rc, u = agent(root, "unpack", "--package", built["package"], "--sha256", built["sha256"],
                  "--version", "2.0.0")
    assert rc == 0 and u["changed"] is True, u
    rc, st = agent(root, "status")
    assert st["unpacked"] == ["2.0.0"] and st["permanent"] == "1.0.0", st
    rc, p = agent(root, "prune", "--keep", "1")
    assert rc == 0, p
    assert "2.0.0" in p.get("removed", []), p
    assert not (root / "releases" / "2.0.0").exists()
    assert not (root / "lib" / "demo-2.0.0").exists()


def test_code_change_that_raises_is_refused_before_install_and_state_kept(node):
    """Raw OTP reboots the VM in place when code_change raises past the point of no return (state
    lost). The agent rehearses code_change on a copy of the live state first and refuses."""
    root = node["root"]
    rc, out = agent(root, "hot", "--package", node["package"], "--sha256", node["sha256"], "--version", "2.0.0")
    assert rc == 0, out
    rpc(root, node["name"], "Demo.Counter.incr(9)")
    before = counter(node)
    rc, out = agent(root, "hot", "--package", node["package3"], "--sha256", node["sha256_3"],
                    "--version", "3.0.0", "--timeout", "20")
    assert rc == 1 and out["failed"] is True and out.get("stage") == "rehearse", out
    assert "rehearsed on a copy of the live state" in out["msg"]
    assert out["host_version"] == "2.0.0" and not out.get("state_lost")
    assert counter(node) == before                      # the live state is untouched
    _ign, st = agent(root, "status")
    assert st["running"] == "2.0.0" and st["permanent"] == "2.0.0" and st["node_up"] is True
    assert (root / "releases" / "start_erl.data").read_text().split()[1] == "2.0.0"


def test_hot_creates_missing_releases_file(node):
    """RELEASES deleted under a running node: install creates it (create_RELEASES) and restarts
    release_handler under sasl_sup, so the later downgrade works."""
    root = node["root"]
    rpc(root, node["name"], "Demo.Counter.incr(2)")
    (root / "releases" / "RELEASES").unlink()
    rc, out = agent(root, "hot", "--package", node["package"], "--sha256", node["sha256"], "--version", "2.0.0")
    assert rc == 0, out
    assert (root / "releases" / "RELEASES").exists()
    rc, rv = agent(root, "revert", "--version", "1.0.0")
    assert rc == 0 and rv["mode"] == "hot", rv
    assert counter(node) == "{2, 1, 2}"


def test_stale_unpack_is_cleaned_and_prune_with_node_up(node):
    root = node["root"]
    pkg, sha = node["package"], node["sha256"]
    rc, u = agent(root, "unpack", "--package", pkg, "--sha256", sha, "--version", "2.0.0")
    assert rc == 0 and u["changed"] and u["registered"] == "rpc", u
    # pretend an earlier unpack came from another package: it must be removed and redone
    (agent_dir(root) / "unpacked" / "2.0.0.sha256").write_text("0" * 64 + "\n")
    rc, u = agent(root, "unpack", "--package", pkg, "--sha256", sha, "--version", "2.0.0")
    assert rc == 0 and u["changed"], u
    assert any("remove_release" in c for c in u["cleaned"]), u
    # a release dir that release_handler does not know (crashed unpack) is cleaned too
    rc, p = agent(root, "prune", "--keep", "1")
    assert rc == 0 and p["removed"] == ["2.0.0"] and p["rpc_calls"] == 1, p
    assert not (root / "lib" / "demo-2.0.0").exists() and not (root / "releases" / "2.0.0").exists()
    shutil.copytree(Path(node["rel2"]) / "releases" / "2.0.0", root / "releases" / "2.0.0")
    rc, out = agent(root, "hot", "--package", pkg, "--sha256", sha, "--version", "2.0.0")
    assert rc == 0, out
    assert counter(node) == "{0, 2, %{count: 0, upgraded: true}}"


def test_rollback_cold(node):
    """`rollback --mode cold` (the module's name for revert): real stop, files fixed, start on OLD."""
    root = node["root"]
    rc, out = agent(root, "hot", "--package", node["package"], "--sha256", node["sha256"], "--version", "2.0.0",
                    "--keep", "3", "--service-manager", "daemon")
    assert rc == 0, out
    _ign, st0 = agent(root, "status")
    rc, rv = agent(root, "rollback", "--version", "1.0.0", "--mode", "cold", "--timeout", "30")
    assert rc == 0 and rv["mode"] == "cold" and rv["host_version"] == "1.0.0", rv
    _ign, st = agent(root, "status")
    assert st["os_pid"] != st0["os_pid"] and st["running"] == "1.0.0" and st["permanent"] == "1.0.0", st
    assert (root / "releases" / "start_erl.data").read_text().split()[1] == "1.0.0"
    assert counter(node) == "{0, 1, 0}"
    # and hot forward again from the cold-booted 1.0.0
    rc, out = agent(root, "hot", "--package", node["package"], "--sha256", node["sha256"], "--version", "2.0.0")
    assert rc == 0, out


def test_status_previous_and_relup_after_hot(node):
    root = node["root"]
    _ign, st = agent(root, "status")
    assert st["previous"] is None and st["relup_down"] == [] and st["relup_up"] == [], st
    rc, out = agent(root, "hot", "--package", node["package"], "--sha256", node["sha256"], "--version", "2.0.0")
    assert rc == 0, out
    _ign, st = agent(root, "status")
    assert (st["running"], st["previous"]) == ("2.0.0", "1.0.0"), st
    assert st["relup_down"] == ["1.0.0"] and st["relup_up"] == ["1.0.0"], st
    rc, rv = agent(root, "rollback", "--version", "1.0.0", "--mode", "hot")
    assert rc == 0 and rv["mode"] == "hot" and rv["from"] == "2.0.0", rv
    _ign, st = agent(root, "status")
    assert (st["running"], st["previous"], st["relup_down"]) == ("1.0.0", "2.0.0", []), st


def test_hot_rollback_without_a_down_edge_is_refused_not_done_cold(node):
    root = node["root"]
    _ign, before = agent(root, "status")
    rc, rv = agent(root, "rollback", "--version", "0.9.0", "--mode", "hot")
    assert rc == 1 and rv["changed"] is False and "not possible" in rv["msg"] and "nothing changed" in rv["msg"], rv
    _ign, st = agent(root, "status")
    assert (st["running"], st["permanent"], st["os_pid"]) == (before["running"], before["permanent"], before["os_pid"])


# --------------------------------------------------------------------------- the sample app, full tarballs

_FULL = {}


def full_tarball(sample_builds, version, flags=()):
    """The sample release of (version, flags) packed like `mix release` output: bin/, erts-*/, lib/,
    releases/VSN/, releases/COOKIE, releases/start_erl.data at the top level."""
    key = (version, tuple(flags))
    if key not in _FULL:
        rel = Path(sample_builds.get(version, flags))
        out = rel.parent / f"sample-{version}{''.join('+' + f for f in flags)}-full.tar.gz"
        with tarfile.open(out, "w:gz") as tf:
            for name in sorted(os.listdir(rel)):
                if name in ("bin", "lib") or name.startswith("erts-"):
                    tf.add(rel / name, arcname=name)
            tf.add(rel / "releases", arcname="releases", recursive=False)
            for name in (version, "COOKIE", "start_erl.data"):
                tf.add(rel / "releases" / name, arcname=f"releases/{name}")
        _FULL[key] = (str(out), hashlib.sha256(out.read_bytes()).hexdigest())
    return _FULL[key]


def sagent(root, *args, timeout=180):
    cmd = [sys.executable, str(AGENT), "--root", str(root), "--app", "sample", "--user", local_user.ensure_user(), *args]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    try:
        out = json.loads(p.stdout)
    except ValueError:
        raise AssertionError(f"agent printed no JSON: rc={p.returncode}\n{p.stdout}\n{p.stderr}")
    assert "Traceback" not in p.stderr, p.stderr
    return p.returncode, out


def _vsn_over_tcp(port):
    sample.wait_ping("127.0.0.1", port, timeout=20)
    with sample.SampleClient("127.0.0.1", port) as c:
        return c.vsn()


@pytest.fixture
def sample_root(tmp_path):
    root = tmp_path / "sroot"
    port = sample.free_port()
    local_user.open_parents(tmp_path)
    agent_dir(root).mkdir(parents=True, mode=0o711)
    (agent_dir(root) / "env").write_text(
        f"SAMPLE_PORT={port}\nRELEASE_DISTRIBUTION=name\nRELEASE_NODE=sample_{port}@127.0.0.1\n")
    (agent_dir(root) / "env").chmod(0o600)
    cookie = "hs_" + uuid.uuid4().hex
    (agent_dir(root) / "cookie").write_text(cookie)
    (agent_dir(root) / "cookie").chmod(0o400)
    yield {"root": root, "port": port, "cookie": cookie}
    rc, out = sagent(root, "stop", "--service-manager", "daemon")
    if rc != 0:  # last resort: only the pid the agent recorded for this root
        pidf = agent_dir(root) / "pid"
        if pidf.exists():
            try:
                os.kill(int(pidf.read_text().strip()), 9)
            except (OSError, ValueError):
                pass


def test_first_install_cold_and_cold_rollback_of_sample(sample_builds, sample_root):
    root, port = sample_root["root"], sample_root["port"]
    sm = ("--service-manager", "daemon")
    p1, s1 = full_tarball(sample_builds, "1.0.0")
    p2, s2 = full_tarball(sample_builds, "1.1.0", ("vmargs",))
    # -- first install into an empty root
    rc, fi = sagent(root, "first-install", "--version", "1.0.0", "--package", p1, "--sha256", s1, *sm)
    assert rc == 0 and fi["changed"] and fi["host_version"] == "1.0.0", fi
    assert isinstance(fi["start_ms"], float)
    _ign, st = sagent(root, "status")
    assert (st["node_up"], st["running"], st["permanent"], st["previous"]) == (True, "1.0.0", "1.0.0", None), st
    assert _vsn_over_tcp(port) == "1.0.0"
    cookie = root / "releases" / "COOKIE"
    assert cookie.read_text() == sample_root["cookie"] and (cookie.stat().st_mode & 0o777) == 0o400
    assert "RELEASES" in os.listdir(root / "releases")
    rc, again = sagent(root, "first-install", "--version", "1.0.0", "--package", p1, "--sha256", s1, *sm)
    assert rc == 1 and "already installed" in again["msg"], again
    pid1 = st["os_pid"]
    # -- a cold deploy whose health check fails leaves the host on 1.0.0: running, permanent
    rc, bad = sagent(root, "cold", "--version", "1.1.0", "--package", p2, "--sha256", s2,
                     "--check", "cmd:false", "--timeout", "2", *sm)
    assert rc == 1 and bad["reverted"] is True and bad["host_version"] == "1.0.0", bad
    assert bad["stage"] == "health", bad
    _ign, st = sagent(root, "status")
    assert (st["running"], st["permanent"]) == ("1.0.0", "1.0.0") and st["os_pid"] != pid1, st
    assert (root / "releases" / "start_erl.data").read_text().split()[1] == "1.0.0"
    assert _vsn_over_tcp(port) == "1.0.0"
    # -- the cold deploy (vm.args differs: not hot-upgradable)
    rc, cold = sagent(root, "cold", "--version", "1.1.0", "--package", p2, "--sha256", s2, "--keep", "5", *sm)
    assert rc == 0 and cold["host_version"] == "1.1.0" and cold["mode"] == "cold", cold
    print("\nCOLD figures:", json.dumps({k: cold.get(k) for k in
                                         ("downtime_ms", "stop_ms", "start_ms", "prep_ms", "total_ms", "rpc_calls")}))
    assert 0 < cold["downtime_ms"] < 30000
    assert _vsn_over_tcp(port) == "1.1.0"
    assert (root / "releases" / "start_erl.data").read_text().split()[1] == "1.1.0"
    assert "+sbwt none" in (root / "releases" / "1.1.0" / "vm.args").read_text()
    _ign, st = sagent(root, "status")
    args = (Path("/proc") / str(st["os_pid"]) / "cmdline").read_bytes().split(b"\0")
    assert args[args.index(b"-sbwt") + 1] == b"none", args  # the VM booted with 1.1.0's vm.args
    assert (st["running"], st["permanent"], st["previous"]) == ("1.1.0", "1.1.0", "1.0.0"), st
    assert st["old"] == ["1.0.0"], st
    assert cookie.read_text() == sample_root["cookie"]
    # same deploy again: no-op
    rc, noop = sagent(root, "cold", "--version", "1.1.0", "--package", p2, "--sha256", s2, *sm)
    assert rc == 0 and noop["changed"] is False, noop
    # -- cold rollback with the node down, from what is on disk
    rc, stp = sagent(root, "stop", *sm)
    assert rc == 0, stp
    rc, rb = sagent(root, "rollback", "--version", "1.0.0", "--mode", "cold", *sm)
    assert rc == 0 and rb["host_version"] == "1.0.0" and rb["from"] == "1.1.0", rb
    assert _vsn_over_tcp(port) == "1.0.0"
    _ign, st = sagent(root, "status")
    assert (st["node_up"], st["running"], st["permanent"], st["previous"]) == (True, "1.0.0", "1.0.0", "1.1.0"), st
    assert (root / "releases" / "start_erl.data").read_text().split()[1] == "1.0.0"
    assert b"-sbwt" not in (Path("/proc") / str(st["os_pid"]) / "cmdline").read_bytes().split(b"\0")
    journal = (agent_dir(root) / "journal.jsonl").read_text()
    assert sample_root["cookie"] not in journal
    ops = [json.loads(x)["op"] for x in journal.splitlines()]
    assert [o for o in ops if o != "status"] == ["first-install", "first-install", "cold", "cold", "cold", "stop",
                                                 "rollback"]


def test_bad_input(tmp_path):
    rc, out = agent(tmp_path, "install", "--version", "1.0.0; rm -rf /")
    assert rc == 2 and out["failed"] is True


if __name__ == "__main__":
    dest = Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/hotswap-agent-fixture")
    info = build_fixture(dest)
    info.update(make_bad_packages(info, dest))
    print(json.dumps(info, indent=2))
