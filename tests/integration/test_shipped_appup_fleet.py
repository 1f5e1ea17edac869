"""An application's own appup, on the test fleet: a Mix app (tests/fixtures/shipped_appup_app) whose Erlang path
dependency mylib ships ``ebin/mylib.appup`` the way library authors write them (a regex from-version, ``apply``
steps that stop and restart its worker around the code load, an older term left below the first), deployed
through deploy.yml to three targets.

What the user gets: check mode says mylib's appup is the one it ships (and the app's own is generated); the deploy
goes hot under load, the connections opened before it are still answered, and the library's own steps ran (its
worker restarted on the new code: the effect is visible); a later mylib whose appup has no entry for the running
version is a named cold reason, and ``hotswap_mode=hot`` refuses it before any host changes.

The tests run in file order on one fleet root (/opt/shipapp): each starts from where the previous left it.
"""
from __future__ import annotations

import json
import re
import threading
import time
from pathlib import Path

import pytest

from hotswap_testlib import shipapp
from hotswap_testlib.ansible_run import parse_recap, run_playbook
from hotswap_testlib.layout import agent_cmd
from hotswap_testlib.ledger import Client

pytestmark = [pytest.mark.integration, pytest.mark.fleet]

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "playbooks" / "deploy.yml"
APP = "shipapp"
ROOT = "/opt/shipapp"
PORT = 4150
STORE = "/opt/shipapp-store"
TARGETS = ["target1", "target2", "target3"]
AGENT = agent_cmd(ROOT, APP)
ENV = {"SHIPAPP_PORT": str(PORT), "RELEASE_NODE": APP}
SHIPPED_NO_ENTRY = ("the appup mylib 2.0.0 ships (lib/mylib-2.0.0/ebin/mylib.appup) has no entry for mylib 1.1.0 "
                    "(the version the base runs)")


class Play:
    def __init__(self, rc, stdout, stderr):
        self.rc, self.stdout = rc, stdout
        self.out = stdout + "\n" + stderr      # Ansible prints a task's warnings on stderr
        self.recap = parse_recap(stdout)

    def __str__(self):
        return f"rc={self.rc} recap={self.recap}\n{self.out[-6000:]}"


@pytest.fixture(scope="module")
def ship(fleet, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("shipapp")

    def deploy(version, check=False, **kw):
        src = tmp / ("src-" + version)
        if not src.exists():
            shipapp.materialise(src, version)
        ev = {"hotswap_app": APP, "hotswap_root": ROOT, "hotswap_source": str(src), "hotswap_build_store": STORE,
              "hotswap_artifact_dir": str(tmp / "artifacts"), "hotswap_report_dir": str(tmp / "reports"),
              "hotswap_service_manager": "daemon", "hotswap_env": dict(ENV), "hotswap_build_env": dict(shipapp.BUILD_ENV)}
        ev.update(kw)
        rc, out, err = run_playbook(fleet, DEPLOY, ev, check=check, diff=check, timeout=1200)
        p = Play(rc, out, err)
        print(f"--- deploy {version} check={check} {kw}: rc={rc}")
        print("\n".join(x for x in p.out.splitlines() if '"msg"' in x or "FAILED" in x or "WARNING" in x)[-5000:])
        return p
    return {"deploy": deploy}


def _status(fleet, host):
    return json.loads(fleet.run(host, AGENT + ["status"]).stdout)


def _statuses(fleet):
    return {t: _status(fleet, t) for t in TARGETS}


def _ask(fleet, host, line, wait=10.0):
    deadline = time.monotonic() + wait
    while True:
        try:
            c = Client(fleet.host(host).address, PORT, timeout=5)
            try:
                return c.cmd(line)
            finally:
                c.close()
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def _untouched(fleet, before, version):
    after = _statuses(fleet)
    for t in TARGETS:
        a = after[t]
        assert a["node_up"] and (a["running"], a["permanent"]) == (version, version), (t, a)
        assert a["os_pid"] == before[t]["os_pid"], (t, "the node was restarted", before[t]["os_pid"], a["os_pid"])
    return after


class _Load:
    """On every target: a connection kept open and asked PING as fast as it answers, and a new connection per
    request every 20 ms.  A request counts as failed when it got no PONG (no retry)."""

    def __init__(self, fleet):
        self.addrs = [fleet.host(t).address for t in TARGETS]
        self.ok = 0
        self.failed = []
        self._stop = threading.Event()
        self._threads = []
        self._lock = threading.Lock()

    def _count(self, ok, what):
        with self._lock:
            if ok:
                self.ok += 1
            else:
                self.failed.append(what)

    def _kept(self, addr):
        c = Client(addr, PORT, timeout=5)
        while not self._stop.is_set():
            try:
                self._count(c.cmd("PING") == "PONG", addr + " kept")
            except OSError as e:
                self._count(False, f"{addr} kept: {e}")
                return
            time.sleep(0.003)
        c.close()

    def _fresh(self, addr):
        while not self._stop.is_set():
            try:
                c = Client(addr, PORT, timeout=5)
                try:
                    self._count(c.cmd("PING") == "PONG", addr + " fresh")
                finally:
                    c.close()
            except OSError as e:
                self._count(False, f"{addr} fresh: {e}")
            time.sleep(0.02)

    def __enter__(self):
        for a in self.addrs:
            self._threads += [threading.Thread(target=self._kept, args=(a,), daemon=True),
                              threading.Thread(target=self._fresh, args=(a,), daemon=True)]
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        for t in self._threads:
            t.join(10)
        print("load: %d answered, %d failed %s" % (self.ok, len(self.failed), self.failed[:5]))


# --------------------------------------------------------------------------- tests

def test_first_install_runs_the_app_and_its_library(fleet, ship):
    p = ship["deploy"]("1.0.0")
    assert p.rc == 0, str(p)
    for t in TARGETS:
        assert _ask(fleet, t, "VSN") == "1.0.0"
        assert _ask(fleet, t, "LIB") == "code=1.0.1 count=0 restarts=0"
    assert [_ask(fleet, "target1", "BUMP") for _i in range(3)] == ["1", "2", "3"]


def test_check_mode_says_the_library_uses_the_appup_it_ships(fleet, ship):
    before = _statuses(fleet)
    p = ship["deploy"]("1.1.0", check=True)
    assert p.rc == 0, str(p)
    # the build's edge line, and each host's plan
    assert "1.0.0 -> hot" in p.out and "[appups: mylib shipped, shipapp generated]" in p.out, str(p)
    assert re.search(r"1\.0\.0 -> 1\.1\.0: hot \(relup has a hot edge from 1\.0\.0; appups: mylib shipped, "
                     r"shipapp generated\)", p.out), str(p)
    _untouched(fleet, before, "1.0.0")
    assert _ask(fleet, "target1", "LIB") == "code=1.0.1 count=3 restarts=0"


def test_the_shipped_appup_goes_hot_under_load_keeps_open_connections_and_runs_its_own_steps(fleet, ship):
    before = _statuses(fleet)
    opened = {t: Client(fleet.host(t).address, PORT, timeout=10) for t in TARGETS}
    try:
        for t, c in opened.items():
            assert c.cmd("VSN") == "1.0.0", t
        with _Load(fleet) as load:
            time.sleep(0.5)
            p = ship["deploy"]("1.1.0")
            time.sleep(0.5)
        assert p.rc == 0, str(p)
        assert load.failed == [] and load.ok > 100, (load.ok, load.failed[:10])
        _untouched(fleet, before, "1.1.0")
        for t, c in opened.items():
            # the connection opened before the upgrade is still answered, by the new release
            assert c.cmd("VSN") == "1.1.0", t
            # mylib's own apply steps ran: its worker was stopped, loaded and started again on the new code
            # (its count starts over, as the library's appup means it to), once
            assert c.cmd("LIB") == "code=1.1.0 count=0 restarts=1", t
            assert c.cmd("BUMP") == "1", t
    finally:
        for c in opened.values():
            c.close()
    assert "[appups: mylib shipped, shipapp generated]" in p.out, str(p)


def test_a_shipped_appup_without_an_entry_for_the_running_version_is_a_named_cold_reason(fleet, ship):
    before = _statuses(fleet)
    p = ship["deploy"]("1.2.0", check=True)
    assert p.rc == 0, str(p)
    assert "1.1.0 -> cold (" + SHIPPED_NO_ENTRY in p.out, str(p)
    assert re.search(r"1\.1\.0 -> 1\.2\.0: cold \(the appup mylib 2\.0\.0 ships", p.out), str(p)
    assert "in-memory state is lost" in p.out, str(p)
    _untouched(fleet, before, "1.1.0")


@pytest.mark.bad_input
def test_hot_mode_refuses_it_before_any_host_changes(fleet, ship):
    before = _statuses(fleet)
    p = ship["deploy"]("1.2.0", hotswap_mode="hot")
    assert p.rc != 0, str(p)
    assert "hotswap_mode=hot but 1.1.0 -> 1.2.0 can only be cold: " + SHIPPED_NO_ENTRY in p.out, str(p)
    _untouched(fleet, before, "1.1.0")
    for t in TARGETS:
        assert _ask(fleet, t, "LIB").startswith("code=1.1.0 "), t
        assert not [r for r in _status(fleet, t)["releases"] if r["version"] == "1.2.0"], t
