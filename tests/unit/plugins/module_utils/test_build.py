"""The build side's pure helpers: source digests, deterministic tarballs, release name and version checks."""
import gzip
import io
import os
import shlex
import string
import tarfile
import time

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from ansible_collections.beam.hotswap.plugins.module_utils import _build
from ansible_collections.beam.hotswap.plugins.module_utils._agent import erlterms

A = erlterms.Atom


# --------------------------------------------------------------------------- tree_digest

def _write(root, rel, data=b"x", mode=0o644):
    p = root / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data)
    os.chmod(p, mode)
    return p


@pytest.fixture
def src(tmp_path):
    root = tmp_path / "src"
    _write(root, "mix.exs", b"defmodule X.MixProject do end\n")
    _write(root, "lib/x.ex", b"defmodule X do end\n")
    _write(root, "config/config.exs", b"import Config\n")
    return root


def test_tree_digest_ignores_build_deps_git(src):
    before = _build.tree_digest(str(src))
    _write(src, "_build/prod/lib/x/ebin/Elixir.X.beam", b"\0beam")
    _write(src, "deps/dep/mix.exs", b"dep")
    _write(src, ".git/HEAD", b"ref: refs/heads/main\n")
    _write(src, "lib/_build/nested.txt", b"noise at any depth")
    assert _build.tree_digest(str(src)) == before


def test_tree_digest_notices_changes(src):
    d0 = _build.tree_digest(str(src))
    _write(src, "lib/x.ex", b"defmodule X do def y, do: 1 end\n")
    d1 = _build.tree_digest(str(src))
    assert d1 != d0
    _write(src, "lib/x.ex", b"defmodule X do end\n")
    assert _build.tree_digest(str(src)) == d0          # content, not mtimes
    _write(src, "lib/new.ex", b"")
    d2 = _build.tree_digest(str(src))
    assert d2 != d0                                     # a new (even empty) file
    (src / "lib" / "new.ex").rename(src / "lib" / "renamed.ex")
    assert _build.tree_digest(str(src)) not in (d0, d2)  # paths count
    (src / "lib" / "renamed.ex").unlink()
    os.chmod(src / "mix.exs", 0o755)
    assert _build.tree_digest(str(src)) != d0          # the executable bit counts


def test_tree_digest_same_content_elsewhere(src, tmp_path):
    other = tmp_path / "other"
    for p in sorted(src.rglob("*")):
        if p.is_file():
            _write(other, p.relative_to(src), p.read_bytes())
    assert _build.tree_digest(str(other)) == _build.tree_digest(str(src))


# --------------------------------------------------------------------------- deterministic_tar

def _tree(root, mtime):
    _write(root, "releases/1.0.0/x.rel", b"{release, x}.\n")
    _write(root, "lib/x-1.0.0/ebin/x.app", b"{application, x, []}.\n")
    _write(root, "bin/x", b"#!/bin/sh\n", 0o755)
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            os.utime(os.path.join(dirpath, n), (mtime, mtime))


def test_deterministic_tar_byte_identical(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    _tree(a, 1_000_000)
    _tree(b, time.time())
    members = ["bin", "lib", "releases"]
    _build.deterministic_tar(str(tmp_path / "a.tar.gz"), str(a), members)
    _build.deterministic_tar(str(tmp_path / "b.tar.gz"), str(b), list(reversed(members)))
    da, db = (tmp_path / "a.tar.gz").read_bytes(), (tmp_path / "b.tar.gz").read_bytes()
    assert da == db
    with tarfile.open(tmp_path / "a.tar.gz") as t:
        names = t.getnames()
        infos = t.getmembers()
        bin_mode = t.getmember("bin/x").mode
    assert names == sorted(names)
    assert "lib/x-1.0.0/ebin/x.app" in names and "bin/x" in names
    assert all(i.mtime == 0 and i.uid == 0 and i.gid == 0 and not i.uname for i in infos)
    assert bin_mode & 0o111
    # changing content changes the bytes
    _write(b, "lib/x-1.0.0/ebin/x.app", b"{application, x, [changed]}.\n")
    _build.deterministic_tar(str(tmp_path / "b.tar.gz"), str(b), members)
    assert (tmp_path / "b.tar.gz").read_bytes() != da
    assert da[4:8] == b"\0\0\0\0"  # gzip header mtime
    assert gzip.GzipFile(fileobj=io.BytesIO(da)).read()  # and it is a valid gzip
    assert not list(tmp_path.glob("*.tmp"))


# --------------------------------------------------------------------------- names and versions

BAD_VERSIONS = ["", "..", "1..0", "../1.0.0", "1.0.0/..", "1/0", "/1.0.0", "1.0.0;rm -rf /", "1.0.0 x",
                "$(id)", "`id`", "1.0.0|x", "1.0.0&", "1.0.0>x", "1.0.0'", '1.0.0"', "1.0.0\n", "-1.0.0",
                ".1.0", "1.0.0*", "a" * 65, None, 1, b"1.0.0"]


@pytest.mark.parametrize("vsn", BAD_VERSIONS)
def test_check_version_rejects(vsn):
    with pytest.raises(_build.BuildError) as e:
        _build.check_version(vsn, "hotswap_version")
    assert "hotswap_version" in str(e.value)


@pytest.mark.parametrize("vsn", ["1.0.0", "2.0.0-rc.1", "1.0.0+build.5", "10.20.30", "v1", "1_2"])
def test_check_version_accepts(vsn):
    _build.check_version(vsn)


@pytest.mark.parametrize("name", ["", "Sample", "1app", "_x", "a-b", "a/b", "..", "a;b", "a b", "$(id)",
                                  "a" * 64, None, "sample\n"])
def test_check_name_rejects(name):
    with pytest.raises(_build.BuildError) as e:
        _build.check_name(name)
    assert "hotswap_app" in str(e.value)


@pytest.mark.parametrize("name", ["sample", "my_app", "a1", "a" * 63])
def test_check_name_accepts(name):
    _build.check_name(name)


def _accepted(v):
    try:
        _build.check_version(v)
        return True
    except _build.BuildError:
        return False


SAFE = string.ascii_letters + string.digits + "._+-"


@given(st.text(max_size=80))
@example("1.0.0")
@example("1.0..0")
@example("1.0.0\x00")
@example("1.0.0\n")
def test_version_property_accepted_is_safe(v):
    """Whatever check_version accepts is a plain path component and a plain shell word."""
    if not _accepted(v):
        return
    assert 1 <= len(v) <= 64
    assert set(v) <= set(SAFE)
    assert ".." not in v and "/" not in v and v not in (".", "..")
    assert v[0].isalnum()
    assert shlex.quote(v) == v
    assert os.path.basename(v) == v and os.path.normpath(v) == v


@given(st.lists(st.integers(0, 10 ** 6), min_size=1, max_size=4),
       st.none() | st.text(string.ascii_lowercase + string.digits, min_size=1, max_size=8))
def test_version_property_semver_accepted(parts, pre):
    v = ".".join(map(str, parts)) + ("-" + pre if pre else "")
    _build.check_version(v)


@given(st.text(SAFE, max_size=30), st.sampled_from(list(" /\\;|&$`'\"<>(){}*?!#~\n\t\x00") + ["..", "é"]),
       st.text(SAFE, max_size=30))
def test_version_property_bad_char_rejected(pre, bad, post):
    assert not _accepted(pre + bad + post)


@pytest.mark.parametrize("name, kind, needle", [
    ("../escape.ex", tarfile.REGTYPE, "contains '..'"),
    ("/etc/passwd", tarfile.REGTYPE, "absolute path"),
    ("lib/dev", tarfile.CHRTYPE, "device"),
    ("lib/link.ex", tarfile.SYMTYPE, "is a link"),
])
def test_source_archive_entries_follow_the_agents_tar_rules(tmp_path, name, kind, needle):
    arch = tmp_path / "src.tar"
    with tarfile.open(arch, "w") as t:
        ti = tarfile.TarInfo(name)
        ti.type = kind
        if kind == tarfile.SYMTYPE:
            ti.linkname = "other.ex"
        t.addfile(ti, io.BytesIO(b"") if kind == tarfile.REGTYPE else None)
    builder = _build.Builder(lambda *a, **k: (0, "", ""), str(tmp_path / "store"), "sample")
    with pytest.raises(_build.BuildError, match="source archive") as e:
        builder.stage_archive(str(arch))
    assert needle in str(e.value)
