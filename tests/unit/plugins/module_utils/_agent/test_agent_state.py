"""The root's state: releases found on disk, repairs of RELEASES and start_erl.data, unpack space checks, bad roots, fault points."""
import json
import os
import shutil
import subprocess
import sys

import pytest

from hotswap_testlib.agent_artifact import (
    AGENT_PATH,
    _cli,
    _disk_release,
    _host,
    _root_v1,
    _upgrade_pkg,
    ag,
)

from ansible_collections.beam.hotswap.plugins.module_utils._agent.names import state_dir


def hs_dir(root):
    """The agent's directory for a release root (beside it, root-owned)."""
    return type(root)(state_dir(str(root)))

# ------------------------------------------------------------------ repairs, disk full, status


def test_releases_from_disk_only_complete(tmp_path):
    for v, c in (("1.0.0", True), ("2.0.0", True), ("3.0.0", False)):
        _disk_release(tmp_path, v, complete=c)
    (tmp_path / "releases" / "bogus").mkdir()
    h = ag.Host(str(tmp_path), "demo")
    assert [r["version"] for r in ag.releases_from_disk(h)] == ["2.0.0", "1.0.0"]


def test_repair_boot_files_start_erl_names_removed_version(tmp_path):
    _disk_release(tmp_path, "1.0.0")
    _disk_release(tmp_path, "2.0.0")
    h = ag.Host(str(tmp_path), "demo")
    rels = [ag._releases_entry(h, ag.parse_rel((tmp_path / "releases" / v / "demo.rel").read_text()), st)
            for v, st in (("2.0.0", "old"), ("1.0.0", "permanent"))]
    h.write_releases(rels)
    (tmp_path / "releases" / "start_erl.data").write_text("13.1.5 9.9.9\n")
    rep = ag.repair_boot_files(h)
    assert len(rep) == 1 and "9.9.9" in rep[0] and "1.0.0" in rep[0], rep
    assert h.start_erl() == {"erts": "13.1.5", "version": "1.0.0"}
    assert ag.repair_boot_files(h) == []  # idempotent
    # permanent release gone too: the newest complete one that RELEASES lists
    shutil.rmtree(tmp_path / "releases" / "1.0.0")
    rep = ag.repair_boot_files(h)
    assert h.start_erl()["version"] == "2.0.0" and "made permanent" in rep[0], rep
    assert next(r["version"] for r in h.releases() if r["status"] == "permanent") == "2.0.0"


def test_repair_boot_files_rebuilds_corrupt_releases_from_disk(tmp_path):
    _disk_release(tmp_path, "1.0.0")
    _disk_release(tmp_path, "2.0.0")
    h = ag.Host(str(tmp_path), "demo")
    (tmp_path / "releases" / "RELEASES").write_text("garbage {{{")
    (tmp_path / "releases" / "start_erl.data").write_text("13.1.5 1.0.0\n")
    rep = ag.repair_boot_files(h)
    assert any("RELEASES" in r for r in rep), rep
    assert [(r["version"], r["status"]) for r in h.releases()] == [("2.0.0", "old"), ("1.0.0", "permanent")]
    assert list(hs_dir(tmp_path).glob("RELEASES.damaged-*"))


def test_a_node_killed_between_start_erl_data_and_releases_is_brought_back_to_the_old_release(tmp_path, monkeypatch):
    """make_permanent writes start_erl.data, then RELEASES in place (truncated first): a node killed in between
    leaves start_erl.data naming the new release and RELEASES empty. Recovering the dead node rebuilds RELEASES
    from disk and makes the release it had permanent again before starting it (never the new one)."""
    _disk_release(tmp_path, "1.0.0")
    _disk_release(tmp_path, "2.0.0")
    h = ag.Host(str(tmp_path), "demo")
    (tmp_path / "releases" / "RELEASES").write_text("")
    (tmp_path / "releases" / "start_erl.data").write_text("13.1.5 2.0.0\n")
    started = []
    monkeypatch.setattr(ag, "boot_bin", lambda host: None)
    monkeypatch.setattr(ag, "start_node", lambda host, t: started.append(host.start_erl()["version"]) or
                        {"running": host.start_erl()["version"], "os_pid": 1})
    out = ag._recover_dead_node(h, "1.0.0", "killed")
    assert started == ["1.0.0"] and out["reverted"] is True and out["host_version"] == "1.0.0", out
    assert next(r["version"] for r in h.releases() if r["status"] == "permanent") == "1.0.0"
    assert any("RELEASES" in r for r in out["repaired"]) and any("1.0.0 made permanent" in r for r in out["repaired"])


def test_status_reports_corrupt_releases(tmp_path):
    (tmp_path / "releases").mkdir()
    (tmp_path / "releases" / "RELEASES").write_text("not erlang [")
    rc, out, _ign = _cli(tmp_path, "status")
    assert rc == 0 and out["releases_error"] and "RELEASES" in out["releases_error"], out


def test_unpack_no_space_preflight(tmp_path, monkeypatch):
    root, h = _root_v1(tmp_path)
    pkg = tmp_path / "p.tar.gz"
    sha = _upgrade_pkg(pkg)
    monkeypatch.setattr(ag, "_space_free", lambda h: 20 * 1024)
    with pytest.raises(ag.OpFailed) as e:
        ag.prepare_unpack(h, str(pkg), sha, "2.0.0", False)
    assert "no space left on device while unpacking 2.0.0" in e.value.msg and "nothing changed" in e.value.msg
    assert not (root / "releases" / "2.0.0").exists()


def test_unpack_enospc_midway_removes_partial_files(tmp_path, monkeypatch):
    import errno as _errno
    root, h = _root_v1(tmp_path)
    pkg = tmp_path / "p.tar.gz"
    sha = _upgrade_pkg(pkg)
    real_rename = os.rename
    calls = []

    def rename(a, b, **kw):  # the lib dir moves, then the disk fills up
        calls.append(b)
        if len(calls) == 2:
            raise OSError(_errno.ENOSPC, "No space left on device")
        return real_rename(a, b, **kw)

    monkeypatch.setattr(ag.os, "rename", rename)
    with pytest.raises(ag.OpFailed) as e:
        ag.prepare_unpack(h, str(pkg), sha, "2.0.0", False)
    assert "no space left on device while unpacking" in e.value.msg and "partial files removed" in e.value.msg
    assert not (root / "lib" / "demo-2.0.0").exists() and not (root / "releases" / "2.0.0").exists()
    assert not [n for n in os.listdir(hs_dir(root)) if n.startswith("staging")]


@pytest.mark.parametrize("root", ["/", "//", "/.", "/opt/..", "/opt/../etc", "rel/x", "/opt/x\n"])
def test_cli_bad_roots(root):
    p = subprocess.run([sys.executable, str(AGENT_PATH), "--root", root, "--app", "demo", "status"],
                       capture_output=True, text=True, check=False)
    assert p.returncode == 2 and "--root" in json.loads(p.stdout)["msg"]


def test_fault_point_only_acts_on_its_name(tmp_path, monkeypatch):
    h = _host(tmp_path)
    killed = []
    monkeypatch.setattr(h, "os_pid", lambda: (4242, None))
    monkeypatch.setattr(ag.os, "kill", lambda pid, sig: killed.append((pid, sig)))
    monkeypatch.setattr(ag, "_pid_alive", lambda pid: False)
    monkeypatch.delenv("HOTSWAP_AGENT_FAULT", raising=False)
    ag.fault_point(h, "before_install")
    monkeypatch.setenv("HOTSWAP_AGENT_FAULT", "after_commit")
    ag.fault_point(h, "before_install")
    assert killed == []
    monkeypatch.setenv("HOTSWAP_AGENT_FAULT", "before_install")
    ag.fault_point(h, "before_install")
    assert killed == [(4242, ag.signal.SIGKILL)]


def test_refusal_message():
    r = {"running": "1.0.0", "rehearsal_failures": [
        {"module": "Sample.Counter", "old_vsn": "1", "pid": "#PID<0.1.0>", "callback": "Sample.Counter",
         "error": "raised (RuntimeError) boom"}]}
    msg = ag._refusal_msg("2.0.0", r)
    assert msg.startswith("hot upgrade to 2.0.0 refused: Sample.Counter.code_change(1, state, extra)")
    assert "RuntimeError" in msg and msg.endswith(
        "rehearsed on a copy of the live state; nothing was installed; the host keeps 1.0.0 and its state")


# ------------------------------------------------------------------ issue 15: names that become paths, stale staging

BAD_RELEASES = """[{release,"demo","0.1.0/../../../X","13.1.5",[{kernel,"8.5.3","lib/kernel-8.5.3"}],old},
 {release,"demo","1.0.0","13.1.5",[{kernel,"8.5.3","lib/kernel-8.5.3"}],permanent}].
"""


@pytest.mark.parametrize("text,why", [
    (BAD_RELEASES, "version"),
    (BAD_RELEASES.replace("0.1.0/../../../X", "0.1.0").replace('"13.1.5",[{k', '"../13",[{k', 1), "ERTS"),
    (BAD_RELEASES.replace("0.1.0/../../../X", "0.1.0").replace('"lib/kernel-8.5.3"', '"lib/.."', 1), "lib dir"),
    (BAD_RELEASES.replace("0.1.0/../../../X", "0.1.0").replace('{kernel,"8.5.3"', '{kernel,"8.5.3/../../x"', 1), "lib"),
])
def test_releases_entries_that_would_become_bad_paths_are_refused(text, why):
    with pytest.raises(ValueError) as e:
        ag.parse_releases(text)
    assert why in str(e.value)


def test_prune_with_a_crafted_releases_entry_removes_nothing_outside(tmp_path):
    root, h = _root_v1(tmp_path)
    victim = tmp_path / "X"
    victim.mkdir()
    (victim / "precious").write_text("p")
    (root / "releases" / "RELEASES").write_text(BAD_RELEASES)
    with pytest.raises(ag.OpFailed) as e:
        ag.do_prune(h, 1)
    assert "cannot parse" in e.value.msg and (victim / "precious").exists()


def test_node_replies_and_start_erl_are_validated(tmp_path, monkeypatch):
    root, h = _root_v1(tmp_path)
    (root / "releases" / "start_erl.data").write_text("13.1.5 ../../../etc\n")
    assert ag.start_erl_checked(h) is None
    (root / "releases" / "start_erl.data").write_text("13.1.5 1.0.0\n")
    assert ag.start_erl_checked(h) == {"erts": "13.1.5", "version": "1.0.0"}
    # a RELEASES release_handler would rebuild from an unsafe reply: removed instead, never written
    (root / "releases" / "RELEASES").write_text("garbage")
    reply = {"ok": True, "releases": [{"name": "demo", "version": "../../x", "erts": "13.1.5", "status": "permanent",
                                       "libs": [["kernel", "8.5.3", "lib/kernel-8.5.3"]]}]}
    monkeypatch.setattr(h, "rpc", lambda *a, **k: reply)
    out = ag.repair_releases(h, up=True)
    assert "unusable" in out[0] and not (root / "releases" / "RELEASES").exists()


def test_releases_from_disk_reads_no_linked_rel(tmp_path):
    _disk_release(tmp_path, "1.0.0")
    _disk_release(tmp_path, "2.0.0")
    rel = tmp_path / "releases" / "2.0.0" / "demo.rel"
    real = tmp_path / "elsewhere.rel"
    real.write_text(rel.read_text())
    rel.unlink()
    rel.symlink_to(real)
    assert [r["version"] for r in ag.releases_from_disk(ag.Host(str(tmp_path), "demo"))] == ["1.0.0"]


def test_set_aside_never_copies_through_a_link(tmp_path):
    root, h = _root_v1(tmp_path)
    secret = tmp_path / "secret"
    secret.write_text("root only")
    (root / "releases" / "RELEASES").unlink()
    (root / "releases" / "RELEASES").symlink_to(secret)
    assert ag._set_aside(h, "RELEASES") is None
    (root / "releases" / "RELEASES").unlink()
    (root / "releases" / "RELEASES").write_text("damaged")
    aside = ag._set_aside(h, "RELEASES")
    assert open(aside).read() == "damaged" and os.stat(aside).st_mode & 0o777 == 0o600


def test_stale_staging_dirs_are_dropped(tmp_path):
    root, h = _root_v1(tmp_path)
    hs = hs_dir(root)
    dead, alive, reused, mine = (hs / "staging-999999999", hs / f"staging-{os.getppid()}", hs / "staging-1",
                                 hs / f"staging-{os.getpid()}")
    for d in (dead, alive, reused, mine):
        d.mkdir()
        (d / "f").write_text("x")
    os.utime(reused, (1, 1))              # pid 1 lives, but the dir is older than this agent: a reused pid
    assert sorted(ag.drop_stale_staging(h)) == sorted([dead.name, reused.name])
    assert alive.exists() and mine.exists() and not dead.exists() and not reused.exists()


def test_prune_ignores_unsafe_versions_in_the_nodes_reply(tmp_path, monkeypatch):
    root, h = _root_v1(tmp_path)
    _disk_release(root, "0.9.0")
    rels = h.releases() + [ag._releases_entry(h, ag.parse_rel((root / "releases/0.9.0/demo.rel").read_text()), "old")]
    rels += [dict(rels[-1], version="0.8.0")]
    h.write_releases(rels)
    victim = tmp_path / "victim.rel"
    victim.write_text("v")
    monkeypatch.setattr(h, "node_up", lambda: True)
    monkeypatch.setattr(h, "os_pid", lambda: (None, None))
    monkeypatch.setattr(h, "rpc", lambda *a, **k: {"ok": True, "removed": ["0.8.0", "../../victim"]})
    assert ag.do_prune(h, 1) == ["0.8.0"]
    assert victim.exists()
