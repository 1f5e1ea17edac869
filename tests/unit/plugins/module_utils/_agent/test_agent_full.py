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
    assert "sha256" in e.value.msg and not (root / ".hotswap").exists()
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
    rc, out, _ign = _cli(root, "first-install", "--version", "1.0.0", "--package", str(pkg), "--sha256", sha,
                         "--service-manager", "daemon")
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
    (tmp_path / ".hotswap" / "cookie").write_text("s3cret\n")
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
