"""Acceptance of the build side (issue 3) on the test fleet's build host ``build1``.

Real builds of the sample app through ``tests/integration/playbooks/build.yml`` (role
``beam.hotswap.build``): v1, v2 (base 1.0.0) and v3 (bases 1.0.0 and 2.0.0) once per session; each
hot edge of v3 applied with plain ``release_handler`` on running nodes on the fleet's targets; OS
mismatch, no-op rebuilds and bad input leave the store alone.

Run: .venv/bin/pytest -q tests/integration/test_build_fleet.py
"""
from __future__ import annotations

import hashlib
import json
import os
import shlex
import stat
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from hotswap_testlib import sample
from hotswap_testlib.ansible_run import parse_recap, run_playbook, task_result

pytestmark = [pytest.mark.integration, pytest.mark.fleet]

PLAYBOOK = Path(__file__).resolve().parent / "playbooks" / "build.yml"
STORE = "/opt/hotswap-test-build/store"     # private to build1 (its own /opt)
APP = "sample"
BUILD_TASK = "Build the release"
DISCARD_TASK = "Discard published versions"
PORT = 4040


# --------------------------------------------------------------------------- helpers

@dataclass
class Play:
    rc: int
    stdout: str
    stderr: str
    seconds: float
    recap: dict = field(default_factory=dict)
    result: dict | None = None      # the build task's result on build1
    status: str | None = None       # ok / changed / fatal

    @property
    def msg(self) -> str:
        return (self.result or {}).get("msg", "")

    def __str__(self):
        return f"rc={self.rc} recap={self.recap}\n{self.stdout[-6000:]}\n{self.stderr[-3000:]}"


class BuildSession:
    def __init__(self, fleet, tmp: Path):
        self.fleet = fleet
        self.tmp = tmp
        self.artifacts = tmp / "artifacts"
        self.timings: dict[str, float] = {}
        self.plays: dict[str, Play] = {}

    def source(self, name: str, version: str) -> Path:
        return sample.materialise(self.tmp / "src" / name, version)

    def play(self, source, bases=(), verbosity="-v", check=False, **extra) -> Play:
        ev = {"hotswap_app": APP, "hotswap_source": str(source), "hotswap_build_store": STORE,
              "hotswap_artifact_dir": str(self.artifacts), "hotswap_build_bases": list(bases)}
        ev.update(extra)
        t0 = time.monotonic()
        rc, out, err = run_playbook(self.fleet, PLAYBOOK, ev, check=check, args=[verbosity])
        p = Play(rc, out, err, time.monotonic() - t0, parse_recap(out))
        r = task_result(out, BUILD_TASK, "build1")
        if r:
            p.result, p.status = r["result"], r["status"]
        return p

    # store inspection from the controller (build1's /opt is a directory here)
    @property
    def store_dir(self) -> Path:
        return self.fleet.opt_dir("build1") / STORE.removeprefix("/opt/")

    def listing(self, with_work: bool = True) -> dict:
        """relpath -> (kind, size, mtime_ns, mode) for everything in the store."""
        out = {}
        root = self.store_dir
        for dirpath, dirnames, filenames in os.walk(root):
            rel_dir = os.path.relpath(dirpath, root)
            if not with_work:
                dirnames[:] = [d for d in dirnames if d != ".work"]
            for n in dirnames + filenames:
                p = os.path.join(dirpath, n)
                st = os.lstat(p)
                out[os.path.normpath(os.path.join(rel_dir, n))] = (
                    stat.S_IFMT(st.st_mode), st.st_size, st.st_mtime_ns, stat.S_IMODE(st.st_mode))
        return out

    def published(self, app: str = APP) -> list[str]:
        d = self.store_dir / app
        return sorted(v for v in os.listdir(d) if not v.startswith(".")) if d.is_dir() else []

    def manifest(self, version: str) -> dict:
        return json.loads((self.artifacts / APP / version / "manifest.json").read_text())


def sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def edge(manifest: dict, base: str) -> dict:
    found = [e for e in manifest["edges"] if e["from"] == base]
    assert len(found) == 1, manifest["edges"]
    return found[0]


def assert_failed_cleanly(p: Play, *needles: str):
    assert p.rc != 0, str(p)
    assert p.recap.get("build1", {}).get("failed") == 1, str(p)
    assert p.status == "fatal" and p.result is not None, str(p)
    for n in needles:
        assert n in p.msg, f"{n!r} not in message:\n{p.msg}"


# --------------------------------------------------------------------------- session builds

@pytest.fixture(scope="session")
def builds(fleet, tmp_path_factory):
    """v1, v2 (base 1.0.0), v3 (bases 1.0.0, 2.0.0) built once through the playbook."""
    s = BuildSession(fleet, tmp_path_factory.mktemp("build_fleet"))
    fleet.run("build1", ["rm", "-rf", STORE])
    for vsn, bases, verbosity in (("1.0.0", [], "-vvv"), ("2.0.0", ["1.0.0"], "-v"),
                                  ("3.0.0", ["1.0.0", "2.0.0"], "-v")):
        p = s.play(s.source("v" + vsn, vsn), bases, verbosity=verbosity)
        assert p.rc == 0, str(p)
        assert p.recap["build1"]["changed"] == 1 and p.recap["build1"]["failed"] == 0, str(p)
        assert p.result["version"] == vsn
        s.plays[vsn] = p
        s.timings["build " + vsn] = p.seconds
    return s


def test_v3_manifest_edges_modules_and_artifacts(builds):
    m = builds.manifest("3.0.0")
    assert m["app"] == APP and m["version"] == "3.0.0" and m["schema"] == 1
    assert m == builds.plays["3.0.0"].result["manifest"]
    assert {e["from"]: e["verdict"] for e in m["edges"]} == {"1.0.0": "hot", "2.0.0": "hot"}
    e1, e2 = edge(m, "1.0.0"), edge(m, "2.0.0")
    assert e1["reasons"] == [] and e2["reasons"] == []
    assert e1["changed_apps"] == ["sample"] and e2["changed_apps"] == ["sample"]
    assert e1["modules"]["added"] == ["Elixir.Sample.Audit", "Elixir.Sample.Render.Tuple"]
    assert e2["modules"]["added"] == ["Elixir.Sample.Render.Tuple"]
    for e in (e1, e2):
        assert e["modules"]["updated"] == ["Elixir.Sample.Counter"]
        assert e["modules"]["consolidated"] == ["Elixir.Sample.Render"]
        assert e["modules"]["deleted"] == []
    assert e1["modules"]["supervisors"] == ["Elixir.Sample.Sup"]
    assert e2["modules"]["supervisors"] == []
    # the earlier versions' edges
    assert [(e["from"], e["verdict"]) for e in builds.manifest("2.0.0")["edges"]] == [("1.0.0", "hot")]
    assert builds.manifest("1.0.0")["edges"] == []
    assert "upgrade" not in builds.manifest("1.0.0")["artifacts"]

    # every artifact, on the controller and in the store, matches its sha256 and size
    for vsn in ("1.0.0", "2.0.0", "3.0.0"):
        mv = builds.manifest(vsn)
        assert mv["os"] == builds.plays[vsn].result["build_fingerprint"]
        for kind, art in mv["artifacts"].items():
            local = builds.artifacts / APP / vsn / art["file"]
            stored = builds.store_dir / APP / vsn / art["file"]
            assert sha256(local) == art["sha256"] == sha256(stored), (vsn, kind)
            assert local.stat().st_size == art["size"]
    assert m["artifacts"]["upgrade"]["bases"] == ["1.0.0", "2.0.0"]

    # the upgrade package: bin/, releases/ plus only the new lib/sample-3.0.0, a relup with both edges
    with tarfile.open(builds.artifacts / APP / "3.0.0" / m["artifacts"]["upgrade"]["file"]) as t:
        names = t.getnames()
        relup = t.extractfile("releases/3.0.0/relup").read().decode()
        appup = t.extractfile("lib/sample-3.0.0/ebin/sample.appup").read().decode()
    tops = {"/".join(n.split("/")[:2]) for n in names}
    assert tops == {"bin", "bin/sample", "lib/sample-3.0.0", "releases/3.0.0", "releases/sample-3.0.0.rel"}, sorted(tops)
    assert "releases/3.0.0/sample.rel" in names and "lib/sample-3.0.0/ebin/Elixir.Sample.Audit.beam" in names
    from ansible_collections.beam.hotswap.plugins.module_utils._agent import erlterms
    [(vsn, ups, downs)] = erlterms.parse_terms(relup)
    assert vsn == "3.0.0"
    assert sorted(u[0] for u in ups) == sorted(d[0] for d in downs) == ["1.0.0", "2.0.0"]
    assert appup.startswith("%% generated by beam.hotswap")
    # the full tarball is a complete release (bin, erts, lib, releases)
    with tarfile.open(builds.artifacts / APP / "3.0.0" / m["artifacts"]["release"]["file"]) as t:
        tops = {n.split("/")[0] for n in t.getnames()}
    assert {"bin", "lib", "releases"} <= tops and any(x.startswith("erts-") for x in tops)


# --------------------------------------------------------------------------- raw release_handler

NODE_ENV = f"SAMPLE_PORT={PORT} RELEASE_DISTRIBUTION=sname RELEASE_NODE=sample"
RAW = "/opt/raw"


def _sh(fleet, host, cmd, **kw):
    r = fleet.run(host, cmd, check=False, **kw)
    assert r.returncode == 0, f"{host}: {cmd}\n{r.stdout}\n{r.stderr}"
    return r


@pytest.mark.parametrize("base, host", [("1.0.0", "target1"), ("2.0.0", "target2")])
def test_v3_hot_edge_with_raw_release_handler(builds, fleet, base, host):
    """The v3 upgrade package as built, applied with nothing but release_handler on a running node."""
    art = builds.artifacts / APP
    addr = fleet.host(host).address
    full = art / base / f"{APP}-{base}-full.tar.gz"
    up = art / "3.0.0" / builds.manifest("3.0.0")["artifacts"]["upgrade"]["file"]
    bin_ = f"{NODE_ENV} {RAW}/bin/{APP}"
    _sh(fleet, host, f"rm -rf {RAW} && mkdir -p {RAW} && tar xzf - -C {RAW}", input=full.read_bytes(), text=False)
    rel_file = f"{RAW}/releases/{base}/{APP}.rel"
    create = f'ok = release_handler:create_RELEASES("{RAW}", "{RAW}/releases", "{rel_file}", []), halt().'
    _sh(fleet, host, "cd /tmp && erl -noshell -eval " + shlex.quote(create))
    _sh(fleet, host, f"{bin_} daemon")
    os_pid = None
    try:
        sample.wait_ping(addr, PORT, timeout=30, expect=None)
        os_pid = int(_sh(fleet, host, f"{bin_} pid").stdout.split()[-1])
        with sample.SampleClient(addr, PORT) as c:
            assert c.code() == "v" + base[0]
            for n in range(1, 8):
                c.add(n)
            before = c.state()
        total, writes = 28, 7
        assert before == (f"tuple {total} {writes}" if base == "1.0.0" else f"map {total} {writes}")

        _sh(fleet, host, f"cat > {RAW}/releases/{APP}-3.0.0.tar.gz", input=up.read_bytes(), text=False)
        expr = ('{:ok, ~c"3.0.0"} = :release_handler.unpack_release(~c"sample-3.0.0"); '
                '{:ok, ~c"%s", _} = :release_handler.install_release(~c"3.0.0"); '
                ':ok = :release_handler.make_permanent(~c"3.0.0"); IO.puts("HOT-OK")' % base)
        r = _sh(fleet, host, f"{bin_} rpc {shlex.quote(expr)}")
        assert "HOT-OK" in r.stdout, r.stdout + r.stderr

        with sample.SampleClient(addr, PORT) as c:
            assert c.state() == f"map {total} {writes}"          # code_change ran, state kept
            assert c.code() == "v3"
            assert c.vsn() == "3.0.0"
            assert c.render().startswith(f"tuple{{{total},{writes}}} map{{")  # new defimpl works hot
            audit = c.audit()                                     # Audit runs (new child for v1)
            assert audit.isdigit(), audit
            if base == "2.0.0":
                assert audit == str(writes)                       # the running Audit kept its state
            assert c.add(2) == f"OK {total + 2}"
        assert int(_sh(fleet, host, f"{bin_} pid").stdout.split()[-1]) == os_pid
        assert _sh(fleet, host, f"cat {RAW}/releases/start_erl.data").stdout.split()[1] == "3.0.0"
    finally:
        fleet.run(host, f"{bin_} stop", check=False, timeout=30)
        if os_pid:
            fleet.run(host, f"for i in $(seq 100); do kill -0 {os_pid} 2>/dev/null || exit 0; sleep 0.1; done; "
                            f"exit 1", check=False, timeout=30)


# --------------------------------------------------------------------------- OS mismatch, no-op

def test_os_mismatch_fails_before_building(builds):
    fp = builds.plays["1.0.0"].result["build_fingerprint"]
    fake = dict(fp, glibc="2.31-fake")
    src = builds.source("v5-mismatch", "5.0.0")
    before = builds.listing()
    p = builds.play(src, ["3.0.0"], hotswap_target_fingerprints={"target1": dict(fp), "target2": fake})
    assert_failed_cleanly(p, "OS mismatch", "target2", "glibc", "2.31-fake", fp["glibc"], "build1")
    assert "target1" not in p.msg
    assert builds.listing() == before
    assert not (builds.artifacts / APP / "5.0.0").exists()
    builds.timings["os mismatch"] = p.seconds


def test_unchanged_rebuild_is_noop(builds):
    # a fresh copy with the same content as v3 (same digest, different directory)
    src = builds.source("v3-again", "3.0.0")
    before = builds.listing()
    fetched_before = {f.name: f.stat().st_mtime_ns for f in (builds.artifacts / APP / "3.0.0").iterdir()}
    p = builds.play(src, ["1.0.0", "2.0.0"], verbosity="-vvv")
    assert p.rc == 0, str(p)
    assert p.recap["build1"]["changed"] == 0, str(p)
    assert p.result["changed"] is False and p.result["version"] == "3.0.0"
    assert p.result["fetched"] == []
    assert "need_source" not in p.result
    # nothing uploaded (-vvv logs every PUT; the v1 build shows what an upload looks like)
    assert "source.tar.gz" in builds.plays["1.0.0"].stdout
    assert "source.tar.gz" not in p.stdout
    assert builds.listing() == before
    assert {f.name: f.stat().st_mtime_ns for f in (builds.artifacts / APP / "3.0.0").iterdir()} == fetched_before
    builds.timings["no-op rebuild"] = p.seconds


def test_controller_copy_spares_the_build_host(builds, fleet):
    """A release the controller holds (same source digest, an edge from every base, artifacts verified)
    needs no build host at all: it still answers with the build host's link cut."""
    src = builds.source("v3-offline", "3.0.0")
    before = builds.listing()
    fleet.cut_link("build1")
    try:
        p = builds.play(src, ["1.0.0", "2.0.0"])
    finally:
        fleet.restore_link("build1")
    assert p.rc == 0, str(p)
    assert p.result["controller_copy"] is True and p.result["changed"] is False, p.result
    assert p.result["version"] == "3.0.0" and p.result["fetched"] == []
    assert p.result["manifest"] == builds.manifest("3.0.0")
    assert builds.listing() == before
    # the same copy checked against a target whose OS differs: refused, naming both sides
    fp = builds.plays["1.0.0"].result["build_fingerprint"]
    p = builds.play(src, ["1.0.0", "2.0.0"], hotswap_target_fingerprints={"target2": dict(fp, openssl="0.9-fake")})
    assert_failed_cleanly(p, "OS mismatch", "target2", "openssl", "0.9-fake", "build1")


def test_controller_copy_is_verified_and_refetched_when_damaged(builds):
    src = builds.source("v3-damaged", "3.0.0")
    up = builds.artifacts / APP / "3.0.0" / builds.manifest("3.0.0")["artifacts"]["upgrade"]["file"]
    good = up.read_bytes()
    up.write_bytes(good[:-10] + b"0123456789")
    p = builds.play(src, ["1.0.0", "2.0.0"])
    assert p.rc == 0, str(p)
    assert "controller_copy" not in p.result and p.result["fetched"] == [up.name], p.result
    assert up.read_bytes() == good
    # a base the copy has no edge from: the build host extends the edges (and the copy follows)
    p = builds.play(src, ["1.0.0", "2.0.0", "0.8.0"])
    assert p.rc == 0, str(p)
    assert "controller_copy" not in p.result and p.result["changed"] is True, p.result
    assert {e["from"] for e in builds.manifest("3.0.0")["edges"]} >= {"1.0.0", "2.0.0", "0.8.0"}


# --------------------------------------------------------------------------- bad input

def test_no_mix_exs(builds):
    src = builds.tmp / "src" / "not-a-project"
    (src / "lib").mkdir(parents=True)
    (src / "lib" / "x.ex").write_text("defmodule X do end\n")
    before = builds.listing()
    p = builds.play(src)
    assert_failed_cleanly(p, "no mix.exs", str(src))
    assert builds.listing() == before


def test_app_not_defined_by_project(builds):
    src = builds.source("v3-for-nosuch", "3.0.0")
    before = builds.listing(with_work=False)
    p = builds.play(src, hotswap_app="nosuch")
    assert_failed_cleanly(p, "no release named nosuch", "hotswap_app")
    after = builds.listing(with_work=False)
    # only the build's scratch dir STORE/nosuch/.work may exist: nothing is published
    assert after.pop("nosuch", None) is None or set(os.listdir(builds.store_dir / "nosuch")) == {".work"}
    assert after == before
    assert builds.published("nosuch") == []
    builds.timings["unknown app"] = p.seconds


def test_source_that_does_not_compile(builds):
    src = builds.source("v6-broken", "6.0.0")
    with open(src / "lib" / "sample" / "counter.ex", "a") as f:
        f.write("\ndefmodule Sample.Broken do\n  def oops(, do: :x\nend\n")
    before = builds.listing(with_work=False)
    p = builds.play(src, ["3.0.0"])
    assert_failed_cleanly(p, "failed", "counter.ex")
    assert builds.listing(with_work=False) == before
    assert "6.0.0" not in builds.published()
    assert not (builds.artifacts / APP / "6.0.0").exists()
    builds.timings["compile error"] = p.seconds


def test_git_source(builds, fleet):
    """A git URL: a ref that does not exist fails clearly; a non-default branch with v3's content is the
    published 3.0.0 (same content digest as the directory build): no rebuild, nothing written."""
    src = builds.source("v3-git", "3.0.0")
    tarball = builds.tmp / "gitsrc.tar"
    with tarfile.open(tarball, "w") as t:
        t.add(src, arcname=".")
    _sh(fleet, "build1", "rm -rf /opt/gitsrc && mkdir -p /opt/gitsrc && tar xf - -C /opt/gitsrc && "
                         "cd /opt/gitsrc && git init -q -b main && touch NOT-V3 && git add -A && "
                         "git -c user.name=t -c user.email=t@example.invalid commit -q -m main && "
                         "git checkout -q -b release-3 && git rm -q NOT-V3 && "
                         "git -c user.name=t -c user.email=t@example.invalid commit -q -m v3 && "
                         "git checkout -q main",
        input=tarball.read_bytes(), text=False)
    before = builds.listing(with_work=False)
    p = builds.play("file:///opt/gitsrc", hotswap_source_ref="no-such-ref")
    assert_failed_cleanly(p, "no-such-ref", "does not exist", "file:///opt/gitsrc")
    assert builds.listing(with_work=False) == before

    p = builds.play("file:///opt/gitsrc", ["1.0.0", "2.0.0"], hotswap_source_ref="release-3")
    assert p.rc == 0, str(p)
    assert p.recap["build1"]["changed"] == 0, str(p)
    assert p.result["version"] == "3.0.0"
    assert p.result["manifest"]["source_digest"] == builds.manifest("3.0.0")["source_digest"]
    assert builds.listing(with_work=False) == before
    builds.timings["git no-op"] = p.seconds


def test_same_version_different_content_is_refused(builds):
    src = builds.source("v3-changed", "3.0.0")
    with open(src / "lib" / "sample" / "render.ex", "a") as f:
        f.write("\n# a change that makes the source differ from the published 3.0.0\n")
    before = builds.listing(with_work=False)
    manifest_before = (builds.store_dir / APP / "3.0.0" / "manifest.json").read_bytes()
    p = builds.play(src, ["1.0.0", "2.0.0"])
    assert_failed_cleanly(p, "3.0.0", "already published", "immutable")
    assert builds.listing(with_work=False) == before
    assert (builds.store_dir / APP / "3.0.0" / "manifest.json").read_bytes() == manifest_before
    builds.timings["immutable"] = p.seconds


def test_unretained_base_gives_cold_edge(builds):
    src = builds.source("v4", "4.0.0")
    p = builds.play(src, ["0.9.0", "3.0.0"])
    assert p.rc == 0, str(p)
    assert p.recap["build1"]["changed"] == 1
    m = builds.manifest("4.0.0")
    cold, hot = edge(m, "0.9.0"), edge(m, "3.0.0")
    assert cold["verdict"] == "cold"
    assert any("no base release retained" in r for r in cold["reasons"]), cold
    assert "modules" not in cold
    assert hot["verdict"] == "hot" and hot["modules"]["updated"] == ["Elixir.Sample.Counter"]
    assert m["artifacts"]["upgrade"]["bases"] == ["3.0.0"]
    assert "0.9.0 -> cold (no base release retained" in p.stdout
    builds.timings["v4 with cold edge"] = p.seconds


def _discard_result(p: Play) -> dict:
    r = task_result(p.stdout, DISCARD_TASK, "build1")
    assert r is not None, str(p)
    return r


def test_discard_a_published_version_then_build_that_version_again(builds):
    """Issue 13 finding 3: a published version that must not be reused is discarded through the role
    (hotswap_build_discard): refused while the targets run it, nothing removed in check mode, removed from the
    store and from the controller's artifacts, and the same version number then builds from another source."""
    p = builds.play(builds.source("v6", "6.0.0"), ["3.0.0"])
    assert p.rc == 0 and "6.0.0" in builds.published(), str(p)
    old_digest = builds.manifest("6.0.0")["source_digest"]
    before = builds.listing(with_work=False)

    p = builds.play("", ["6.0.0"], hotswap_build_discard=["6.0.0"])
    assert p.rc != 0 and _discard_result(p)["status"] == "fatal", str(p)
    assert "refusing to discard 6.0.0 of sample: the targets run or hold it" in _discard_result(p)["result"]["msg"]
    assert builds.listing(with_work=False) == before

    p = builds.play("", ["3.0.0"], check=True, hotswap_build_discard=["6.0.0"])
    assert p.rc == 0 and _discard_result(p)["status"] == "changed", str(p)
    assert _discard_result(p)["result"]["discarded"] == ["6.0.0"]
    assert "check mode: would discard 6.0.0 from the store" in p.stdout
    assert builds.listing(with_work=False) == before and (builds.artifacts / APP / "6.0.0").is_dir()

    # discard and build the same version from a changed source, in one run
    src = builds.source("v6-fixed", "6.0.0")
    with open(src / "lib" / "sample" / "render.ex", "a") as f:
        f.write("\n# the fix, without a version bump\n")
    p = builds.play(src, ["3.0.0"], hotswap_build_discard=["6.0.0"])
    assert p.rc == 0, str(p)
    assert _discard_result(p)["status"] == "changed" and p.status == "changed", str(p)
    assert "discarded 6.0.0 from the store" in p.stdout
    m = builds.manifest("6.0.0")
    assert m["source_digest"] != old_digest and edge(m, "3.0.0")["verdict"] == "hot"
    assert [n for n in os.listdir(builds.store_dir / APP) if n.startswith(".") and n != ".work"] == []

    # discard only; a second run has nothing left to remove
    p = builds.play("", ["3.0.0"], hotswap_build_discard=["6.0.0"])
    assert p.rc == 0 and _discard_result(p)["status"] == "changed", str(p)
    assert "6.0.0" not in builds.published() and not (builds.artifacts / APP / "6.0.0").exists()
    p = builds.play("", ["3.0.0"], hotswap_build_discard=["6.0.0"])
    assert p.rc == 0 and _discard_result(p)["status"] == "ok" and _discard_result(p)["result"]["discarded"] == []
    builds.timings["discard"] = p.seconds


def test_report_timings(builds):
    """Not an assertion: prints the play timings (visible with -s or in the -rA summary)."""
    print("\nbuild play timings: " + ", ".join(f"{k} {v:.1f}s" for k, v in builds.timings.items()))
