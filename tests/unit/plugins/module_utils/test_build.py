"""The build side's pure helpers: source digests, deterministic tarballs, release name and version checks;
the store's modes and the release cookie kept out of everything the build shows."""
import gzip
import io
import json
import os
import shlex
import stat
import string
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from ansible_collections.beam.hotswap.plugins.module_utils import _build
from ansible_collections.beam.hotswap.plugins.module_utils._agent import erlterms
from hotswap_testlib.requirements import require

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


# --------------------------------------------------------------------------- appups that applications ship

SHIPPED = (b'%% upstream appup, the way libraries write them (Ranch 2.x style)\n'
           b'{"0.2.0",\n [{<<"0\\\\.1\\\\.[0-9]+.*">>, [{apply, {dep, stop_all, []}}, {load_module, dep_mod},'
           b' {apply, {dep, restart_all, []}}]}],\n [{<<"0\\\\.1\\\\.[0-9]+.*">>, [{load_module, dep_mod}]}]}.\n'
           b'{"0.1.9", [], []}.\n')


def _erl_module(root, ebin, mod, body):
    """Compile a real Erlang module ``mod`` into ``root/ebin`` (erlc) and list it in the .app's modules."""
    require("erlc")
    d = root / ebin
    d.mkdir(parents=True, exist_ok=True)
    (d / (mod + ".erl")).write_text("-module(%s).\n-export([f/0]).\n%s\n" % (mod, body))
    subprocess.run(["erlc", "-o", str(d), str(d / (mod + ".erl"))], check=True, capture_output=True)
    (d / (mod + ".erl")).unlink()


def _publish_with(tmp_path, builder, vsn, apps, bases=(), files=None, beams=None):
    """Like _publish, with extra files (relative path -> bytes) and Erlang modules ((ebin, mod) -> body) in the tree."""
    root = tmp_path / "rel" / vsn
    _release(root, vsn, apps)
    for rel, data in (files or {}).items():
        _write(root, rel, data)
    for (ebin, mod), body in (beams or {}).items():
        _erl_module(root, ebin, mod, body)
    (tmp_path / "src").mkdir(exist_ok=True)
    return builder.publish(str(root), vsn, "sha256:" + vsn, bases, str(tmp_path / "src"))


@pytest.fixture
def shipped(tmp_path):
    """1.0.0 with dep 0.1.3 published; dep 0.2.0 ships SHIPPED (a regex from-version, two terms)."""
    builder = _build.Builder(FakeErl(), str(tmp_path / "store"), "sample")
    _publish_with(tmp_path, builder, "1.0.0", {"dep": "0.1.3"}, beams={("lib/dep-0.1.3/ebin", "dep_mod"): "f() -> 1."})
    return builder


def test_a_shipped_appup_is_used_as_written_and_the_edge_says_so(tmp_path, shipped):
    m = _publish_with(tmp_path, shipped, "2.0.0", {"dep": "0.2.0"}, ["1.0.0"],
                      files={"lib/dep-0.2.0/ebin/dep.appup": SHIPPED},
                      beams={("lib/dep-0.2.0/ebin", "dep_mod"): "f() -> 2."})
    (e,) = m["edges"]
    assert e["verdict"] == "hot" and e["appups"] == {"dep": "shipped", "sample": "generated"}, e
    assert "warnings" not in e and e["modules"]["loaded"] == ["dep_mod"]
    appup = os.path.join(shipped.store.release_dir("2.0.0"), "lib", "dep-0.2.0", "ebin", "dep.appup")
    assert open(appup, "rb").read() == SHIPPED            # never regenerated, byte for byte
    # systools finds it: the new release's dep dir comes first on the relup path
    paths = shipped.run.calls[-1]["paths"]
    assert [p for p in paths if "/dep-" in p][0].endswith("/lib/dep-0.2.0/ebin")
    # and the upgrade package carries it
    with tarfile.open(os.path.join(shipped.store.vdir("2.0.0"), m["artifacts"]["upgrade"]["file"])) as t:
        assert t.extractfile("lib/dep-0.2.0/ebin/dep.appup").read() == SHIPPED
    # a later extension (a new base) still sees the shipped file, not a generated one
    _publish_with(tmp_path, shipped, "1.5.0", {"dep": "0.1.5"}, beams={("lib/dep-0.1.5/ebin", "dep_mod"): "f() -> 5."})
    changed, m = shipped.extend_edges("2.0.0", ["1.0.0", "1.5.0"])
    assert changed and [(x["from"], x["verdict"], x["appups"]["dep"]) for x in m["edges"]] == [
        ("1.0.0", "hot", "shipped"), ("1.5.0", "hot", "shipped")]
    assert open(appup, "rb").read() == SHIPPED


def test_a_shipped_appup_without_an_entry_for_the_running_version_is_a_named_cold_reason(tmp_path, shipped):
    from ansible_collections.beam.hotswap.plugins.module_utils import _plan
    text = b'{"0.2.0", [{<<"0\\\\.0\\\\..*">>, []}], [{<<"0\\\\.0\\\\..*">>, []}]}.\n'
    m = _publish_with(tmp_path, shipped, "2.0.0", {"dep": "0.2.0"}, ["1.0.0"],
                      files={"lib/dep-0.2.0/ebin/dep.appup": text},
                      beams={("lib/dep-0.2.0/ebin", "dep_mod"): "f() -> 2."})
    (e,) = m["edges"]
    assert e["verdict"] == "cold" and e["appups"]["dep"] == "shipped", e
    (why,) = e["reasons"]
    assert "the appup dep 0.2.0 ships (lib/dep-0.2.0/ebin/dep.appup) has no entry for dep 0.1.3" in why, why
    assert "rel/appups/dep/0.2.0.appup" in why
    assert "upgrade" not in m["artifacts"]
    status = {"installed": True, "node_up": True, "running": "1.0.0", "permanent": "1.0.0",
              "releases": [{"version": "1.0.0"}]}
    with pytest.raises(_plan.PlanError, match="hotswap_mode=hot but 1.0.0 -> 2.0.0 can only be cold: the appup dep"):
        _plan.deploy(status, m, "hot")
    assert _plan.deploy(status, m, "auto")["action"] == "cold"


def test_the_projects_appup_wins_over_the_shipped_one_and_may_use_a_regex(tmp_path, shipped):
    _write(tmp_path, "src/rel/appups/dep/0.2.0.appup",
           b'{"0.2.0", [{<<"0\\\\.1\\\\..*">>, [{load_module, dep_mod}]}], [{<<"0\\\\.1\\\\..*">>, [{load_module, dep_mod}]}]}.\n')
    m = _publish_with(tmp_path, shipped, "2.0.0", {"dep": "0.2.0"}, ["1.0.0"],
                      files={"lib/dep-0.2.0/ebin/dep.appup": SHIPPED},
                      beams={("lib/dep-0.2.0/ebin", "dep_mod"): "f() -> 2."})
    (e,) = m["edges"]
    assert e["verdict"] == "hot" and e["appups"] == {"dep": "project", "sample": "generated"}, e
    appup = os.path.join(shipped.store.release_dir("2.0.0"), "lib", "dep-0.2.0", "ebin", "dep.appup")
    vsn, ups, _downs = erlterms.parse_terms(open(appup).read())[0]
    assert (vsn, ups) == ("0.2.0", [("0.1.3", [(A("load_module"), A("dep_mod"))])])


def test_a_shipped_appup_that_misses_a_changed_module_is_used_with_a_warning(tmp_path, shipped):
    m = _publish_with(tmp_path, shipped, "2.0.0", {"dep": "0.2.0"}, ["1.0.0"],
                      files={"lib/dep-0.2.0/ebin/dep.appup": SHIPPED},
                      beams={("lib/dep-0.2.0/ebin", "dep_mod"): "f() -> 2.",
                             ("lib/dep-0.2.0/ebin", "dep_new"): "f() -> 0."})
    (e,) = m["edges"]
    assert e["verdict"] == "hot" and e["reasons"] == [], e
    (w,) = e["warnings"]
    assert w.startswith("dep: the appup dep 0.2.0 ships does not name changed modules dep_new") and "hotswap_mode=cold" in w
    from ansible_collections.beam.hotswap.plugins.module_utils import _plan
    status = {"installed": True, "node_up": True, "running": "1.0.0", "permanent": "1.0.0",
              "releases": [{"version": "1.0.0"}]}
    plan = _plan.deploy(status, m, "auto")
    assert plan["action"] == "hot" and plan["warnings"] == [w] and plan["appups"]["dep"] == "shipped"
    assert "appups: dep shipped, sample generated" in _plan.describe(plan)


@pytest.mark.parametrize("text, needle", [
    (b'{"0.2.0", [{"0.1.3", []}]', "is not a list of Erlang terms"),
    (b'[{"0.1.3", []}].\n', "first term of an .appup must be {Vsn, UpFrom, DownTo}"),
    (b'{"0.2.0", [{<<"0\\\\.1(">>, []}], []}.\n', "cannot be read"),
])
def test_a_shipped_appup_systools_cannot_use_is_a_cold_reason_never_regenerated(tmp_path, shipped, text, needle):
    m = _publish_with(tmp_path, shipped, "2.0.0", {"dep": "0.2.0"}, ["1.0.0"], files={"lib/dep-0.2.0/ebin/dep.appup": text})
    (e,) = m["edges"]
    assert e["verdict"] == "cold" and any(needle in r and "dep 0.2.0 ships" in r for r in e["reasons"]), e
    appup = os.path.join(shipped.store.release_dir("2.0.0"), "lib", "dep-0.2.0", "ebin", "dep.appup")
    assert open(appup, "rb").read() == text


def test_an_appup_beam_hotswap_wrote_is_never_taken_for_a_shipped_one(tmp_path, shipped):
    m = _publish_with(tmp_path, shipped, "2.0.0", {"dep": "0.2.0"}, ["1.0.0"],
                      files={"lib/dep-0.2.0/ebin/dep.appup": b'%% generated by beam.hotswap\n{"0.2.0", [], []}.\n'},
                      beams={("lib/dep-0.2.0/ebin", "dep_mod"): "f() -> 2."})
    (e,) = m["edges"]
    assert e["verdict"] == "hot" and e["appups"] == {"dep": "generated", "sample": "generated"}, e


def test_changed_protocols_with_only_shipped_appups_to_carry_them_go_cold(tmp_path):
    """Only dep changed (the release's own application kept its version) and the consolidated protocols changed:
    the reload step would have to go into the shipped appup, which is never rewritten."""
    builder = _build.Builder(FakeErl(), str(tmp_path / "store"), "sample")
    old, new = tmp_path / "old", tmp_path / "new"
    _release(old, "1.0.0", {"dep": "0.1.3"})
    _erl_module(old, "releases/1.0.0/consolidated", "proto", "f() -> 1.")
    (tmp_path / "src").mkdir()
    builder.publish(str(old), "1.0.0", "sha256:a", [], str(tmp_path / "src"))
    _release(new, "1.0.0", {"dep": "0.2.0"})
    _write(new, "lib/dep-0.2.0/ebin/dep.appup", SHIPPED)
    _erl_module(new, "releases/1.0.0/consolidated", "proto", "f() -> 2.")
    plan = _build.plan_edge(builder.store, "sample", "1.0.0", str(new), "1.0.0", {})
    assert [e.app for e in plan.app_edges] == ["dep"] and plan.consolidated_up == ["proto"]
    assert any("every changed application uses the appup it ships (dep)" in r for r in plan.reasons), plan.reasons


WORKER = Path(__file__).resolve().parents[3] / "fixtures" / "shipped_appup_app"


def _built(tmp_path, vsn, dep_vsn, worker_src):
    """A mix build's layout: _build/prod/rel/sample (the release, its modules stripped of debug info as mix release
    strips them) and _build/prod/lib/dep/ebin (the compiled modules, with it)."""
    require("erlc")
    prod = tmp_path / ("b" + vsn) / "_build" / "prod"
    rel = prod / "rel" / "sample"
    _release(rel, vsn, {"dep": dep_vsn})
    lib = prod / "lib" / "dep" / "ebin"
    lib.mkdir(parents=True)
    subprocess.run(["erlc", "+debug_info", "-o", str(lib), str(worker_src)], check=True, capture_output=True)
    ebin = rel / "lib" / ("dep-" + dep_vsn) / "ebin"
    (lib / "dep.app").write_bytes((ebin / "dep.app").read_bytes())
    subprocess.run(["erlc", "-o", str(ebin), str(worker_src)], check=True, capture_output=True)
    return str(rel)


def test_a_process_whose_init_changed_without_code_change_is_warned_about_from_the_builds_debug_info(tmp_path):
    builder = _build.Builder(FakeErl(), str(tmp_path / "store"), "sample")
    (tmp_path / "src").mkdir()
    src = WORKER / "base" / "vendor" / "mylib" / "src" / "mylib_worker.erl"
    builder.publish(_built(tmp_path, "1.0.0", "0.1.0", src), "1.0.0", "sha256:1", [], str(tmp_path / "src"))
    info = json.loads(open(os.path.join(builder.store.vdir("1.0.0"), "state-info.json")).read())
    assert info["dep"]["vsn"] == "0.1.0" and info["dep"]["modules"]["mylib_worker"]["code_change"] == "absent"
    src = WORKER / "versions" / "1.1.0" / "vendor" / "mylib" / "src" / "mylib_worker.erl"
    m = builder.publish(_built(tmp_path, "2.0.0", "0.2.0", src), "2.0.0", "sha256:2", ["1.0.0"], str(tmp_path / "src"))
    (e,) = m["edges"]
    assert e["verdict"] == "hot" and e["appups"]["dep"] == "generated", e
    (w,) = e["warnings"]
    assert w.startswith("dep: mylib_worker's init/1 changed and it has no code_change: a running mylib_worker process "
                        "keeps the state"), w


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


# --------------------------------------------------------------------------- a private store (issue 15 item 8)
# The store holds the release's default cookie (releases/COOKIE in the full tarball and the release tree):
# other users on the build host must not read it. STORE, STORE/APP and every directory the build makes are
# 0700, the files it writes 0600; what mix makes deeper keeps mix's modes (they go into the tarballs).

COOKIE = "C00KIE7QXWJ5M2ZLNPA4RB6YHSDT3VEUFGK"


def _mode(path):
    return stat.S_IMODE(os.lstat(path).st_mode)


def _open_up(root):
    """What an older collection left: every directory 0755, every file 0644 (or 0755 when executable)."""
    for dirpath, dirnames, filenames in os.walk(root):
        os.chmod(dirpath, 0o755)
        for n in filenames:
            p = os.path.join(dirpath, n)
            if not os.path.islink(p):
                os.chmod(p, _mode(p) | 0o044 | (0o011 if _mode(p) & 0o100 else 0))


def _modes(root):
    return dict((os.path.relpath(os.path.join(d, n), root), _mode(os.path.join(d, n)))
                for d, dns, fns in os.walk(root) for n in dns + fns)


class FakeMix(FakeErl):
    """``mix deps.get`` does nothing; ``mix do compile, release`` lays a release tree (with releases/COOKIE,
    0400 as mix writes it) into _build/prod/rel/sample, prints ``say`` and fails when told; ``erl`` as FakeErl."""

    def __init__(self, vsn, apps, say="", fail=False):
        FakeErl.__init__(self)
        self.vsn, self.apps, self.say, self.fail_release = vsn, apps, say, fail

    def __call__(self, argv, cwd=None, env=None):
        if argv[0] != "mix":
            return FakeErl.__call__(self, argv, cwd, env)
        if "release" in argv:
            rel = Path(cwd) / "_build" / "prod" / "rel" / "sample"
            _release(rel, self.vsn, self.apps)
            _write(rel, "releases/COOKIE", COOKIE.encode(), 0o400)
            _write(rel, "bin/sample", b"#!/bin/sh\n", 0o755)
            if self.fail_release:
                return 1, self.say, "** (Mix) could not assemble the release"
        return 0, self.say, ""


def _source(tmp_path):
    src = tmp_path / "src"
    _write(src, "mix.exs", b"defmodule Sample.MixProject do end\n")
    return str(src)


def test_publish_makes_a_private_store_and_leaves_nothing_to_fix(tmp_path):
    builder = _build.Builder(FakeErl(), str(tmp_path / "var" / "store"), "sample")
    _publish(tmp_path, builder, "1.0.0", {"dep": "0.1.0"})
    _write(tmp_path, "src/rel/appups/dep/0.2.0.appup", b'{"0.2.0", [{"0.1.0", []}], [{"0.1.0", []}]}.\n')
    _publish(tmp_path, builder, "2.0.0", {"dep": "0.2.0"}, ["1.0.0"])
    store, app = builder.store.base, builder.store.root
    assert _mode(store) == _mode(app) == 0o700
    assert _mode(tmp_path / "var") == 0o700         # the directories the build made on the way too
    for vsn in ("1.0.0", "2.0.0"):
        vdir = builder.store.vdir(vsn)
        assert _mode(vdir) == _mode(os.path.join(vdir, "release")) == 0o700
        assert _mode(os.path.join(vdir, "manifest.json")) == 0o600
        assert _mode(os.path.join(vdir, "sample-%s-full.tar.gz" % vsn)) == 0o600
    assert _mode(os.path.join(builder.store.vdir("2.0.0"), "sample-2.0.0.tar.gz")) == 0o600
    assert _mode(os.path.join(builder.store.vdir("2.0.0"), "appups")) == 0o700
    # mix's modes are kept inside the release tree and in the tarballs (what the targets install)
    assert _mode(os.path.join(builder.store.release_dir("1.0.0"), "releases", "1.0.0", "vm.args")) == 0o644
    with tarfile.open(os.path.join(builder.store.vdir("1.0.0"), "sample-1.0.0-full.tar.gz")) as t:
        assert t.getmember("releases/1.0.0/vm.args").mode == 0o644
    assert builder.store.secure() == ([], [])
    # an extension replaces the version with a copy: private as well
    _publish(tmp_path, builder, "1.5.0", {"dep": "0.1.5"})
    assert builder.extend_edges("2.0.0", ["1.0.0", "1.5.0"])[0]
    assert builder.store.secure() == ([], [])


def test_the_work_tree_is_private_to_the_build_user(tmp_path):
    builder = _build.Builder(FakeMix("1.0.0", {"dep": "0.1.0"}), str(tmp_path / "store"), "sample")
    archive = tmp_path / "src.tar.gz"
    with tarfile.open(archive, "w:gz") as t:
        t.add(_source(tmp_path), arcname=".")
    src = builder.stage_archive(str(archive))
    builder.build(src, "sha256:one")
    work = os.path.join(builder.store.root, ".work")
    assert _mode(work) == _mode(os.path.join(work, "src")) == _mode(os.path.join(work, "deps")) == 0o700
    # and the build user can still work in it: a second build of other content reuses the tree
    builder.run = FakeMix("2.0.0", {"dep": "0.2.0"})
    src = builder.stage_archive(str(archive))
    assert builder.build(src, "sha256:two", ["1.0.0"])[0]
    assert builder.store.secure() == ([], [])


def _fake_git(argv, cwd=None, env=None):
    """git clone makes the directory as git does (0755 under the usual umask); rev-parse knows only "main"."""
    assert argv[0] == "git", argv
    if argv[1] == "clone":
        os.mkdir(argv[-1])
        os.chmod(argv[-1], 0o755)
        return 0, "", ""
    if argv[3] == "rev-parse":
        return (0, "abc123\n", "") if argv[-1].startswith("main^") else (1, "", "")
    return 0, "", ""


def test_a_git_work_tree_is_private_even_after_a_ref_that_does_not_exist(tmp_path):
    builder = _build.Builder(_fake_git, str(tmp_path / "store"), "sample")
    wd = builder.stage_git("file:///src", "main")
    assert _mode(wd) == 0o700
    os.makedirs(os.path.join(wd, "_build", "prod"))
    os.chmod(os.path.join(wd, "_build"), 0o755)       # as mix makes it
    with pytest.raises(_build.BuildError, match="does not exist"):
        builder.stage_git("file:///src", "no-such-ref")   # leaves _build set aside in .work/._build.keep
    assert builder.store.secure() == ([], [])          # the next run has nothing to fix: not a change
    wd = builder.stage_git("file:///src", "main")
    assert _mode(wd) == 0o700 and builder.store.secure() == ([], [])


def test_an_open_store_from_before_is_made_private_once(tmp_path, published):
    builder, _erl = published
    os.makedirs(os.path.join(builder.store.root, ".work", "src", "_build"))
    os.makedirs(os.path.join(builder.store.root, ".work", "deps", "0123abcd"))
    outside = _write(tmp_path, "outside/file", b"not the store's", 0o644)
    os.symlink(str(outside), os.path.join(builder.store.root, "link"))        # a link is never followed
    _open_up(builder.store.base)
    deep = os.path.join(builder.store.release_dir("1.0.0"), "releases", "1.0.0", "vm.args")
    before = _modes(builder.store.base)
    would, warnings = builder.store.secure(check=True)
    assert _modes(builder.store.base) == before and not warnings              # check mode changes nothing
    fixed, warnings = builder.store.secure()
    assert fixed == would and not warnings
    rel = set(os.path.relpath(p, builder.store.base) for p in fixed)
    assert {".", "sample", "sample/1.0.0", "sample/1.0.0/manifest.json", "sample/1.0.0/sample-1.0.0-full.tar.gz",
            "sample/1.0.0/release", "sample/2.0.0/sample-2.0.0.tar.gz", "sample/.work", "sample/.work/src",
            "sample/.work/deps"} <= rel
    assert _mode(builder.store.base) == _mode(builder.store.root) == 0o700
    for p in fixed:
        assert _mode(p) & 0o077 == 0, p
    assert _mode(os.path.join(builder.store.vdir("1.0.0"), "manifest.json")) == 0o600
    assert _mode(outside) == 0o644 and "sample/link" not in rel
    assert _mode(deep) == 0o644                     # mix's modes below, shut off by the directories above
    assert builder.store.secure() == ([], [])        # idempotent: nothing to change the next time
    assert builder.store.secure(check=True) == ([], [])


def test_a_store_directory_of_another_user_is_warned_about_not_fatal(tmp_path, published, monkeypatch):
    builder, _erl = published
    _open_up(builder.store.base)
    real = _build.make_private

    def not_ours(path, check=False):
        if path in (builder.store.base, builder.store.vdir("1.0.0")):
            raise PermissionError(1, "Operation not permitted", path)
        return real(path, check)
    monkeypatch.setattr(_build, "make_private", not_ours)
    fixed, warnings = builder.store.secure()
    assert builder.store.root in fixed and builder.store.vdir("1.0.0") not in fixed
    assert len(warnings) == 2
    assert "the build store %s is open to other users" % builder.store.base in warnings[0]
    assert "%s below it is private (0700) all the same" % builder.store.root in warnings[0]
    assert builder.store.vdir("1.0.0") in warnings[1] and "chown -R" in warnings[1]
    os.chmod(builder.store.base, 0o770)     # a group the administrator gave: not warned about
    assert len(builder.store.secure()[1]) == 1


def test_a_store_directory_that_holds_other_things_keeps_its_mode(tmp_path, published):
    """hotswap_build_store set to a shared directory (/var/lib, /srv, /tmp): only STORE/APP is made private."""
    builder, _erl = published
    _write(tmp_path, "store/dpkg/status", b"not a store")
    _open_up(builder.store.base)
    fixed, warnings = builder.store.secure()
    assert builder.store.base not in fixed and _mode(builder.store.base) == 0o755
    assert builder.store.root in fixed and _mode(builder.store.root) == 0o700
    assert len(warnings) == 1 and "holds more than the stores of applications" in warnings[0]
    os.chmod(builder.store.base, 0o1777)
    (tmp_path / "store" / "dpkg" / "status").unlink()
    (tmp_path / "store" / "dpkg").rmdir()
    assert builder.store.secure()[0] == [] and _mode(builder.store.base) == 0o1777      # a sticky one: never
    for top in ("/", "/opt", "/tmp", "/srv", os.path.expanduser("~")):
        assert not _build.dedicated_dir(top, lambda name, path: True), top
    os.chmod(builder.store.base, 0o755)
    assert builder.store.secure()[0] == [builder.store.base]    # only stores in it: the build's own


def test_make_private_never_follows_a_link_and_keeps_the_owners_bits(tmp_path):
    f = _write(tmp_path, "f", b"x", 0o755)
    assert _build.make_private(str(f), check=True) and _mode(f) == 0o755
    assert _build.make_private(str(f)) and _mode(f) == 0o700
    assert not _build.make_private(str(f))
    target = _write(tmp_path, "t", b"x", 0o666)
    os.symlink(str(target), str(tmp_path / "l"))
    assert not _build.make_private(str(tmp_path / "l")) and _mode(target) == 0o666
    assert not _build.make_private(str(tmp_path / "missing"))
    d = _build.private_makedirs(str(tmp_path / "a" / "b"))
    assert _mode(d) == _mode(tmp_path / "a") == 0o700
    with _build.open_private(str(tmp_path / "w")) as fh:
        fh.write("x")
    os.chmod(tmp_path / "w", 0o644)
    _build.write_private(str(tmp_path / "w"), "y")
    assert _mode(tmp_path / "w") == 0o600 and (tmp_path / "w").read_text() == "y"


# --------------------------------------------------------------------------- the cookie never shows

def _holders(root, needle):
    """Files (and tarball members) under ``root`` whose bytes hold ``needle``."""
    out = []
    for d, _dns, fns in os.walk(root):
        for n in fns:
            p = os.path.join(d, n)
            if os.path.islink(p):
                continue
            rel = os.path.relpath(p, root)
            with open(p, "rb") as f:
                data = f.read()
            if n.endswith(".tar.gz"):
                with tarfile.open(p) as t:
                    out.extend("%s:%s" % (rel, m.name) for m in t.getmembers()
                               if m.isfile() and needle in t.extractfile(m).read())
            elif needle in data:
                out.append(rel)
    return sorted(out)


def test_the_cookie_is_in_the_full_tarball_only_never_in_the_manifest_or_the_builds_output(tmp_path):
    secrets = []
    src = _source(tmp_path)
    builder = _build.Builder(FakeMix("1.0.0", {"dep": "0.1.0"}), str(tmp_path / "store"), "sample",
                             secret=secrets.append)
    changed, m1 = builder.build(src, "sha256:one")
    builder.run = FakeMix("2.0.0", {"dep": "0.2.0"})
    changed, m2 = builder.build(src, "sha256:two", ["1.0.0"])
    assert changed and m2["artifacts"]["upgrade"]
    assert secrets and set(secrets) == {COOKIE}      # handed to the module, which hides it in all it shows
    for m in (m1, m2):
        assert COOKIE not in json.dumps(m)
    store = builder.store.root
    assert _holders(store, COOKIE.encode()) == [
        "1.0.0/release/releases/COOKIE", "1.0.0/sample-1.0.0-full.tar.gz:releases/COOKIE",
        "2.0.0/release/releases/COOKIE", "2.0.0/sample-2.0.0-full.tar.gz:releases/COOKIE"]
    # an extension of a published version knows the cookie too (its messages are hidden alike)
    secrets[:] = []
    builder.extend_edges("2.0.0", ["1.0.0", "0.9.0"])
    assert secrets == [COOKIE]


def test_a_release_that_fails_after_writing_its_cookie_hands_it_over_before_the_message(tmp_path):
    secrets = []
    builder = _build.Builder(FakeMix("1.0.0", {}, say="cookie is " + COOKIE, fail=True), str(tmp_path / "store"),
                             "sample", secret=secrets.append)
    with pytest.raises(_build.BuildError) as e:
        builder.build(_source(tmp_path), "sha256:one")
    assert COOKIE in str(e.value) and secrets == [COOKIE]   # the module masks it (next test)


def test_a_short_cookie_is_not_masked_everywhere(tmp_path):
    secrets = []
    rel = _release(tmp_path / "r", "1.0.0", {})
    _write(Path(rel), "releases/COOKIE", b"sample\n")
    _build.Builder(FakeErl(), str(tmp_path / "store"), "sample", secret=secrets.append).note_cookie(rel)
    assert secrets == []


# The module itself, run as Ansible runs it (a JSON args file), with a fake `mix` on PATH.
COLLECTIONS = Path(__file__).resolve().parents[4] / ".venv" / "collections"
FAKE_MIX = r"""#!%s
import os, shutil, sys
if "release" in sys.argv:
    shutil.copytree(os.environ["FAKE_MIX_TREE"], os.path.join(os.getcwd(), "_build", "prod", "rel", "sample"), symlinks=True)
    print(os.environ.get("FAKE_MIX_SAY", ""))
    sys.exit(int(os.environ.get("FAKE_MIX_RC", "0")))
"""


def _module(tmp_path, args, say="", rc=0):
    tree = tmp_path / "tree"
    if not tree.exists():
        _release(tree, "1.0.0", {})
        _write(tree, "releases/COOKIE", COOKIE.encode(), 0o400)
    fake = tmp_path / "bin"
    fake.mkdir(exist_ok=True)
    (fake / "mix").write_text(FAKE_MIX % sys.executable)
    os.chmod(fake / "mix", 0o755)
    src = tmp_path / "src.tar.gz"
    with tarfile.open(src, "w:gz") as t:
        t.add(_source(tmp_path), arcname=".")
    argf = tmp_path / "args.json"
    argf.write_text(json.dumps({"ANSIBLE_MODULE_ARGS": dict(args, src_archive=str(src))}))
    env = dict(os.environ, PYTHONPATH=str(COLLECTIONS), PATH="%s:%s" % (fake, os.environ["PATH"]),
               FAKE_MIX_TREE=str(tree), FAKE_MIX_SAY=say, FAKE_MIX_RC=str(rc))
    p = subprocess.run([sys.executable, "-m", "ansible_collections.beam.hotswap.plugins.modules.build", str(argf)],
                       capture_output=True, text=True, env=env, timeout=120, check=False)
    return p.stdout + p.stderr, json.loads(p.stdout)


@pytest.mark.skipif(not COLLECTIONS.is_dir(), reason="make setup makes .venv/collections")
def test_the_module_masks_the_cookie_and_makes_an_old_store_private_once(tmp_path):
    store = tmp_path / "store"
    args = {"app": "sample", "store": str(store), "source_digest": "sha256:one"}
    out, res = _module(tmp_path, args, say="cookie " + COOKIE, rc=1)
    assert res["failed"] and "`mix do compile, release sample" in res["msg"], out
    assert COOKIE not in out and "********" in res["msg"], out
    out, res = _module(tmp_path, args, say="cookie " + COOKIE)
    assert not res.get("failed") and res["changed"] and "made_private" not in res, out
    assert COOKIE not in out
    assert _mode(store) == 0o700 and _mode(store / "sample" / "1.0.0" / "manifest.json") == 0o600
    _open_up(str(store))
    out, res = _module(tmp_path, dict(args, _ansible_check_mode=True))
    assert res["changed"] and str(store / "sample") in res["made_private"]
    assert _mode(store / "sample") == 0o755                   # check mode changes nothing
    out, res = _module(tmp_path, args)
    assert res["changed"] and str(store / "sample" / "1.0.0" / "manifest.json") in res["made_private"], out
    assert _mode(store / "sample") == 0o700
    out, res = _module(tmp_path, args)
    assert not res["changed"] and "made_private" not in res, out


# --------------------------------------------------------------------------- rebar3 / relx projects

def test_the_project_tool_is_mix_or_rebar3_with_a_relx_section_else_a_clear_error(tmp_path):
    mix = _write(tmp_path / "m", "mix.exs", b"defmodule M.MixProject do end\n").parent
    assert _build.project_tool(str(mix)) == "mix"
    rebar = _write(tmp_path / "r", "rebar.config", b'{deps, []}.\n{relx, [{release, {r, "1.0.0"}, [r, sasl]}]}.\n').parent
    assert _build.project_tool(str(rebar)) == "rebar3"
    norelx = _write(tmp_path / "n", "rebar.config", b"{deps, []}.\n%% {relx, [...]} only in a comment\n").parent
    with pytest.raises(_build.BuildError, match="has no relx section: add one"):
        _build.project_tool(str(norelx))
    with pytest.raises(_build.BuildError, match="no mix.exs and no rebar.config"):
        _build.project_tool(str(tmp_path / "empty"))


def test_relxs_start_script_naming_its_own_version_is_not_a_cold_reason(tmp_path):
    fps = []
    for vsn in ("1.0.0", "1.1.0"):
        rel = _release(tmp_path / vsn / "rel", vsn, {"kernel": "8.5.3"})
        _write(Path(rel), "bin/sample", b'#!/bin/sh\nREL_VSN="%s"\nexport RELEASE_VSN="%s"\n' % (vsn.encode(), vsn.encode()))
        fps.append(_build.release_fingerprint(rel, "sample", vsn))
    assert fps[0]["files"]["bin/sample"] == fps[1]["files"]["bin/sample"]
    _write(Path(tmp_path / "1.1.0" / "rel"), "bin/sample", b'#!/bin/sh\nREL_VSN="1.1.0"\nexec other\n')
    assert _build.release_fingerprint(str(tmp_path / "1.1.0" / "rel"), "sample", "1.1.0")["files"]["bin/sample"] != \
        fps[0]["files"]["bin/sample"]


def test_the_version_of_a_built_application_is_read_from_its_app_file(tmp_path):
    app = _write(tmp_path, "ebin/cowboy.app", b"{application, 'cowboy', [{description, \"x\"}, {vsn, \"2.12.0\"}]}.\n")
    assert _build._app_vsn(str(app)) == "2.12.0"
    assert _build._app_vsn(str(tmp_path / "missing.app")) is None


def test_relup_loads_of_sys_process_modules_go_after_the_last_look_at_the_tree(tmp_path):
    """A module that runs a sys process of its own (exports system_continue/3, like cowboy_http) and that no
    instruction suspends is loaded after the last suspend/stop/code_change/resume/start, both ways; a module
    that is suspended for its code_change, and an ordinary one, keep their place."""
    require("erlc", "erl")
    ebin = tmp_path / "ebin"
    ebin.mkdir()
    (tmp_path / "conn.erl").write_text("-module(conn).\n-export([system_continue/3]).\nsystem_continue(_, _, _) -> ok.\n")
    (tmp_path / "srv.erl").write_text("-module(srv).\n-export([system_continue/3]).\nsystem_continue(_, _, _) -> ok.\n")
    (tmp_path / "plain.erl").write_text("-module(plain).\n-export([f/0]).\nf() -> ok.\n")
    subprocess.run(["erlc", "-o", str(ebin)] + [str(tmp_path / m) for m in ("conn.erl", "srv.erl", "plain.erl")], check=True)
    script = ["point_of_no_return", ("load", ("conn", "brutal_purge", "soft_purge")),
              ("load", ("plain", "brutal_purge", "soft_purge")),
              ("suspend", ["srv"]), ("load", ("srv", "brutal_purge", "soft_purge")), ("code_change", "up", [("srv", [])]),
              ("resume", ["srv"]), ("load", ("other", "brutal_purge", "soft_purge"))]

    def term(x):
        if isinstance(x, tuple):
            return tuple(term(y) for y in x)
        if isinstance(x, list):
            return [term(y) for y in x]
        return A(x)
    relup = ("2", [("1", [], term(script))], [("1", [], term(script))])
    (tmp_path / "relup").write_text(erlterms.format_term(relup) + ".\n")
    code = 'Paths = ["%s"], Out = "%s", Good = [x],\n%s\nhalt(0).' % (ebin, tmp_path, _build.RELUP_DEFER_ERL)
    r = subprocess.run(["erl", "-noshell", "-noinput", "-boot", "start_clean", "-eval", code],
                       capture_output=True, text=True, check=False, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    [(vsn, ups, downs)] = erlterms.parse_terms((tmp_path / "relup").read_text())
    assert vsn == "2"
    for _from, _d, instrs in ups + downs:
        names = [i if isinstance(i, str) else (i[0], i[1][0] if i[0] == "load" else None) for i in instrs]
        assert names == ["point_of_no_return", ("load", "plain"), ("suspend", None), ("load", "srv"),
                         ("code_change", None), ("resume", None), ("load", "conn"), ("load", "other")], names


def test_built_ebin_takes_the_first_build_dir_holding_that_version(tmp_path):
    """rebar3 leaves the project's apps in _build/prod/lib and local dependencies in _build/*/checkouts: the
    compiled (unstripped) modules of an application are read from the directory that holds its version."""
    def app(where, name, vsn):
        ebin = tmp_path / where / name / "ebin"
        ebin.mkdir(parents=True)
        (ebin / (name + ".app")).write_text('{application, %s, [{vsn, "%s"}, {modules, []}]}.\n' % (name, vsn))
        return str(ebin)
    dirs = [str(tmp_path / d) for d in ("prod/lib", "prod/checkouts", "default/lib")]
    app("prod/lib", "ranch", "1.8.0")
    want = app("prod/checkouts", "ranch", "1.8.1")
    assert _build.built_ebin(dirs, "ranch", "1.8.1") == want
    assert _build.built_ebin(dirs, "ranch", "2.0.0") is None
    assert _build.built_ebin(dirs, "cowboy", "2.17.0") is None


def _real_run(argv, cwd=None, env=None):
    r = subprocess.run(argv, cwd=cwd, env=dict(os.environ, **(env or {})), capture_output=True, text=True,
                       check=False, timeout=120)
    return r.returncode, r.stdout, r.stderr


def test_a_rebar3_projects_appup_src_becomes_the_applications_own_appup(tmp_path):
    """rebar3 leaves src/APP.appup.src alone: the build evaluates it (file:script, as rebar3_appup_plugin does,
    without its STATE binding) into the release's ebin/APP.appup, read later as the application's own appup."""
    require("erl")
    rel = _release(tmp_path / "rel", "1.1.0", {"dep": "0.1.0"})
    src = tmp_path / "src"
    (src / "src").mkdir(parents=True)
    (src / "src" / "sample.appup.src").write_text(
        'Old = "1\\\\.0\\\\..*",\n{"1.1.0", [{Old, [{load_module, kv_handler}]}], [{Old, [{load_module, kv_handler}]}]}.\n')
    (src / "src" / "other.appup.src").write_text('{"9", [], []}.\n')     # no such application in the release
    builder = _build.Builder(_real_run, str(tmp_path / "store"), "sample")
    builder.compile_appup_srcs(str(src), rel)
    [appup] = erlterms.parse_terms((tmp_path / "rel" / "lib" / "sample-1.1.0" / "ebin" / "sample.appup").read_text())
    assert appup[0] == "1.1.0" and appup[1][0][0] == "1\\.0\\..*" and appup[1][0][1][0][0] == "load_module"
    assert not (tmp_path / "rel" / "lib" / "dep-0.1.0" / "ebin" / "other.appup").exists()
    (src / "src" / "sample.appup.src").write_text('rebar_state:get(STATE, relx, []).\n')
    with pytest.raises(_build.BuildError, match=r"src/sample.appup.src does not evaluate to an appup .*no bindings"):
        builder.compile_appup_srcs(str(src), rel)
    (src / "src" / "sample.appup.src").write_text('{"1.1.0", [], [].\n')
    with pytest.raises(_build.BuildError, match=r"src/sample.appup.src does not evaluate to an appup"):
        builder.compile_appup_srcs(str(src), rel)


def test_the_rehearsal_plan_leaves_out_code_changes_that_return_the_state_they_are_given(tmp_path):
    """Of the modules whose code_change a relup edge runs, one whose code_change is a passthrough (per the build's
    debug info) is not rehearsed; a custom one, or one the build knows nothing about, is. The node reads the plan
    from releases/VSN/hotswap_rehearse.config."""
    new = tmp_path / "release"
    (new / "releases" / "2.0.0").mkdir(parents=True)
    up = [A("point_of_no_return"), (A("suspend"), [A("store")]), (A("code_change"), A("up"), [(A("store"), [])]),
          (A("code_change"), A("up"), [(A("Elixir.Plug.Upload"), []), (A("cowboy_clock"), [])])]
    down = [(A("code_change"), A("down"), [(A("store"), [])])]
    (new / "releases" / "2.0.0" / "relup").write_text(erlterms.format_term(("2.0.0", [("1.0.0", [], up)], [("1.0.0", [], down)])) + ".\n")
    (tmp_path / _build.STATE_INFO).write_text(json.dumps({
        "app": {"vsn": "2.0.0", "modules": {"store": {"code_change": "custom"}}},
        "plug": {"vsn": "1.19.2", "modules": {"Elixir.Plug.Upload": {"code_change": "passthrough"}}}}))
    plan = _build.rehearse_plan(str(tmp_path), str(new), "2.0.0")
    assert plan == {("up", "1.0.0"): (["cowboy_clock", "store"], ["Elixir.Plug.Upload"]),
                    ("down", "1.0.0"): (["store"], [])}
    [(tag, edges)] = erlterms.parse_terms((new / "releases" / "2.0.0" / _build.REHEARSE_FILE).read_text())
    assert tag == "rehearse" and edges == [("up", "1.0.0", ["cowboy_clock", "store"]), ("down", "1.0.0", ["store"])]
