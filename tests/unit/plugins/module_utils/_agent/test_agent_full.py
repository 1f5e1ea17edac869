"""Full releases: first-install refusals, staging a verified tarball, the cookie, bin/ swaps."""
import os
import tarfile
from pathlib import Path

import pytest

from hotswap_testlib.agent_artifact import (
    RELEASES,
    _cli,
    _full_tarball,
    _host,
    _member,
    ag,
)

from ansible_collections.beam.hotswap.plugins.module_utils._agent.names import state_dir


def hs_dir(root):
    """The agent's directory for a release root (beside it, root-owned)."""
    return type(root)(state_dir(str(root)))

# ------------------------------------------------------------------ full tarballs (first-install, cold)


@pytest.mark.parametrize("name", ["bin/demo", "bin", "erts-13.1.5/bin/beam.smp", "lib/kernel-8.5.3/ebin/x.beam",
                                  "releases/2.0.0/vm.args", "releases/COOKIE", "releases/start_erl.data",
                                  "./releases/2.0.0/demo.rel"])
def test_full_member_ok(name):
    assert ag.check_full_member(_member(name), "demo", "2.0.0")


@pytest.mark.parametrize("m,why", [
    (_member("/bin/sh"), "absolute"),
    (_member("bin/../../x"), ".."),
    (_member("etc/passwd"), "unexpected"),
    (_member("releases/1.0.0/vm.args"), "unexpected"),
    (_member(".hotswap/cookie"), "unexpected"),
    (_member("releases/RELEASES"), "unexpected"),
    (_member("bin/demo", tarfile.SYMTYPE, "/bin/sh"), "outside"),
    (_member("lib/x-1/priv/l", tarfile.SYMTYPE, "../../../../etc/passwd"), "outside"),
    (_member("erts-13.1.5/bin/x", tarfile.BLKTYPE), "device"),
    (_member("releases/COOKIE", tarfile.SYMTYPE, "2.0.0/vm.args"), "regular file"),
])
def test_full_member_refused(m, why):
    with pytest.raises(ag.PackageRefused) as e:
        ag.check_full_member(m, "demo", "2.0.0")
    assert why in e.value.msg


def test_stage_full_verifies_sha_first_and_extracts(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    h = ag.Host(str(root), "demo")
    pkg = tmp_path / "demo-1.0.0-full.tar.gz"
    sha = _full_tarball(pkg)
    with pytest.raises(ag.OpFailed) as e:
        ag.stage_full(h, str(pkg), "0" * 64, "1.0.0", (os.getuid(), os.getgid()))
    assert "sha256" in e.value.msg and not hs_dir(root).exists()
    st = ag.stage_full(h, str(pkg), sha, "1.0.0", (os.getuid(), os.getgid()))
    try:
        assert st["rel"]["version"] == "1.0.0" and st["erts_dirs"] == ["erts-13.1.5"]
        assert st["pkg_libs"] == ["demo-1.0.0", "kernel-8.5.3"]
        assert (Path(st["staging"]) / "bin" / "demo").exists()
    finally:
        ag.rmtree(st["staging"])
    with pytest.raises(ag.PackageRefused) as e:  # a tarball of another version
        ag.stage_full(h, str(pkg), sha, "2.0.0", (os.getuid(), os.getgid()))
    assert "unexpected" in e.value.msg


def test_first_install_refusals_without_node(tmp_path):
    root = tmp_path / "root"
    pkg = tmp_path / "full.tar.gz"
    sha = _full_tarball(pkg, extra=[("releases/1.0.0/../../../escape", b"x")])
    rc, out, _ign = _cli(root, "--user", "nobody", "first-install", "--version", "1.0.0", "--package", str(pkg),
                         "--sha256", sha, "--service-manager", "daemon")
    assert rc == 2 and ".." in out["msg"], out  # an unsafe package is bad input
    assert not (root / "bin").exists() and not (tmp_path / "escape").exists()
    # a root holding a release is refused: use hot/cold
    h = _host(root)
    h.write_releases(ag.parse_releases(RELEASES))
    sha = _full_tarball(pkg)
    rc, out, _ign = _cli(root, "first-install", "--version", "1.0.0", "--package", str(pkg), "--sha256", sha)
    assert rc == 1 and "already installed" in out["msg"] and "hot/cold" in out["msg"], out
    # cold needs a release to start from
    (root / "releases" / "RELEASES").unlink()
    rc, out, _ign = _cli(root, "cold", "--version", "1.0.0", "--package", str(pkg), "--sha256", sha)
    assert rc == 1 and "first-install" in out["msg"], out


def test_install_cookie(tmp_path):
    h = _host(tmp_path)
    assert ag.install_cookie(h, (os.getuid(), os.getgid())) is False  # no .hotswap/cookie: keep the packaged one
    h.ensure_hs()
    (hs_dir(tmp_path) / "cookie").write_text("s3cret\n")
    (tmp_path / "releases" / "COOKIE").write_text("PACKAGED")
    assert ag.install_cookie(h, (os.getuid(), os.getgid())) is True
    c = tmp_path / "releases" / "COOKIE"
    assert c.read_text() == "s3cret" and (c.stat().st_mode & 0o777) == 0o400
    assert ag.install_cookie(h, (os.getuid(), os.getgid())) is False


def test_swap_bin_and_save(tmp_path):
    h = _host(tmp_path)
    h.ensure_hs()
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "demo").write_text("old")
    new = tmp_path / "newbin"
    new.mkdir()
    (new / "demo").write_text("new")
    saved = ag.save_bin(h, "1.0.0")
    assert ag.swap_bin(h, str(new), (os.getuid(), os.getgid())) is True
    assert (tmp_path / "bin" / "demo").read_text() == "new"
    assert ag.swap_bin(h, str(new), (os.getuid(), os.getgid())) is False  # same content: untouched
    assert ag.swap_bin(h, saved, (os.getuid(), os.getgid())) is True
    assert (tmp_path / "bin" / "demo").read_text() == "old"
    assert not (tmp_path / "bin.hotswap-old").exists() and not (tmp_path / "bin.hotswap-new").exists()


# ------------------------------------------------------------------ issue 15: first install, no-follow placing

def _nobody_host(root):
    import pwd
    try:
        pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("no user nobody")
    return ag.Host(str(root), "demo", user="nobody")


@pytest.mark.parametrize("where", ["/", "/opt", "/usr/local", "/etc", "/var/lib", "/tmp", "/lib64", "/home", "/run"])
def test_first_install_refuses_system_directories(where):
    h = ag.Host(where, "demo")
    with pytest.raises(ag.OpFailed) as e:
        ag.check_first_install_root(h, (65534, 65534), retry=True, create=True)
    assert "hotswap_root" in e.value.msg and "system directory" in e.value.msg and "nothing changed" in e.value.msg


def test_first_install_refuses_a_users_home_and_a_foreign_non_empty_dir(tmp_path, monkeypatch):
    import pwd
    home = tmp_path / "home" / "alice"
    home.mkdir(parents=True)
    fake = pwd.struct_passwd(("alice", "x", 4321, 4321, "", str(home), "/bin/sh"))
    monkeypatch.setattr(ag.pwd, "getpwall", lambda: [fake])
    with pytest.raises(ag.OpFailed) as e:
        ag.check_first_install_root(ag.Host(str(home), "demo"), (65534, 65534), retry=False, create=True)
    assert "home directory of user alice" in e.value.msg
    other = tmp_path / "srv-app"
    other.mkdir()
    (other / "someone-elses.conf").write_text("x")
    os.chmod(other / "someone-elses.conf", 0o4755)
    with pytest.raises(ag.OpFailed) as e:
        ag.check_first_install_root(ag.Host(str(other), "demo"), (65534, 65534), retry=False, create=True)
    assert "not empty" in e.value.msg and "someone-elses.conf" in e.value.msg
    assert (other / "someone-elses.conf").stat().st_mode & 0o7777 == 0o4755
    assert (other.stat().st_uid, (other / "someone-elses.conf").stat().st_uid) == (os.geteuid(), os.geteuid())
    # an interrupted first install of this agent may continue in its own directory
    ag.check_first_install_root(ag.Host(str(other), "demo"), (65534, 65534), retry=True, create=True)
    assert (other / "someone-elses.conf").stat().st_uid == os.geteuid()   # contents never chowned


def test_first_install_creates_a_missing_root_for_the_node_user(tmp_path):
    root = tmp_path / "new" / "demo"
    h = ag.Host(str(root), "demo")
    ag.check_first_install_root(h, (65534, 65534), retry=False)
    assert not root.exists()                                   # the check alone makes nothing
    ag.check_first_install_root(h, (65534, 65534), retry=False, create=True)
    assert root.is_dir() and root.stat().st_mode & 0o777 == 0o750
    if os.geteuid() == 0:
        assert root.stat().st_uid == 65534
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "new")
    with pytest.raises(ag.OpFailed) as e:
        ag.check_first_install_root(ag.Host(str(link), "demo"), (65534, 65534), retry=True, create=True)
    assert "symbolic link" in e.value.msg


def test_installed_is_decided_by_the_agents_records(tmp_path):
    import argparse
    root = tmp_path / "root"
    root.mkdir()
    h = ag.Host(str(root), "demo")
    h.ensure_hs()
    assert not ag.installed_by_agent(h)
    h.set_full_sha("1.0.0", "a" * 64)
    assert ag.installed_by_agent(h)
    # the app user deleted RELEASES and bin/demo: the agent's record still says installed
    a = argparse.Namespace(version="1.0.0", check=None, package=str(tmp_path / "p"), sha256="0" * 64, timeout=5)
    with pytest.raises(ag.OpFailed) as e:
        ag.cmd_first_install(h, a)
    assert "already installed" in e.value.msg and "use hot/cold" in e.value.msg


def test_stage_full_strips_setuid_and_chowns_without_following(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    h = ag.Host(str(root), "demo")
    pkg = tmp_path / "demo-1.0.0-full.tar.gz"
    sha = _full_tarball(pkg, extra=[("erts-13.1.5/bin/suid", b"x")])
    with tarfile.open(pkg) as tf:   # rewrite with a setuid/setgid member and a link to a decoy outside
        members = [(m, tf.extractfile(m).read() if m.isfile() else None) for m in tf.getmembers()]
    decoy = tmp_path / "decoy"
    decoy.write_text("d")
    with tarfile.open(pkg, "w:gz") as tf:
        for m, data in members:
            if m.name == "erts-13.1.5/bin/suid":
                m.mode = 0o6755
            tf.addfile(m, __import__("io").BytesIO(data) if data is not None else None)
        ln = tarfile.TarInfo("lib/demo-1.0.0/priv/l")
        ln.type, ln.linkname = tarfile.SYMTYPE, "../ebin/demo.app"
        tf.addfile(ln)
    import hashlib
    sha = hashlib.sha256(pkg.read_bytes()).hexdigest()
    st = ag.stage_full(h, str(pkg), sha, "1.0.0", (65534, 65534))
    try:
        s = Path(st["staging"])
        assert (s / "erts-13.1.5/bin/suid").stat().st_mode & 0o7000 == 0
        assert s.stat().st_uid == os.geteuid() and s.stat().st_mode & 0o777 == 0o700   # staging stays root's
        if os.geteuid() == 0:
            assert (s / "bin" / "demo").stat().st_uid == 65534 and os.lstat(s / "lib/demo-1.0.0/priv/l").st_uid == 65534
        assert decoy.stat().st_uid == os.geteuid()
    finally:
        ag.rmtree(st["staging"])


def test_merge_move_and_place_release_never_follow_planted_links(tmp_path):
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (outside / "keep").write_text("keep")
    h = ag.Host(str(root), "demo")
    pkg = tmp_path / "demo-1.0.0-full.tar.gz"
    sha = _full_tarball(pkg)
    st = ag.stage_full(h, str(pkg), sha, "1.0.0", (os.getuid(), os.getgid()))
    try:
        (root / "releases").mkdir()
        (root / "lib").symlink_to(outside)                     # planted by the app user
        with pytest.raises(ag.OpFailed) as e:
            ag.place_release(h, st, "1.0.0", [], (os.getuid(), os.getgid()))
        assert "symbolic link" in e.value.msg and sorted(os.listdir(outside)) == ["keep"]
        # a first install's merge replaces the link itself and moves the staged lib/ in
        ag._merge_move(h, os.path.basename(st["staging"]), "lib")
        assert (root / "lib").is_dir() and not (root / "lib").is_symlink() and (root / "lib/demo-1.0.0").is_dir()
        assert sorted(os.listdir(outside)) == ["keep"]
    finally:
        ag.rmtree(st["staging"])


def test_install_cookie_replaces_a_planted_link(tmp_path):
    h = _host(tmp_path)
    h.ensure_hs()
    (hs_dir(tmp_path) / "cookie").write_text("s3cret\n")
    decoy = tmp_path / "decoy"
    decoy.write_text("not yours")
    (tmp_path / "releases" / "COOKIE").symlink_to(decoy)
    assert ag.install_cookie(h, (65534, 65534)) is True
    c = tmp_path / "releases" / "COOKIE"
    assert not c.is_symlink() and c.read_text() == "s3cret" and c.stat().st_mode & 0o777 == 0o400
    assert decoy.read_text() == "not yours" and decoy.stat().st_uid == os.geteuid()


def test_save_bin_copies_no_links_out_and_no_foreign_hard_links(tmp_path):
    root = tmp_path / "root"
    (root / "releases").mkdir(parents=True)
    (root / "bin").mkdir()
    h = _nobody_host(root)
    (root / "bin" / "demo").write_text("#!/bin/sh\n")
    secret = tmp_path / "secret"
    secret.write_text("root only")
    os.chmod(secret, 0o600)
    os.link(secret, root / "bin" / "hard")                    # a hard link to a root-owned file
    (root / "bin" / "soft").symlink_to(secret)
    if os.geteuid() == 0:
        os.chown(root / "bin" / "demo", 65534, 65534)
    dst = Path(ag.save_bin(h, "1.0.0"))
    assert (dst / "soft").is_symlink() and (dst / "demo").read_text() == "#!/bin/sh\n"
    if os.geteuid() == 0:
        assert not (dst / "hard").exists()
    # and back into the root: a fresh tree the node user owns, links as links
    ag.rmtree(str(root / "bin"))
    (root / "bin").symlink_to(tmp_path)
    assert ag.swap_bin(h, str(dst), (65534, 65534)) is True
    assert (root / "bin").is_dir() and not (root / "bin").is_symlink() and (root / "bin" / "soft").is_symlink()
    assert secret.read_text() == "root only" and secret.stat().st_uid == os.geteuid()


def test_cli_first_install_refuses_a_foreign_non_empty_root(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    (root / "other-program").mkdir()
    (root / "other-program" / "tool").write_text("x")
    os.chmod(root / "other-program" / "tool", 0o4755)
    pkg = tmp_path / "full.tar.gz"
    sha = _full_tarball(pkg)
    rc, out, _ign = _cli(root, "--user", "nobody", "first-install", "--version", "1.0.0", "--package", str(pkg),
                         "--sha256", sha, "--service-manager", "daemon")
    assert rc == 1 and "not empty" in out["msg"] and "hotswap_root" in out["msg"], out
    assert sorted(os.listdir(root)) == ["other-program"]
    tool = (root / "other-program" / "tool").stat()
    assert tool.st_mode & 0o7777 == 0o4755 and tool.st_uid == os.geteuid()


def test_packaged_cookie_is_kept_but_made_private(tmp_path):
    h = _host(tmp_path)
    c = tmp_path / "releases" / "COOKIE"
    c.write_text("PACKAGED")
    c.chmod(0o644)
    assert ag.install_cookie(h, (os.getuid(), os.getgid())) is True
    assert c.read_text() == "PACKAGED" and (c.stat().st_mode & 0o777) == 0o400
    assert ag.install_cookie(h, (os.getuid(), os.getgid())) is False
