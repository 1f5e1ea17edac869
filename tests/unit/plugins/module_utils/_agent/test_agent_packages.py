"""Facts, the node's settings (env and cookie), storing and verifying packages, stale facts, the run user."""
import json
import os
import subprocess
import sys

import pytest

from hotswap_testlib.agent_artifact import AGENT_PATH, RELEASES, _cli, _host, ag

from ansible_collections.beam.hotswap.plugins.module_utils._agent.names import state_dir


def hs_dir(root):
    """The agent's directory for a release root (beside it, root-owned)."""
    return type(root)(state_dir(str(root)))


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
    assert not (hs_dir(tmp_path) / "journal.jsonl").exists()   # a read is not journalled


def test_settings_write_env_and_cookie_privately_and_only_when_changed(tmp_path):
    h = _host(tmp_path)
    assert ag.apply_settings(h, {"env": {"B": "2", "A": "x y"}, "cookie": "secret-cookie"}) == ["env", "cookie"]
    env, cookie = hs_dir(tmp_path) / "env", hs_dir(tmp_path) / "cookie"
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
    assert (hs_dir(tmp_path) / "cookie").read_text() == "c00kie-x"
    assert "c00kie-x" not in (hs_dir(tmp_path) / "journal.jsonl").read_text()


def test_store_package_verifies_then_keeps_it(tmp_path):
    h = _host(tmp_path)
    h.ensure_hs()
    up = hs_dir(tmp_path) / ".upload.part"
    up.write_bytes(b"package bytes")
    sha = ag.sha256_file(str(up))
    with pytest.raises(ag.OpFailed):
        ag.store_package(h, str(up), "0" * 64, "demo-2.0.0.tar.gz")
    assert up.exists()
    with pytest.raises(ag.BadInput):
        ag.store_package(h, str(up), sha, "../evil")
    dest = ag.store_package(h, str(up), sha, "demo-2.0.0.tar.gz")
    assert dest == str(hs_dir(tmp_path) / "packages" / (sha + "-demo-2.0.0.tar.gz"))
    assert not up.exists() and open(dest, "rb").read() == b"package bytes"
    assert oct(os.stat(dest).st_mode & 0o777) == "0o600"
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
    assert not (hs_dir(tmp_path) / "journal.jsonl").exists()


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
    old, new = hs_dir(tmp_path) / ".upload-ab-x.part", hs_dir(tmp_path) / ".upload-cd-y.part"
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


# ------------------------------------------------------------------ issue 15: env byte-exact, no-follow unpack


@pytest.mark.parametrize("env,why", [({"A\n": "1"}, "a name"), ({" A": "1"}, "a name"), ({"A": "x\ny"}, "one line"),
                                     ({"A": "x\0"}, "one line"), ({"A": True}, "one line"), ({"A": ["x"]}, "one line")])
def test_settings_env_refused_never_altered(tmp_path, env, why):
    h = _host(tmp_path)
    with pytest.raises(ag.BadInput) as e:
        ag.apply_settings(h, {"env": env})
    assert why in str(e.value) and "nothing changed" in str(e.value)
    assert not (hs_dir(tmp_path) / "env").exists()


def test_settings_env_values_are_byte_exact(tmp_path):
    h = _host(tmp_path)
    env = {"A": " padded ", "B": "'quoted'", "C": '"dq"', "D": "a=b#c", "E": "", "PORT": 4000}
    ag.apply_settings(h, {"env": env})
    got = ag.parse_env((hs_dir(tmp_path) / "env").read_text())
    assert got == dict(env, PORT="4000")


def test_unpack_never_moves_through_a_planted_lib_link(tmp_path):
    from hotswap_testlib.agent_artifact import _root_v1, _upgrade_pkg
    root, h = _root_v1(tmp_path)
    outside = tmp_path / "outside"
    outside.mkdir()
    os.rename(root / "lib", tmp_path / "lib.real")
    (root / "lib").symlink_to(outside)
    pkg = tmp_path / "p.tar.gz"
    sha = _upgrade_pkg(pkg)
    with pytest.raises(ag.OpFailed) as e:
        ag.prepare_unpack(h, str(pkg), sha, "2.0.0", False)
    assert "symbolic link" in e.value.msg
    assert os.listdir(outside) == [] and not (root / "releases" / "2.0.0").exists()
    assert not [n for n in os.listdir(hs_dir(root)) if n.startswith("staging")]


def test_full_tarball_space_check(tmp_path, monkeypatch):
    from hotswap_testlib.agent_artifact import _full_tarball
    root = tmp_path / "root"
    root.mkdir()
    h = ag.Host(str(root), "demo")
    pkg = tmp_path / "full.tar.gz"
    sha = _full_tarball(pkg)
    monkeypatch.setattr(ag, "_space_free", lambda h: 1024)
    with pytest.raises(ag.OpFailed) as e:
        ag.stage_full(h, str(pkg), sha, "1.0.0", (os.getuid(), os.getgid()))
    assert "no space left" in e.value.msg and "nothing changed" in e.value.msg


@pytest.mark.parametrize("kind", ["dir", "file", "link"])
def test_move_in_across_filesystems_copies_without_following(tmp_path, monkeypatch, kind):
    import errno as _errno
    src, dst = tmp_path / "hs", tmp_path / "root"
    (src / "st").mkdir(parents=True)
    (dst / "lib").mkdir(parents=True)
    decoy = tmp_path / "decoy"
    decoy.write_text("d")
    if kind == "dir":
        (src / "st" / "x-1" / "ebin").mkdir(parents=True)
        (src / "st" / "x-1" / "ebin" / "x.beam").write_bytes(b"beam")
        os.chmod(src / "st" / "x-1" / "ebin" / "x.beam", 0o4755)
        (src / "st" / "x-1" / "l").symlink_to("ebin/x.beam")
    elif kind == "file":
        (src / "st" / "x-1").write_bytes(b"file")
    else:
        (src / "st" / "x-1").symlink_to("../decoy")
    real = ag.safe_rename
    calls = []

    def cross(*a):
        calls.append(a)
        if len(calls) == 1:
            raise OSError(_errno.EXDEV, "Invalid cross-device link")
        return real(*a)

    monkeypatch.setattr(ag, "safe_rename", cross)
    ag.move_in(str(src), "st/x-1", str(dst), "lib/x-1", (65534, 65534))
    got = dst / "lib" / "x-1"
    assert not os.path.lexists(src / "st" / "x-1") and os.listdir(dst / "lib") == ["x-1"]
    if kind == "dir":
        assert (got / "ebin" / "x.beam").read_bytes() == b"beam" and (got / "l").is_symlink()
        assert (got / "ebin" / "x.beam").stat().st_mode & 0o7000 == 0
        if os.geteuid() == 0:
            assert got.stat().st_uid == 65534 and (got / "ebin" / "x.beam").stat().st_uid == 65534
    elif kind == "file":
        assert got.read_bytes() == b"file"
    else:
        assert got.is_symlink() and os.readlink(got) == "../decoy"
    assert decoy.read_text() == "d" and decoy.stat().st_uid == os.geteuid()


def test_an_upgrade_package_brings_its_start_scripts_which_the_agent_keeps_root_owned_not_in_the_root(tmp_path):
    from hotswap_testlib.agent_artifact import _root_v1, _upgrade_pkg
    root, h = _root_v1(tmp_path)
    pkg = tmp_path / "p.tar.gz"
    sha = _upgrade_pkg(pkg, extra=(("bin/demo", b'REL_VSN="2.0.0"\n'), ("bin/demo-2.0.0", b'REL_VSN="2.0.0"\n')))
    prep = ag.prepare_unpack(h, str(pkg), sha, "2.0.0", False)
    assert prep["changed"]
    kept = hs_dir(root) / "bin" / "2.0.0"
    assert sorted(os.listdir(kept)) == ["demo", "demo-2.0.0"]
    assert (kept / "demo").read_text() == 'REL_VSN="2.0.0"\n' and os.stat(kept / "demo").st_uid == os.geteuid()
    assert not (root / "bin" / "demo-2.0.0").exists()          # ROOT/bin changes only when 2.0.0 boots
    assert not [n for n in os.listdir(hs_dir(root)) if n.startswith("staging")]
