"""Facts, the node's settings (env and cookie), storing and verifying packages, stale facts, the run user."""
import json
import os
import subprocess
import sys

import pytest

from hotswap_testlib.agent_artifact import AGENT_PATH, RELEASES, _cli, _host, ag

# ------------------------------------------------------------------- facts, settings, packages, stale facts


def test_cli_facts_reports_fingerprint_and_agent_checksums(tmp_path):
    h = _host(tmp_path)
    h.write_releases(ag.parse_releases(RELEASES))
    rc, out, _ign = _cli(tmp_path, "facts")
    assert rc == 0 and out["permanent"] == "1.0.0" and out["fingerprint"]["arch"]
    sums = out["agent_files"]
    assert sums["agent.py"] is None or len(sums["agent.py"]) == 64
    want = ",".join("%s=%s" % (n, s or "0" * 64) for n, s in sums.items())
    rc, out, _ign = _cli(tmp_path, "facts", "--expect-agent", want)
    assert rc == 0 and out["agent_current"] is (None not in sums.values())
    rc, out, _ign = _cli(tmp_path, "facts", "--expect-agent", "agent.py=" + "1" * 64)
    assert rc == 0 and out["agent_current"] is False
    rc, out, _ign = _cli(tmp_path, "facts", "--expect-agent", "other=1")
    assert rc == 2 and "expect-agent" in out["msg"]
    assert not (tmp_path / ".hotswap" / "journal.jsonl").exists()   # a read is not journalled


def test_settings_write_env_and_cookie_privately_and_only_when_changed(tmp_path):
    h = _host(tmp_path)
    assert ag.apply_settings(h, {"env": {"B": "2", "A": "x y"}, "cookie": "secret-cookie"}) == ["env", "cookie"]
    env, cookie = tmp_path / ".hotswap" / "env", tmp_path / ".hotswap" / "cookie"
    assert env.read_text() == "A=x y\nB=2\n" and oct(env.stat().st_mode & 0o777) == "0o600"
    assert cookie.read_text() == "secret-cookie" and oct(cookie.stat().st_mode & 0o777) == "0o400"
    assert ag.apply_settings(h, {"env": {"A": "x y", "B": "2"}, "cookie": "secret-cookie"}) == []
    assert ag.apply_settings(h, {"env": None, "cookie": None}) == []
    for bad in ({"env": {"A-B": "1"}}, {"env": {"A": "1\nB=2"}}, {"cookie": "a\nb"}, {"env": ["A=1"]}, []):
        with pytest.raises(ag.BadInput):
            ag.apply_settings(h, bad)
    assert env.read_text() == "A=x y\nB=2\n"


def test_cli_settings_from_stdin_never_echo_the_cookie(tmp_path):
    _host(tmp_path)
    p = subprocess.run([sys.executable, str(AGENT_PATH), "--root", str(tmp_path), "--app", "demo", "prune",
                        "--keep", "2", "--settings-stdin"], input=json.dumps({"cookie": "c00kie-x"}),
                       capture_output=True, text=True, timeout=60, check=False)
    assert "c00kie-x" not in p.stdout + p.stderr
    assert (tmp_path / ".hotswap" / "cookie").read_text() == "c00kie-x"
    assert "c00kie-x" not in (tmp_path / ".hotswap" / "journal.jsonl").read_text()


def test_store_package_verifies_then_keeps_it(tmp_path):
    h = _host(tmp_path)
    h.ensure_hs()
    up = tmp_path / ".hotswap" / ".upload.part"
    up.write_bytes(b"package bytes")
    sha = ag.sha256_file(str(up))
    with pytest.raises(ag.OpFailed):
        ag.store_package(h, str(up), "0" * 64, "demo-2.0.0.tar.gz")
    assert up.exists()
    with pytest.raises(ag.BadInput):
        ag.store_package(h, str(up), sha, "../evil")
    dest = ag.store_package(h, str(up), sha, "demo-2.0.0.tar.gz")
    assert dest == str(tmp_path / ".hotswap" / "packages" / (sha + "-demo-2.0.0.tar.gz"))
    assert not up.exists() and open(dest, "rb").read() == b"package bytes"
    assert oct(os.stat(dest).st_mode & 0o777) == "0o644"
    up.write_bytes(b"package bytes")                       # a second upload of the same package
    assert ag.store_package(h, str(up), sha, "demo-2.0.0.tar.gz") == dest and not up.exists()


def test_expect_state_refuses_stale_facts_and_changes_nothing(tmp_path):
    h = _host(tmp_path)
    h.write_releases(ag.parse_releases(RELEASES))
    rc, out, _ign = _cli(tmp_path, "facts")
    key = ag.state_key(h)
    assert key == "down:-:1.0.0" or key.startswith("down:")
    rc, out, _ign = _cli(tmp_path, "prune", "--keep", "2", "--expect-state", "up:2.0.0:2.0.0")
    assert rc == 1 and out["stale_facts"] is True and out["changed"] is False
    assert not (tmp_path / ".hotswap" / "journal.jsonl").exists()


def test_store_package_across_filesystems_and_stale_uploads(tmp_path, monkeypatch):
    h = _host(tmp_path)
    h.ensure_hs()
    up = tmp_path / "elsewhere.tar.gz"
    up.write_bytes(b"pkg")
    sha = ag.sha256_file(str(up))
    real = os.replace

    def cross_device(src, dst):
        if str(src) == str(up):
            raise OSError(ag.errno.EXDEV, "Invalid cross-device link")
        return real(src, dst)
    monkeypatch.setattr(ag.os, "replace", cross_device)
    dest = ag.store_package(h, str(up), sha, "demo-1.tar.gz")
    assert open(dest, "rb").read() == b"pkg" and not up.exists()
    assert not os.path.exists(dest + ".part")
    monkeypatch.setattr(ag.os, "replace", real)
    old, new = tmp_path / ".hotswap" / ".upload-ab-x.part", tmp_path / ".hotswap" / ".upload-cd-y.part"
    old.write_bytes(b"x")
    new.write_bytes(b"y")
    os.utime(old, (1, 1))
    ag._drop_stale_uploads(h)
    assert not old.exists() and new.exists()


def test_ensure_user_creates_only_a_missing_user(monkeypatch):
    assert ag.ensure_user("root") is False
    calls = []

    def no_user(name):
        raise KeyError(name)

    class Done:
        def __init__(self, rc):
            self.returncode, self.stdout, self.stderr = rc, "", "useradd: cannot lock /etc/passwd"
    monkeypatch.setattr(ag.pwd, "getpwnam", no_user)
    monkeypatch.setattr(ag.subprocess, "run", lambda argv, **kw: calls.append(argv) or Done(0))
    assert ag.ensure_user("svc") is True
    assert calls == [["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", "svc"]]
    monkeypatch.setattr(ag.subprocess, "run", lambda argv, **kw: Done(1))
    with pytest.raises(ag.OpFailed, match="cannot lock"):
        ag.ensure_user("svc")
