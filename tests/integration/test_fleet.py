"""The test fleet itself: SSH/ansible reachability, per-host /opt and hostname, link cuts, cleanup."""

from __future__ import annotations

import subprocess
import time
import uuid
from pathlib import Path

import pytest

from hotswap_testlib.fleet import STATE_DIR, Fleet, _alive, _links, _netns_list

pytestmark = pytest.mark.fleet

ANSIBLE = Path(__file__).resolve().parents[2] / ".venv" / "bin" / "ansible"


def _leftovers(prefix: str) -> list[str]:
    tag = f"{prefix}-"
    return ([n for n in _netns_list() if n.startswith(tag)]
            + [link for link in _links() if link.startswith(tag)])


def test_ansible_ping_all_targets(fleet):
    p = subprocess.run([str(ANSIBLE), "-i", str(fleet.inventory_path), "hotswap_targets",
                        "-m", "ansible.builtin.ping", "-o"],
                       env=fleet.ansible_env(), capture_output=True, text=True, timeout=120, check=False)
    assert p.returncode == 0, p.stdout + p.stderr
    for h in fleet.targets:
        assert f"{h.name} | SUCCESS" in p.stdout, p.stdout
    assert "build1" not in p.stdout


def test_each_host_has_own_opt_and_hostname(fleet):
    marker = f"/opt/marker-{uuid.uuid4().hex}"
    fleet.run("target1", ["sh", "-c", f"echo hi > {marker}"])
    try:
        assert fleet.run("target1", ["cat", marker]).stdout == "hi\n"
        assert fleet.exec_in("target1", ["cat", marker]).stdout == "hi\n"
        for other in ("target2", "build1"):
            assert fleet.run(other, ["test", "-e", marker], check=False).returncode == 1
            assert fleet.exec_in(other, ["test", "-e", marker], check=False).returncode == 1
        assert not Path(marker).exists()  # nor on the controller
        assert (fleet.opt_dir("target1") / marker.removeprefix("/opt/")).exists()
    finally:
        fleet.exec_in("target1", ["rm", "-f", marker])
    names = {h.name: fleet.run(h, ["hostname"]).stdout.strip() for h in fleet.hosts}
    assert names == {h.name: h.name for h in fleet.hosts}
    # hosts resolve each other and can talk over the bridge
    assert fleet.exec_in("target2", ["getent", "hosts", "build1"]).stdout.split()[0] == \
        fleet.host("build1").address
    fleet.exec_in("target2", ["/usr/bin/python3", "-c",
                              "import socket; socket.create_connection(('build1', 22), 2)"])


def test_cut_and_restore_link(fleet):
    fleet.connect("target1", 22).close()
    fleet.cut_link("target1")
    try:
        t0 = time.monotonic()
        with pytest.raises(OSError):
            fleet.connect("target1", 22, timeout=3).close()
        assert time.monotonic() - t0 < 1.0
        r = fleet.run("target1", ["true"], check=False, timeout=30)
        assert r.returncode == 255
        fleet.connect("target2", 22).close()  # others unaffected
        # from inside another host the partition shows too
        assert fleet.exec_in("target2", ["/usr/bin/python3", "-c",
                                         "import socket; socket.create_connection(('target1', 22), 1)"],
                             check=False, timeout=30).returncode != 0
    finally:
        fleet.restore_link("target1")
    fleet.connect("target1", 22).close()
    assert fleet.run("target1", ["hostname"]).stdout.strip() == "target1"


def test_small_fleet_up_down_leaves_nothing(fleet_available, tmp_path):
    f = Fleet(tmp_path / "small", targets=1, build=False, prefix="hswt")
    with f:
        assert [h.name for h in f.hosts] == ["target1"]
        pids = dict(f.pids)
        ns = [h.netns for h in f.hosts]
        assert set(ns) <= set(_netns_list())
        assert f.run("target1", ["hostname"]).stdout.strip() == "target1"
        # a detached process in the namespace (like epmd or a beam node) is stopped by down()
        f.run("target1", "setsid sleep 1000 >/dev/null 2>&1 < /dev/null &")
        extra = [p for p in f.netns_pids("target1") if p not in pids.values()]
        assert extra
    assert not _leftovers("hswt")
    assert not any(_alive(p) for p in list(pids.values()) + extra)
    assert not (STATE_DIR / "hswt.json").exists()
    assert f.timings["up"] < 10 and f.timings["down"] < 10


def test_crashed_run_is_cleaned_up(fleet_available, tmp_path):
    first = Fleet(tmp_path / "first", targets=1, build=False, prefix="hswc")
    first.up()
    old_pids = list(first.pids.values())
    first.cut_link("target1")  # leaves an unreachable route behind too
    del first  # "crash": never call down()
    assert (STATE_DIR / "hswc.json").exists()

    second = Fleet(tmp_path / "second", targets=1, build=False, prefix="hswc")
    with second:
        new_pids = list(second.pids.values())
        assert not any(_alive(p) for p in old_pids)
        assert second.run("target1", ["hostname"]).stdout.strip() == "target1"
        second.connect("target1", 22).close()
        assert str(tmp_path / "second") in (STATE_DIR / "hswc.json").read_text()
    assert not _leftovers("hswc")
    out = subprocess.run(["ip", "route", "show", "type", "unreachable"],
                         capture_output=True, text=True, check=False).stdout
    assert second.host("target1").address not in out
    assert not any(_alive(p) for p in new_pids)
