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
    env = ag.parse_env("# c\n\nRELEASE_NODE=demo@host\nexport A='x y'\nB=\"q\"\nC=a=b\n")
    assert env == {"RELEASE_NODE": "demo@host", "A": "x y", "B": "q", "C": "a=b"}


@pytest.mark.parametrize("bad", ["NOEQUALS", "1A=2", "A B=3"])
def test_parse_env_bad(bad):
    with pytest.raises(ValueError):
        ag.parse_env(bad)


# ------------------------------------------------------------------ tar safety


@pytest.mark.parametrize("name", ["releases/demo-2.0.0.rel", "releases/2.0.0/sys.config", "lib/demo-2.0.0/ebin/x.beam",
                                  "./lib/demo-2.0.0", "releases", "lib"])
def test_member_ok(name):
    assert ag.check_member(_member(name), "demo", "2.0.0")


@pytest.mark.parametrize("m,why", [
    (_member("/etc/passwd"), "absolute"),
    (_member("releases/2.0.0/../../x"), ".."),
    (_member("../x"), ".."),
    (_member("bin/demo"), "unexpected"),
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
