"""Fast unit tests of the build side's pure helpers: source digests, deterministic tarballs,
manifest validation, name/version checks, OS fingerprint comparison, the Erlang term writer/parser."""
import gzip
import io
import os
import shlex
import string
import tarfile
import time

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from ansible_collections.beam.hotswap.plugins.module_utils import _beam, _build
from ansible_collections.beam.hotswap.plugins.module_utils._agent import fingerprint as _fingerprint
from ansible_collections.beam.hotswap.plugins.module_utils._agent import erlterms

A = _beam.Atom


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


# --------------------------------------------------------------------------- manifest_errors

GOOD = {
    "schema": 1, "app": "sample", "version": "2.0.0", "source_digest": "sha256:00",
    "artifacts": {"release": {"file": "sample-2.0.0-full.tar.gz", "sha256": "a" * 64, "size": 1},
                  "upgrade": {"file": "sample-2.0.0.tar.gz", "sha256": "b" * 64, "size": 1}},
    "edges": [{"from": "1.0.0", "verdict": "hot", "reasons": []},
              {"from": "0.9.0", "verdict": "cold", "reasons": ["vm.args changed"]}],
}


def _broken(**kw):
    m = {k: (dict(v) if isinstance(v, dict) else v) for k, v in GOOD.items()}
    m["artifacts"] = {k: dict(v) for k, v in GOOD["artifacts"].items()}
    for k, v in kw.items():
        if v is KeyError:
            m.pop(k)
        else:
            m[k] = v
    return m


def test_manifest_errors_good():
    assert _build.manifest_errors(GOOD) == []
    assert _build.manifest_errors(_broken(edges=[])) == []


@pytest.mark.parametrize("manifest, needle", [
    ([], "not a JSON object"),
    (_broken(schema=KeyError), "'schema'"),
    (_broken(schema=2), "schema 2"),
    (_broken(app="Bad App"), "app"),
    (_broken(app=KeyError), "'app'"),
    (_broken(version="1.0/../../x"), "version"),
    (_broken(version="1..0"), "version"),
    (_broken(version=7), "'version'"),
    (_broken(artifacts={"upgrade": {"file": "x.tar.gz", "sha256": "b" * 64}}), "no full release"),
    (_broken(artifacts={"release": {"file": "../etc/passwd", "sha256": "a" * 64}}), "plain file name"),
    (_broken(artifacts={"release": {"file": "x.tar.gz", "sha256": "nothex"}}), "sha256"),
    (_broken(artifacts={"release": {"file": "x.tar.gz", "sha256": "a" * 64 + "\n"}}), "sha256"),
    (_broken(version="1.0.0\n"), "version"),
    (_broken(artifacts={"release": "x.tar.gz"}), "'release'"),
    (_broken(edges=[{"from": "1.0.0", "verdict": "warm"}]), "verdict"),
    (_broken(edges=[{"verdict": "hot"}]), "'from'"),
    (_broken(edges={"1.0.0": "hot"}), "'edges'"),
])
def test_manifest_errors_broken(manifest, needle):
    errs = _build.manifest_errors(manifest)
    assert errs, manifest
    assert any(needle in e for e in errs), errs


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


# --------------------------------------------------------------------------- OS fingerprints

BUILD_FP = {"distro": "debian", "distro_version": "12", "arch": "x86_64", "glibc": "2.36",
            "openssl": "3.0.17", "otp": "25"}


def test_fingerprint_compare_names_host_and_field():
    t1 = dict(BUILD_FP)
    t2 = dict(BUILD_FP, glibc="2.35")
    t3 = dict(BUILD_FP, arch="aarch64", otp="26")
    diffs = _fingerprint.compare(BUILD_FP, {"target1": t1, "target2": t2, "target3": t3})
    assert diffs == [("target2", "glibc", "2.36", "2.35"), ("target3", "arch", "x86_64", "aarch64")]
    msg = _fingerprint.describe_mismatch("build1", diffs)
    assert "target2" in msg and "glibc" in msg and "2.35" in msg and "2.36" in msg
    assert "target3" in msg and "arch" in msg and "build1" in msg
    # otp matters only when ERTS is not bundled
    assert ("target3", "otp", "25", "26") in _fingerprint.compare(BUILD_FP, {"target3": t3}, include_erts=False)
    assert _fingerprint.compare(BUILD_FP, {"target1": t1}) == []
    assert _fingerprint.compare(BUILD_FP, {}) == []
    # an empty (ungathered) fingerprint is a mismatch on every field, not a silent pass
    assert {f for _h, f, _b, _t in _fingerprint.compare(BUILD_FP, {"t": {}})} == \
        set(_fingerprint.FIELDS) - {"otp"}


def test_fingerprint_gather_has_all_fields():
    fp = _fingerprint.gather_fingerprint()
    assert set(fp) == set(_fingerprint.FIELDS)
    assert fp["arch"]


# --------------------------------------------------------------------------- Erlang terms

_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12)
_leaf = st.one_of(
    _text.map(A),
    _text,
    st.integers(min_value=-(2 ** 70), max_value=2 ** 70),
)
terms = st.recursive(
    _leaf,
    lambda kids: st.one_of(st.lists(kids, max_size=5), st.lists(kids, max_size=5).map(tuple)),
    max_leaves=30,
)


def _same(a, b):
    """Equality that also tells atoms from strings and tuples from lists."""
    if type(a) is not type(b):
        return False
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


@settings(max_examples=300, deadline=None)
@given(terms)
@example(A("ok"))
@example([A("it's"), "a \"quoted\"\n\\string", -1, ("", [], ())])
@example("% not a comment. ")
@example("\x01" + "7")
def test_erlterm_round_trip(term):
    text = erlterms.format_term(term)
    assert _same(erlterms.parse_terms(text + ".\n"), [term])


@settings(max_examples=100, deadline=None)
@given(st.lists(terms, min_size=1, max_size=4))
def test_erlterm_round_trip_many(ts):
    text = "%% header\n" + "".join(erlterms.format_term(t) + ".\n" for t in ts)
    assert _same(erlterms.parse_terms(text), ts)


def test_erlterm_parses_otp_style_text():
    text = '%% coding: utf-8\n{"3.0.0",\n [{"2.0.0",[],\n   [{load,{\'Elixir.X\',brutal_purge,brutal_purge}},\n' \
           '    {apply,{m,f,[<<"code">>]}}]}],\n [{"2.0.0",[],[]}]}.\n'
    [t] = erlterms.parse_terms(text)
    assert t[0] == "3.0.0" and t[1][0][0] == "2.0.0"
    assert t[1][0][2][0] == (A("load"), (A("Elixir.X"), A("brutal_purge"), A("brutal_purge")))
    assert t[1][0][2][1][1][2] == [b"code"]


@pytest.mark.parametrize("text", ["{a,b}", "{a,b.", "[1,2", "{a b}.", "'unterminated.", "@."])
def test_erlterm_rejects_malformed(text):
    with pytest.raises(erlterms.TermError):
        erlterms.parse_terms(text)


# --- a package built for another OS is refused at install time ------------------------------------

def test_package_for_another_os_fingerprint_is_refused_naming_the_field():
    from ansible_collections.beam.hotswap.plugins.module_utils._agent import fingerprint as _fingerprint
    host = {"distro": "debian", "distro_version": "12", "arch": "x86_64", "glibc": "2.36", "openssl": "3.0.17",
            "otp": "25"}
    manifest = {"app": "sample", "version": "2.0.0", "os": dict(host, glibc="2.31"), "runtime": {"include_erts": True}}
    why = _fingerprint.package_mismatch(manifest, host)
    assert why and "glibc 2.31 (this host 2.36)" in why and "sample 2.0.0" in why
    assert _fingerprint.package_mismatch(dict(manifest, os=host), host) is None
    # OTP counts only when the release does not bundle ERTS
    other_otp = dict(host, otp="26")
    assert _fingerprint.package_mismatch(dict(manifest, os=other_otp), host) is None
    assert "otp" in _fingerprint.package_mismatch(dict(manifest, os=other_otp, runtime={"include_erts": False}), host)
