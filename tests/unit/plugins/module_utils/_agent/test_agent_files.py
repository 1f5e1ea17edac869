"""Files on the host: the env file, and the tar safety rules (examples and properties)."""
import io
import os
import shutil
import tarfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hotswap_testlib.agent_artifact import _member, ag

# ------------------------------------------------------------------ env file


def test_parse_env():
    # values byte-exact, as the agent writes them (issue 15, item 13): quotes and blanks are part of the value
    env = ag.parse_env("# c\n\nRELEASE_NODE=demo@host\nexport A='x y'\nB=\"q\"\nC=a=b\nD= sp \nE=\n")
    assert env == {"RELEASE_NODE": "demo@host", "A": "'x y'", "B": '"q"', "C": "a=b", "D": " sp ", "E": ""}


@pytest.mark.parametrize("bad", ["NOEQUALS", "1A=2", "A B=3", " A=1", "A =1", "A\r=1", "A=\0"])
def test_parse_env_bad(bad):
    with pytest.raises(ValueError):
        ag.parse_env(bad)


# ------------------------------------------------------------------ tar safety


@pytest.mark.parametrize("name", ["releases/demo-2.0.0.rel", "releases/2.0.0/sys.config", "lib/demo-2.0.0/ebin/x.beam",
                                  "./lib/demo-2.0.0", "releases", "lib", "bin", "bin/demo", "bin/demo-2.0.0"])
def test_member_ok(name):
    assert ag.check_member(_member(name), "demo", "2.0.0")


@pytest.mark.parametrize("m,why", [
    (_member("/etc/passwd"), "absolute"),
    (_member("releases/2.0.0/../../x"), ".."),
    (_member("../x"), ".."),
    (_member("erts-13.1.5/bin/beam.smp"), "unexpected"),
    (_member("releases/3.0.0/sys.config"), "unexpected"),
    (_member("releases/COOKIE"), "unexpected"),
    (_member("lib/demo-2.0.0/x", tarfile.SYMTYPE, "/etc/passwd"), "outside"),
    (_member("lib/demo-2.0.0/x", tarfile.SYMTYPE, "../../../../etc"), "outside"),
    (_member("lib/demo-2.0.0/x", tarfile.LNKTYPE, "../etc/passwd"), "outside"),
    (_member("lib/demo-2.0.0/x", tarfile.CHRTYPE), "device"),
    (_member("lib/demo-2.0.0/x", tarfile.FIFOTYPE), "device"),
])
def test_member_refused(m, why):
    with pytest.raises(ag.PackageRefused) as e:
        ag.check_member(m, "demo", "2.0.0")
    assert why in e.value.msg


def test_member_symlink_inside_ok():
    m = _member("lib/demo-2.0.0/priv/link", tarfile.SYMTYPE, "../ebin/demo.app")
    assert ag.check_member(m, "demo", "2.0.0")


def test_safe_extract_strips_setuid(tmp_path):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        ti = tarfile.TarInfo("lib/demo-2.0.0/ebin/x")
        ti.size = 2
        ti.mode = 0o4777
        ti.uid = 4242
        tf.addfile(ti, io.BytesIO(b"hi"))
    buf.seek(0)
    with tarfile.open(fileobj=buf) as tf:
        members = [(m, ag.check_member(m, "demo", "2.0.0")) for m in tf.getmembers()]
        ag.safe_extract(tf, members, str(tmp_path))
    st = os.stat(tmp_path / "lib/demo-2.0.0/ebin/x")
    assert st.st_mode & 0o7777 == 0o755
    assert (tmp_path / "lib/demo-2.0.0/ebin/x").read_bytes() == b"hi"


_SEGMENTS = ["..", ".", "a", "b", "/", "//", "lib", "sample-2.0.0", "releases", "2.0.0", "\\", "..\\", "a..b"]
_path = st.lists(st.sampled_from(_SEGMENTS), min_size=1, max_size=8).map("/".join)
_raw_path = st.lists(st.sampled_from(_SEGMENTS), min_size=1, max_size=8).map("".join)
_any_path = st.one_of(_path, _raw_path)
_kinds = st.sampled_from([tarfile.REGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.CHRTYPE,
                          tarfile.FIFOTYPE])


def _inside(root, p):
    p = os.path.normpath(p)
    return p == root or p.startswith(root + os.sep)


@settings(max_examples=1500, deadline=None)
@given(_any_path, _kinds, _any_path)
def test_property_tar_entry_never_resolves_outside_the_root(name, kind, link):
    m = _member(name, kind, link if kind in (tarfile.SYMTYPE, tarfile.LNKTYPE) else "")
    root = "/srv/root"
    try:
        rel = ag.member_rel(m)
    except ag.PackageRefused:
        return
    # accepted: the entry and (for links) what it points at stay under the root, lexically
    norm = name.replace("\\", "/")
    assert _inside(root, os.path.join(root, norm.lstrip("/"))) and not norm.startswith("/"), name
    assert _inside(root, os.path.join(root, rel)), (name, rel)
    assert kind not in (tarfile.CHRTYPE, tarfile.FIFOTYPE) or rel == "", name
    if rel and kind == tarfile.SYMTYPE:
        assert _inside(root, os.path.join(root, os.path.dirname(rel), link)), (name, link)
    if rel and kind == tarfile.LNKTYPE:
        assert _inside(root, os.path.join(root, link)), (name, link)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(_path, st.sampled_from([tarfile.REGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE,
                                                  tarfile.LNKTYPE]), _path), min_size=1, max_size=6))
def test_property_extraction_stays_inside(tmp_path, entries):
    """Whatever a package holds, checking + extracting it never creates anything outside the
    staging dir, and nothing inside resolves outside it."""
    import tempfile
    box = Path(tempfile.mkdtemp(dir=tmp_path))
    dest = box / "in" / "stage"
    dest.mkdir(parents=True)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for name, kind, link in entries:
            ti = _member(name, kind, link if kind in (tarfile.SYMTYPE, tarfile.LNKTYPE) else "")
            data = b"x" if kind == tarfile.REGTYPE else None
            ti.size = len(data or b"")
            tf.addfile(ti, io.BytesIO(data) if data else None)
    buf.seek(0)
    with tarfile.open(fileobj=buf) as tf:
        try:
            members = [(m, r) for m in tf.getmembers() for r in [ag.member_rel(m)] if r]
            ag.safe_extract(tf, members, str(dest))
        except (ag.PackageRefused, ag.OpFailed, OSError):
            pass
    outside = [p for p in box.rglob("*") if not _inside(str(box / "in"), str(p))]
    assert outside == [] or outside == [box / "in"], outside
    for p in dest.rglob("*"):
        assert _inside(str(dest), os.path.realpath(p)) or p.is_symlink() and not p.exists() and \
            _inside(str(dest), os.path.normpath(os.path.join(p.parent, os.readlink(p)))), p
    shutil.rmtree(box)


# ------------------------------------------------------------------ no-follow writes below the root


def test_safe_write_creates_and_replaces(tmp_path):
    (tmp_path / "releases").mkdir()
    ag.safe_write(str(tmp_path), "releases/RELEASES", "one\n", owner=(1234, 1234), mode=0o640)
    f = tmp_path / "releases" / "RELEASES"
    assert f.read_text() == "one\n" and (f.stat().st_mode & 0o7777) == 0o640
    if os.geteuid() == 0:
        assert (f.stat().st_uid, f.stat().st_gid) == (1234, 1234)
    ag.safe_write(str(tmp_path), str(f), b"two\n")
    assert f.read_bytes() == b"two\n"
    assert [p.name for p in (tmp_path / "releases").iterdir()] == ["RELEASES"]  # no temp left


def test_safe_write_never_writes_through_a_planted_link(tmp_path):
    root, decoy = tmp_path / "root", tmp_path / "decoy"
    (root / "releases").mkdir(parents=True)
    decoy.write_text("secret")
    os.chmod(decoy, 0o600)
    # a link at the name is replaced, the decoy untouched
    (root / "releases" / "start_erl.data").symlink_to(decoy)
    ag.safe_write(str(root), "releases/start_erl.data", "13.1.5 1.0.0\n", owner=(1234, 1234))
    assert decoy.read_text() == "secret" and not (root / "releases" / "start_erl.data").is_symlink()
    assert decoy.stat().st_uid == os.geteuid()
    # a link at a temp name a writer might guess is never followed (the temp name is random + O_EXCL)
    (root / "releases" / "start_erl.data.hotswap-tmp").symlink_to(decoy)
    ag.safe_write(str(root), "releases/start_erl.data", "x\n", owner=(1234, 1234))
    assert decoy.read_text() == "secret" and decoy.stat().st_uid == os.geteuid()


@pytest.mark.parametrize("where", ["releases", "root"])
def test_safe_write_refuses_a_linked_directory(tmp_path, where):
    root, elsewhere = tmp_path / "root", tmp_path / "elsewhere"
    elsewhere.mkdir()
    if where == "releases":
        root.mkdir()
        (root / "releases").symlink_to(elsewhere)
        target = root
    else:
        (elsewhere / "releases").mkdir()
        root.symlink_to(elsewhere)
        target = root
    with pytest.raises(ag.OpFailed) as e:
        ag.safe_write(str(target), "releases/RELEASES", "x")
    assert "symbolic link" in e.value.msg and "never follows" in e.value.msg
    assert not (elsewhere / "RELEASES").exists() and not (elsewhere / "releases" / "RELEASES").exists()


def test_safe_write_refuses_dotdot_and_outside(tmp_path):
    with pytest.raises(ag.OpFailed):
        ag.safe_write(str(tmp_path), "releases/../../x", "x")
    with pytest.raises(ag.OpFailed):
        ag.safe_write(str(tmp_path / "a"), str(tmp_path / "b" / "x"), "x")


def test_safe_read_and_rmtree_do_not_follow(tmp_path):
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    (outside / "keep").mkdir(parents=True)
    (outside / "keep" / "f").write_text("precious")
    (root / "lib").symlink_to(outside)
    assert ag.safe_read(str(root), "lib/keep/f") is None
    with pytest.raises(ag.OpFailed):
        ag.safe_rmtree(str(root), "lib/keep")
    assert (outside / "keep" / "f").exists()
    # a tree holding a link to outside: the link goes, the outside stays
    (root / "rel" / "x").mkdir(parents=True)
    (root / "rel" / "x" / "out").symlink_to(outside)
    ag.safe_rmtree(str(root), "rel")
    assert not (root / "rel").exists() and (outside / "keep" / "f").exists()
    ag.safe_rmtree(str(root), "missing/deeper")
    (root / "f").write_text("ok")
    assert ag.safe_read(str(root), "f") == b"ok"


def test_inside_resolves_links(tmp_path):
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "l").symlink_to("/etc")
    assert ag.inside(str(tmp_path / "r"), str(tmp_path / "r" / "x"))
    assert not ag.inside(str(tmp_path / "r"), str(tmp_path / "r" / "l" / "passwd"))
    assert ag.inside(str(tmp_path / "r"), str(tmp_path / "r" / "l" / "passwd"), real=False)


def test_lchown_tree_at_never_follows(tmp_path):
    decoy = tmp_path / "decoy"
    decoy.write_text("x")
    (tmp_path / "t" / "d").mkdir(parents=True)
    (tmp_path / "t" / "d" / "f").write_text("y")
    (tmp_path / "t" / "l").symlink_to(decoy)
    ag.lchown_tree_at(str(tmp_path), "t", 1234, 1234)
    if os.geteuid() == 0:
        assert (tmp_path / "t" / "d" / "f").stat().st_uid == 1234
        assert os.lstat(tmp_path / "t" / "l").st_uid == 1234
    assert decoy.stat().st_uid == os.geteuid()


# ------------------------------------------------------------------ links through links (issue 15, item 6)


def _tar(path, entries):
    """entries: (name, kind, data_or_linkname, mode)"""
    with tarfile.open(path, "w:gz") as tf:
        for name, kind, x, mode in entries:
            ti = tarfile.TarInfo(name)
            ti.type, ti.mode = kind, mode
            if kind == tarfile.REGTYPE:
                ti.size = len(x)
                tf.addfile(ti, io.BytesIO(x))
            else:
                ti.linkname = x
                tf.addfile(ti)
    import hashlib
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


# the attack from the issue: each link is inside the root lexically, but s1 -> the root, so s2 = s1/.. is
# the root's parent and s3 = s2/.. its parent; a hard link through s3 names a file outside the root
ATTACK = [("lib/x-1/s1", tarfile.SYMTYPE, "../..", 0o777),
          ("lib/x-1/s2", tarfile.SYMTYPE, "s1/..", 0o777),
          ("lib/x-1/s3", tarfile.SYMTYPE, "s2/..", 0o777),
          ("lib/x-1/h", tarfile.LNKTYPE, "lib/x-1/s3/SECRET", 0o644)]


@pytest.mark.parametrize("entries,why", [
    (ATTACK, "outside the root"),
    (ATTACK[1:2] + [("lib/x-1/s1", tarfile.SYMTYPE, "../..", 0o777)], "outside the root"),
    ([("lib/x-1/d", tarfile.SYMTYPE, "priv", 0o777), ("lib/x-1/d/f", tarfile.REGTYPE, b"x", 0o644)], "below the symbolic link"),
    ([("lib/x-1/f", tarfile.REGTYPE, b"x", 0o644), ("lib/x-1/d", tarfile.SYMTYPE, ".", 0o777),
      ("lib/x-1/h", tarfile.LNKTYPE, "lib/x-1/d/f", 0o644)], "earlier"),
    ([("lib/x-1/h", tarfile.LNKTYPE, "lib/x-1/f", 0o644), ("lib/x-1/f", tarfile.REGTYPE, b"x", 0o644)], "earlier"),
    ([("lib/x-1/s", tarfile.SYMTYPE, "f", 0o777), ("lib/x-1/h", tarfile.LNKTYPE, "lib/x-1/s", 0o644)], "earlier"),
    ([("lib/x-1/f", tarfile.REGTYPE, b"x", 0o644), ("lib/x-1/f", tarfile.SYMTYPE, "/etc/shadow", 0o777)], "outside"),
    ([("lib/x-1/f", tarfile.REGTYPE, b"x", 0o644), ("lib/x-1/f", tarfile.SYMTYPE, "g", 0o777)], "twice"),
    ([("lib/x-1/a", tarfile.SYMTYPE, "b", 0o777), ("lib/x-1/b", tarfile.SYMTYPE, "a", 0o777)], "loops"),
])
def test_links_through_links_are_refused(tmp_path, entries, why):
    secret = tmp_path / "SECRET"
    secret.write_text("root only")
    pkg = tmp_path / "a" / "b" / "pkg.tar.gz"
    pkg.parent.mkdir(parents=True)
    sha = _tar(pkg, entries)
    with pytest.raises(ag.PackageRefused) as e:
        ag.open_verified(str(pkg), sha, ag.member_rel)
    assert why in e.value.msg and "nothing changed" in e.value.msg
    # safe_extract checks the same on its own
    dest = tmp_path / "a" / "b" / "dest"
    dest.mkdir()
    with tarfile.open(pkg) as tf, pytest.raises(ag.PackageRefused):
        members = [(m, ag.member_rel(m)) for m in tf.getmembers()]
        ag.safe_extract(tf, members, str(dest))
    assert not any(p.name == "h" for p in dest.rglob("*"))


def test_symlinks_through_own_links_inside_and_hard_links_copy(tmp_path):
    pkg = tmp_path / "p.tar.gz"
    sha = _tar(pkg, [("lib/x-1/priv/deep/f", tarfile.REGTYPE, b"data", 0o6755),
                     ("lib/x-1/d", tarfile.SYMTYPE, "priv/deep", 0o777),
                     ("lib/x-1/up", tarfile.SYMTYPE, "d/../..", 0o777),   # = lib/x-1 through d: inside
                     ("lib/x-1/h", tarfile.LNKTYPE, "./lib/x-1/priv/deep/f", 0o644)])
    tf, members = ag.open_verified(str(pkg), sha, ag.member_rel)
    (tmp_path / "dest").mkdir()
    with tf:
        ag.safe_extract(tf, members, str(tmp_path / "dest"))
    h = tmp_path / "dest/lib/x-1/h"
    assert h.read_bytes() == b"data" and not h.is_symlink() and h.stat().st_nlink == 1
    assert h.stat().st_mode & 0o7000 == 0 and (tmp_path / "dest/lib/x-1/priv/deep/f").stat().st_mode & 0o7000 == 0


def test_truncated_package_is_refused_clearly(tmp_path):
    pkg = tmp_path / "p.tar.gz"
    _tar(pkg, [("lib/x-1/f%d" % i, tarfile.REGTYPE, os.urandom(20000), 0o644) for i in range(5)])
    data = pkg.read_bytes()
    pkg.write_bytes(data[:len(data) // 2])
    import hashlib
    sha = hashlib.sha256(pkg.read_bytes()).hexdigest()
    (tmp_path / "dest").mkdir()
    with pytest.raises(ag.PackageRefused) as e:
        tf, members = ag.open_verified(str(pkg), sha, ag.member_rel)
        with tf:
            ag.safe_extract(tf, members, str(tmp_path / "dest"))
    assert "truncated or damaged" in e.value.msg and "re-upload" in e.value.msg


def test_space_needed_counts_a_hard_link_as_its_file():
    big = tarfile.TarInfo("lib/x-1/big")
    big.size = 10 * 1024 * 1024
    link = _member("lib/x-1/h", tarfile.LNKTYPE, "lib/x-1/big")
    assert ag._space_needed([(big, "lib/x-1/big"), (link, "lib/x-1/h")]) >= 20 * 1024 * 1024
