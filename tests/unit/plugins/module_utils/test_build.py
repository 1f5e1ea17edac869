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


# --------------------------------------------------------------------------- publishing, edges, discard
# Fake release trees (no .beam files: every application is an empty one) and a fake `erl` for the relup,
# so that what the store looks like after each outcome is checked without OTP.

def _release(root, vsn, apps, vm_args="-name sample\n"):
    """A release tree like `mix release` leaves it: start_erl.data, the .rel, vm.args and lib/APP-VSN/ebin/APP.app."""
    apps = dict(apps, sample=vsn)
    _write(root, "releases/start_erl.data", b"13.1.5 %s\n" % vsn.encode())
    rel = (A("release"), ("sample", vsn), (A("erts"), "13.1.5"), [(A(a), v) for a, v in sorted(apps.items())])
    _write(root, "releases/%s/sample.rel" % vsn, (erlterms.format_term(rel) + ".\n").encode())
    _write(root, "releases/%s/vm.args" % vsn, vm_args.encode())
    for a, v in apps.items():
        spec = [(A("vsn"), v), (A("modules"), [])]
        if a == "sample":
            spec.append((A("mod"), (A("Elixir.Sample.Application"), [])))
        _write(root, "lib/%s-%s/ebin/%s.app" % (a, v, a),
               (erlterms.format_term((A("application"), A(a), spec)) + ".\n").encode())
    return str(root)


class FakeErl(object):
    """Runs nothing: answers RELUP ok (or an error) per base and writes the relup file systools would write."""

    def __init__(self, fail=None):
        self.fail = fail or {}          # base version -> OTP's message
        self.calls = []

    def __call__(self, argv, cwd=None, env=None):
        assert argv[0] == "erl", argv
        with open(env["HOTSWAP_RELUP_ARGS"]) as f:
            (new, bases, paths, out), = erlterms.parse_terms(f.read())
        self.calls.append({"new": new, "bases": bases, "paths": paths})
        lines = []
        for b in bases:
            vsn = b.split("/")[-2]
            if vsn in self.fail:
                lines.append("RELUP\t%s\terror\t%s" % (b, self.fail[vsn]))
            else:
                lines.append("RELUP\t%s\tok" % b)
        if not self.fail:
            with open(os.path.join(out, "relup"), "w") as f:
                f.write("{\"%s\",[],[]}.\n" % new.split("/")[-2])
        return 0, "\n".join(lines) + "\n", ""


def _publish(tmp_path, builder, vsn, apps, bases=(), vm_args="-name sample\n"):
    rel = _release(tmp_path / "rel" / vsn, vsn, apps, vm_args)
    (tmp_path / "src").mkdir(exist_ok=True)
    return builder.publish(rel, vsn, "sha256:" + vsn, bases, str(tmp_path / "src"))


def _store_entries(builder):
    return sorted(os.listdir(builder.store.root))


@pytest.fixture
def published(tmp_path):
    """1.0.0 (dep 0.1.0) and 2.0.0 (dep 0.2.0, edge from 1.0.0) published in a fresh store."""
    erl = FakeErl()
    builder = _build.Builder(erl, str(tmp_path / "store"), "sample")
    _publish(tmp_path, builder, "1.0.0", {"dep": "0.1.0"})
    _publish(tmp_path, builder, "2.0.0", {"dep": "0.2.0"}, ["1.0.0"])
    return builder, erl


def test_publish_makes_every_edge_then_renames_the_version_into_place(published):
    builder, erl = published
    m = builder.store.manifest("2.0.0")
    assert [(e["from"], e["verdict"], e["not_applied"]) for e in m["edges"]] == [("1.0.0", "hot", [])]
    assert m["edges"][0]["changed_apps"] == ["dep", "sample"]
    assert set(m["artifacts"]) == {"release", "upgrade"}
    assert _store_entries(builder) == ["1.0.0", "2.0.0"]        # no staging directory left
    appup = os.path.join(builder.store.release_dir("2.0.0"), "lib", "dep-0.2.0", "ebin", "dep.appup")
    assert erlterms.parse_terms(open(appup).read())[0][0] == "0.2.0"


def test_a_relup_error_fails_the_build_names_the_edge_and_publishes_nothing(tmp_path, published):
    builder, _erl = published
    builder.run = FakeErl(fail={"2.0.0": "Could not open file /s/sample/2.0.0/release/lib/dep-0.2.0/ebin/dep.appup"})
    with pytest.raises(_build.BuildError) as e:
        _publish(tmp_path, builder, "3.0.0", {"dep": "0.3.0"}, ["1.0.0", "2.0.0"])
    msg = str(e.value)
    assert "edge 2.0.0 -> 3.0.0 (application dep)" in msg and "internal error" in msg
    assert "not a reason to restart cold" in msg and "hotswap_mode=cold" in msg
    assert "edge 1.0.0" not in msg
    assert _store_entries(builder) == ["1.0.0", "2.0.0"]        # nothing published, nothing half-made
    assert builder.store.manifest("3.0.0") is None
    # the retry of the same version is not blocked
    builder.run = FakeErl()
    m = _publish(tmp_path, builder, "3.0.0", {"dep": "0.3.0"}, ["1.0.0", "2.0.0"])
    assert [e["verdict"] for e in m["edges"]] == ["hot", "hot"]
    assert builder.store.versions() == ["1.0.0", "2.0.0", "3.0.0"]


def test_any_failure_while_publishing_leaves_no_version_and_no_staging(tmp_path, published, monkeypatch):
    builder, _erl = published

    def boom(*a, **k):
        raise OSError("disk full")
    monkeypatch.setattr(builder, "upgrade_package", boom)
    with pytest.raises(OSError):
        _publish(tmp_path, builder, "3.0.0", {"dep": "0.3.0"}, ["2.0.0"])
    assert _store_entries(builder) == ["1.0.0", "2.0.0"]


def test_a_directory_left_without_manifest_and_old_staging_do_not_block_a_publish(tmp_path, published):
    builder, _erl = published
    os.makedirs(os.path.join(builder.store.vdir("3.0.0"), "release"))      # an interrupted older publish
    os.makedirs(os.path.join(builder.store.root, ".publish@3.0.0@crashed"))  # an interrupted build
    os.makedirs(os.path.join(builder.store.root, ".publish@3.0.0-rc@other"))  # another version's: kept
    _publish(tmp_path, builder, "3.0.0", {"dep": "0.2.0"}, ["2.0.0"])
    assert _store_entries(builder) == [".publish@3.0.0-rc@other", "1.0.0", "2.0.0", "3.0.0"]
    assert builder.store.manifest("3.0.0")["edges"][0]["verdict"] == "hot"


def test_a_failed_extension_leaves_the_published_version_as_it_was(tmp_path, published):
    builder, _erl = published
    _publish(tmp_path, builder, "1.5.0", {"dep": "0.1.5"})
    before = open(builder.store.manifest_path("2.0.0")).read()
    files_before = sorted(os.path.relpath(os.path.join(d, f), builder.store.vdir("2.0.0"))
                          for d, _dns, fns in os.walk(builder.store.vdir("2.0.0")) for f in fns)
    builder.run = FakeErl(fail={"1.5.0": "boom"})
    with pytest.raises(_build.BuildError, match=r"edge 1\.5\.0 -> 2\.0\.0"):
        builder.extend_edges("2.0.0", ["1.0.0", "1.5.0"])
    assert open(builder.store.manifest_path("2.0.0")).read() == before
    assert sorted(os.path.relpath(os.path.join(d, f), builder.store.vdir("2.0.0"))
                  for d, _dns, fns in os.walk(builder.store.vdir("2.0.0")) for f in fns) == files_before
    assert _store_entries(builder) == ["1.0.0", "1.5.0", "2.0.0"]
    builder.run = FakeErl()
    changed, m = builder.extend_edges("2.0.0", ["1.0.0", "1.5.0"])
    assert changed and [e["from"] for e in m["edges"]] == ["1.0.0", "1.5.0"]
    assert m["artifacts"]["upgrade"]["bases"] == ["1.0.0", "1.5.0"]
    assert builder.store.manifest("2.0.0") == m
    assert _store_entries(builder) == ["1.0.0", "1.5.0", "2.0.0"]
    assert builder.extend_edges("2.0.0", ["1.5.0"]) == (False, m)


def test_relup_path_puts_the_new_releases_applications_first(tmp_path, published):
    """A downgrade to a version whose dependency an older held release shares: systools must find the new
    release's copy of dep 0.1.0 (it holds the appup), not the older release's (it has none)."""
    builder, erl = published
    _publish(tmp_path, builder, "1.1.0", {"dep": "0.1.0"}, ["1.0.0", "2.0.0"])
    m = builder.store.manifest("1.1.0")
    assert [(e["from"], e["verdict"]) for e in m["edges"]] == [("1.0.0", "hot"), ("2.0.0", "hot")]
    assert m["edges"][1]["changed_apps"] == ["dep", "sample"]
    paths = erl.calls[-1]["paths"]
    dep_dirs = [p for p in paths if "/dep-0.1.0/" in p]
    assert len(dep_dirs) == 1 and "/.publish@1.1.0@" in dep_dirs[0], paths
    assert paths.index(dep_dirs[0]) < min(i for i, p in enumerate(paths) if "/2.0.0/" in p)
    appup = os.path.join(builder.store.release_dir("1.1.0"), "lib", "dep-0.1.0", "ebin", "dep.appup")
    vsn, ups, downs = erlterms.parse_terms(open(appup).read())[0]
    assert vsn == "0.1.0" and [u[0] for u in ups] == ["0.2.0"] and [d[0] for d in downs] == ["0.2.0"]


def test_a_real_cold_reason_stays_a_cold_edge(tmp_path, published):
    builder, _erl = published
    m = _publish(tmp_path, builder, "3.0.0", {"dep": "0.2.0"}, ["2.0.0"], vm_args="-name other\n")
    (e,) = m["edges"]
    assert e["verdict"] == "cold" and e["not_applied"] == []
    assert any("vm.args changed" in r for r in e["reasons"]), e
    assert "upgrade" not in m["artifacts"]


def test_app_mod_reads_the_application_module(tmp_path):
    root = _release(tmp_path / "r", "1.0.0", {"dep": "0.1.0"})
    assert _build.app_mod(os.path.join(root, "lib", "sample-1.0.0", "ebin"), "sample") == "Elixir.Sample.Application"
    assert _build.app_mod(os.path.join(root, "lib", "dep-0.1.0", "ebin"), "dep") is None
    assert _build.app_mod(os.path.join(root, "lib", "nope"), "nope") is None


def test_discard_removes_a_published_version_and_its_leftovers(published):
    builder, _erl = published
    os.makedirs(os.path.join(builder.store.root, ".extend@2.0.0@crashed"))
    assert builder.discard(["2.0.0"], bases=["1.0.0"], check=True) == ["2.0.0"]
    assert builder.store.versions() == ["1.0.0", "2.0.0"]               # check mode removes nothing
    assert builder.discard(["2.0.0"], bases=["1.0.0"]) == ["2.0.0"]
    assert _store_entries(builder) == ["1.0.0"]
    assert builder.discard(["2.0.0"], bases=["1.0.0"]) == []            # nothing left: not changed
    assert builder.discard(["9.9.9"]) == []


def test_discard_refuses_a_base_the_targets_run(published):
    builder, _erl = published
    with pytest.raises(_build.BuildError, match=r"refusing to discard 2\.0\.0 of sample: the targets run or hold"):
        builder.discard(["2.0.0"], bases=["2.0.0"])
    assert builder.store.versions() == ["1.0.0", "2.0.0"]


def test_discard_refuses_a_version_another_one_has_a_hot_edge_from_unless_both_go(published):
    builder, _erl = published
    with pytest.raises(_build.BuildError, match=r"published version 2\.0\.0 has a hot edge from it"):
        builder.discard(["1.0.0"])
    assert builder.discard(["1.0.0", "2.0.0"]) == ["1.0.0", "2.0.0"]
    assert builder.store.versions() == []


@pytest.mark.parametrize("bad", ["../x", "", "1.0.0/..", "a b"])
def test_discard_checks_the_version(published, bad):
    builder, _erl = published
    with pytest.raises(_build.BuildError, match="the version to discard"):
        builder.discard([bad])
