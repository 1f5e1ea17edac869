"""Fast unit tests of the agent's pure pieces (no BEAM needed)."""
import importlib.util
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from hotswap_testlib.requirements import require

AGENT_PATH = Path(__file__).resolve().parents[2] / "roles" / "agent" / "files" / "hotswap_agent.py"


def _load():
    spec = importlib.util.spec_from_file_location("hotswap_agent", AGENT_PATH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


ag = _load()

RELEASES = """%% coding: utf-8
[{release,"demo","2.0.0","13.1.5",
          [{kernel,"8.5.3","/opt/demo/lib/kernel-8.5.3"},
           {demo,"2.0.0","/opt/demo/lib/demo-2.0.0"}],
          unpacked},
 {release,"demo","1.0.0","13.1.5",
          [{kernel,"8.5.3","lib/kernel-8.5.3"},
           {'my app',"1.0.0","lib/my app-1.0.0"}],
          permanent}].
"""

REL = """%% coding: utf-8
{release,{"demo","2.0.0"},
         {erts,"13.1.5"},
         [{kernel,"8.5.3"},
          {stdlib,"4.2"},
          {demo,"2.0.0",permanent},
          {iex,"1.14.0",load}]}.
"""


def test_agent_is_stdlib_only():
    src = AGENT_PATH.read_text()
    for bad in ("import yaml", "import requests", "shell=True"):
        assert bad not in src


# ------------------------------------------------------------------ Erlang terms

def test_parse_releases():
    rels = ag.parse_releases(RELEASES)
    assert [r["version"] for r in rels] == ["2.0.0", "1.0.0"]
    assert rels[0]["status"] == "unpacked" and rels[1]["status"] == "permanent"
    assert rels[0]["libs"][1] == ("demo", "2.0.0", "/opt/demo/lib/demo-2.0.0")
    assert rels[1]["libs"][1] == ("my app", "1.0.0", "lib/my app-1.0.0")
    assert rels[0]["erts"] == "13.1.5"


def test_releases_roundtrip():
    rels = ag.parse_releases(RELEASES)
    text = ag.format_releases(rels)
    assert text.startswith("%% coding: utf-8\n")
    assert ag.parse_releases(text) == rels
    assert "'my app'" in text


def test_parse_rel():
    rel = ag.parse_rel(REL)
    assert rel["name"] == "demo" and rel["version"] == "2.0.0" and rel["erts"] == "13.1.5"
    assert rel["apps"] == [("kernel", "8.5.3"), ("stdlib", "4.2"), ("demo", "2.0.0"), ("iex", "1.14.0")]


@pytest.mark.parametrize("text,expected", [
    ('"a\\"b\\\\c\\n".', ['a"b\\c\n']),
    ("'quoted atom'.", ["quoted atom"]),
    ("[1,-2,16#ff,2.5e1].", [[1, -2, 255, 25.0]]),
    ("{a,[]}.", [("a", [])]),
    ('<<"bin">>.', [b"bin"]),
    ("<<104,105>>.", [b"hi"]),
    ("#{a => 1}.", [{"a": 1}]),
    ("[$a,$\\n].", [[97, 10]]),
    ('"ab" "cd".', ["abcd"]),
    ("%% comment\nfoo. bar.", ["foo", "bar"]),
    ('"\\x{263A}\\101".', ["\u263aA"]),
    ("[a|[b]].", [["a", "b"]]),
])
def test_parse_terms(text, expected):
    assert ag.parse_terms(text) == expected


def test_parse_terms_atom_type():
    (t,) = ag.parse_terms("{release,\"x\"}.")
    assert isinstance(t[0], ag.Atom) and not isinstance(t[1], ag.Atom)


@pytest.mark.parametrize("bad", ["[a,", "{a b}.", "\"unterminated.", "foo", "[a|b]."])
def test_parse_terms_errors(bad):
    with pytest.raises(ag.TermError):
        ag.parse_terms(bad)


def test_bad_releases_shape():
    with pytest.raises(ag.TermError):
        ag.parse_releases("[{release,\"a\"}].")


# ------------------------------------------------------------------ validation

@pytest.mark.parametrize("v", ["1.0.0", "2.0.0-rc.1", "1.0.0+build.5", "v3", "0"])
def test_versions_ok(v):
    assert ag.check_vsn(v) == v


@pytest.mark.parametrize("v", ["", "../1", "1..0", "1.0 ", "1;rm", "-1", ".1", 'a"b', "a#{x}", "x" * 65, "1/2", "1.0.0\n", "1.0.0\r\n"])
def test_versions_bad(v):
    with pytest.raises(ag.BadInput):
        ag.check_vsn(v)


@pytest.mark.parametrize("a,ok", [("demo", True), ("my_app", True), ("Demo", False), ("a-b", False),
                                  ("1app", False), ("a" * 65, False), ("demo\n", False)])
def test_app_names(a, ok):
    if ok:
        assert ag.check_app(a) == a
    else:
        with pytest.raises(ag.BadInput):
            ag.check_app(a)


def test_sha():
    assert ag.check_sha("A" * 64) == "a" * 64
    for bad in ("abc", "a" * 64 + "\n"):
        with pytest.raises(ag.BadInput):
            ag.check_sha(bad)


def test_vsn_order():
    vs = ["1.10.0", "1.2.0", "1.2.0-rc.1", "0.9.0", "2.0.0"]
    assert sorted(vs, key=ag.vsn_key) == ["0.9.0", "1.2.0-rc.1", "1.2.0", "1.10.0", "2.0.0"]


# ------------------------------------------------------------------ Elixir literals

def test_ex_lit_escapes_interpolation_and_quotes():
    lit = ag.ex_lit({"expr": 'a"b#{System.halt()}\\\n\x01', "n": 3, "b": True, "z": None, "l": ["x"]})
    assert '#{' not in lit.replace('\\#{', '')
    assert lit == '%{"expr" => "a\\"b\\#{System.halt()}\\\\\\n\\u{1}", "n" => 3, "b" => true, "z" => nil, "l" => ["x"]}'


def test_ex_lit_roundtrip_through_elixir():
    require("elixir")
    s = 'q"#{1}\\ \t\n\u00e9\U0001F600'
    p = subprocess.run(["elixir", "-e", "IO.write(" + ag.ex_lit(s) + ")"], capture_output=True, text=True, check=False)
    assert p.stdout == s


# ------------------------------------------------------------------ env file

def test_parse_env():
    env = ag.parse_env("# c\n\nRELEASE_NODE=demo@host\nexport A='x y'\nB=\"q\"\nC=a=b\n")
    assert env == {"RELEASE_NODE": "demo@host", "A": "x y", "B": "q", "C": "a=b"}


@pytest.mark.parametrize("bad", ["NOEQUALS", "1A=2", "A B=3"])
def test_parse_env_bad(bad):
    with pytest.raises(ValueError):
        ag.parse_env(bad)


# ------------------------------------------------------------------ tar safety

def _member(name, kind=tarfile.REGTYPE, linkname=""):
    ti = tarfile.TarInfo(name)
    ti.type = kind
    ti.linkname = linkname
    return ti


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


# ------------------------------------------------------------------ lock, journal, CLI (no node)

def _host(tmp_path):
    (tmp_path / "releases").mkdir(exist_ok=True)
    return ag.Host(str(tmp_path), "demo")


def test_lock_second_holder_fails_fast(tmp_path):
    h = _host(tmp_path)
    with ag.Lock(h, "hot"):
        holder = json.loads((tmp_path / ".hotswap" / "lock").read_text())
        assert holder["pid"] == os.getpid() and holder["cmd"] == "hot"
        # flock is per open file description: a second open in another process conflicts
        code = ("import importlib.util,sys\n"
                f"s=importlib.util.spec_from_file_location('a', {str(AGENT_PATH)!r});m=importlib.util.module_from_spec(s);s.loader.exec_module(m)\n"
                f"h=m.Host({str(tmp_path)!r},'demo')\n"
                "try:\n  m.Lock(h,'x').__enter__(); print('GOT')\nexcept m.OpFailed as e: print(e.msg)\n")
        p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=10, check=False)
        assert f"pid {os.getpid()}" in p.stdout and "'hot'" in p.stdout
    with ag.Lock(h, "again"):
        pass


def test_journal_appends_known_keys_only(tmp_path):
    h = _host(tmp_path)
    h.ensure_hs()
    ag.journal(h, {"op": "hot", "version": "2.0.0", "result": "ok", "total_ms": 1.5, "env": {"SECRET": "x"}})
    ag.journal(h, {"op": "status", "result": "noop"})
    lines = [json.loads(x) for x in (tmp_path / ".hotswap" / "journal.jsonl").read_text().splitlines()]
    assert [x["op"] for x in lines] == ["hot", "status"]
    assert "env" not in lines[0] and "ts" in lines[0]


def _cli(tmp_path, *args):
    p = subprocess.run([sys.executable, str(AGENT_PATH), "--root", str(tmp_path), "--app", "demo", *args],
                       capture_output=True, text=True, timeout=30, check=False)
    return p.returncode, json.loads(p.stdout), p.stderr


def test_cli_bad_input_exit_2(tmp_path):
    for args in (["install", "--version", "1;x"], ["hot", "--package", "p", "--sha256", "zz", "--version", "1"],
                 ["nosuchcmd"], ["prune", "--keep", "0"], ["prune"], ["rollback", "--version", "1", "--mode", "warm"],
                 ["health", "--version", "1", "--check", "ftp://x"]):
        rc, out, err = _cli(tmp_path, *args)
        assert rc == 2 and out["failed"] is True and out["msg"].startswith("bad input"), (args, out)
        assert "Traceback" not in err


def test_cli_status_without_node(tmp_path):
    h = _host(tmp_path)
    h.write_releases(ag.parse_releases(RELEASES))
    (tmp_path / "releases" / "start_erl.data").write_text("13.1.5 1.0.0\n")
    rc, out, _ign = _cli(tmp_path, "status")
    assert rc == 0
    assert out["permanent"] == "1.0.0" and out["unpacked"] == ["2.0.0"]
    assert out["start_erl"] == {"erts": "13.1.5", "version": "1.0.0"}
    assert out["agent_version"] == "1.1.0"
    assert isinstance(out["node_up"], bool)


def test_cli_unpack_sha_mismatch_changes_nothing(tmp_path):
    h = _host(tmp_path)
    h.write_releases(ag.parse_releases(RELEASES))
    pkg = tmp_path / "p.tar.gz"
    pkg.write_bytes(b"not a tar")
    before = sorted(os.listdir(tmp_path / "releases"))
    rc, out, _ign = _cli(tmp_path, "unpack", "--package", str(pkg), "--sha256", "0" * 64, "--version", "3.0.0")
    assert rc == 1 and "sha256" in out["msg"]
    assert sorted(os.listdir(tmp_path / "releases")) == before


def test_epmd_unreachable_is_none():
    assert ag.epmd_names(port=1) is None


def test_parse_check():
    assert ag.parse_check(None) == ("default", None)
    assert ag.parse_check("cmd:curl -f 'http://x/a b'") == ("cmd", ["curl", "-f", "http://x/a b"])
    assert ag.parse_check("rpc:1 == 1") == ("rpc", "1 == 1")
    assert ag.parse_check("https://x/health")[0] == "http"
    with pytest.raises(ag.BadInput):
        ag.parse_check("cmd:")


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


def _full_tarball(path, vsn="1.0.0", extra=()):
    rel = ('{release,{"demo","%s"},{erts,"13.1.5"},[{kernel,"8.5.3"},{demo,"%s",permanent}]}.\n' % (vsn, vsn))
    files = {"bin/demo": b"#!/bin/sh\n", f"releases/{vsn}/demo.rel": rel.encode(), f"releases/{vsn}/vm.args": b"",
             "releases/COOKIE": b"PACKAGED", "releases/start_erl.data": f"13.1.5 {vsn}".encode(),
             "lib/kernel-8.5.3/ebin/kernel.app": b"", f"lib/demo-{vsn}/ebin/demo.app": b"",
             "erts-13.1.5/bin/erl": b""}
    with tarfile.open(path, "w:gz") as tf:
        for name, data in list(files.items()) + list(extra):
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            ti.mode = 0o755
            tf.addfile(ti, io.BytesIO(data))
    import hashlib
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


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


# ------------------------------------------------------------------ service managers

def test_resolve_service_manager(monkeypatch):
    assert ag.resolve_service_manager("daemon") == "daemon"
    assert ag.resolve_service_manager("systemd") == "systemd"
    monkeypatch.setattr(ag.os.path, "isdir", lambda p: p == "/run/systemd/system")
    assert ag.resolve_service_manager("auto") == "systemd"
    monkeypatch.setattr(ag.os.path, "isdir", lambda p: False)
    assert ag.resolve_service_manager("auto") == "daemon"


def test_systemd_unit_text():
    u = ag.systemd_unit("/opt/demo", "demo", "demo")
    lines = u.splitlines()
    for want in ("Type=exec", "ExecStart=/opt/demo/bin/demo start", "ExecStop=/opt/demo/bin/demo stop",
                 "User=demo", "EnvironmentFile=-/opt/demo/.hotswap/env", "Restart=on-failure",
                 "WantedBy=multi-user.target"):
        assert want in lines, want
    assert "restart" not in " ".join(x for x in lines if x.startswith("Exec"))  # never bin/APP restart
    assert "User=" not in ag.systemd_unit("/opt/demo", "demo", None)
    assert ag.unit_name("demo") == "hotswap-demo.service"


def test_systemd_unit_verifies(tmp_path):
    require("systemd-analyze")
    root = tmp_path / "root"
    (root / "bin").mkdir(parents=True)
    (root / ".hotswap").mkdir()
    (root / ".hotswap" / "env").write_text("RELEASE_NODE=demo\n")
    exe = root / "bin" / "demo"
    exe.write_text("#!/bin/sh\nexit 0\n")
    exe.chmod(0o755)
    unit = tmp_path / "hotswap-demo.service"
    unit.write_text(ag.systemd_unit(str(root), "demo", "root"))
    p = subprocess.run(["systemd-analyze", "verify", "--man=no", str(unit)], capture_output=True, text=True,
                       timeout=60, check=False)
    assert p.returncode == 0, p.stdout + p.stderr
    exe.unlink()  # and the check is real: a missing ExecStart binary fails
    p = subprocess.run(["systemd-analyze", "verify", "--man=no", str(unit)], capture_output=True, text=True,
                       timeout=60, check=False)
    assert p.returncode != 0


def test_ensure_unit_writes_only_when_changed(tmp_path):
    h = ag.Host(str(tmp_path / "root"), "demo")
    calls = []

    def run(argv, **kw):
        calls.append(argv[1:])
        return subprocess.CompletedProcess(argv, 0, "", "")

    assert ag.ensure_unit(h, unit_dir=str(tmp_path / "units"), run=run) is True
    assert calls == [["daemon-reload"], ["enable", "hotswap-demo.service"]]
    text = (tmp_path / "units" / "hotswap-demo.service").read_text()
    assert text == ag.systemd_unit(h.root, "demo", None)
    calls.clear()
    assert ag.ensure_unit(h, unit_dir=str(tmp_path / "units"), run=run) is False
    assert calls == []


# ------------------------------------------------------------------ relup edges, previous

RELUP = r'''%% coding: utf-8
{"2.0.0",
 [{"1.0.0",[],
   [{load_object_code,{sample,"2.0.0",['Elixir.Sample.Audit']}},
    point_of_no_return,
    {apply,{'Elixir.Code',eval_string,
                          [<<"\ntry do\n  x = :\"a}b]\"\n  y = ?\\\"\n"
                             "end\n">>]}}]},
  {"1.5.0",[],[]}],
 [{"1.0.0",[],
   [{apply,{'Elixir.Code',eval_string,[<<"{[\"}">>]}},
    {purge,['Elixir.Sample.Audit']}]}]}.
'''


def test_relup_edges():
    assert ag.relup_edges(RELUP) == (["1.0.0", "1.5.0"], ["1.0.0"])


def test_relup_edges_scanner_fallback():
    # something the term parser does not know (a fun as printed by ~p) still yields the edges
    text = RELUP.replace("point_of_no_return,", "#Fun<erl_eval.6.1>, $\", $}, 'a\\'b',", 1)
    with pytest.raises(ag.TermError):
        ag.parse_terms(text)
    assert ag.relup_edges(text) == (["1.0.0", "1.5.0"], ["1.0.0"])
    assert ag._relup_edges_scan(RELUP) == (["1.0.0", "1.5.0"], ["1.0.0"])


def test_relup_of_sample_builder_shape():
    """The shape systools writes for the sample app: binaries with escaped quotes, nested lists."""
    text = ('{"3.0.0",[{"2.0.0",[],[point_of_no_return]},{"1.0.0",[],[]}],'
            '[{"2.0.0",[],[{apply,{m,f,[<<"a\\"b">>]}}]}]}.\n')
    assert ag.relup_edges(text) == (["2.0.0", "1.0.0"], ["2.0.0"])


def _journal(tmp_path, entries):
    h = _host(tmp_path)
    h.ensure_hs()
    for e in entries:
        ag.journal(h, e)
    return h


def _rels(*pairs):
    return [{"version": v, "status": s} for v, s in pairs]


def test_previous_from_journal(tmp_path):
    h = _journal(tmp_path, [
        {"op": "first-install", "version": "1.0.0", "result": "ok"},
        {"op": "hot", "version": "2.0.0", "from": "1.0.0", "result": "ok"},
        {"op": "status", "result": "noop"},
        {"op": "cold", "version": "3.0.0", "from": "2.0.0", "result": "failed", "reverted": True},
        {"op": "hot", "version": "2.0.0", "from": "2.0.0", "result": "noop"},
    ])
    rels = _rels(("2.0.0", "permanent"), ("1.0.0", "old"), ("3.0.0", "unpacked"))
    assert ag.previous_release(h, "2.0.0", rels) == "1.0.0"
    ag.journal(h, {"op": "rollback", "version": "1.0.0", "from": "2.0.0", "result": "ok", "mode": "cold"})
    assert ag.previous_release(h, "1.0.0", _rels(("1.0.0", "permanent"), ("2.0.0", "old"))) == "2.0.0"
    # stepwise: install (knows from) then commit
    ag.journal(h, {"op": "install", "version": "3.0.0", "from": "1.0.0", "result": "ok"})
    ag.journal(h, {"op": "commit", "version": "3.0.0", "result": "ok"})
    assert ag.previous_release(h, "3.0.0", _rels(("3.0.0", "permanent"))) == "1.0.0"


def test_previous_falls_back_to_newest_old(tmp_path):
    h = _journal(tmp_path, [{"op": "first-install", "version": "1.0.0", "result": "ok"}])
    assert ag.previous_release(h, "1.0.0", _rels(("1.0.0", "permanent"))) is None
    rels = _rels(("3.0.0", "permanent"), ("1.10.0", "old"), ("1.9.0", "old"), ("4.0.0", "unpacked"))
    assert ag.previous_release(h, "3.0.0", rels) == "1.10.0"


def test_cli_status_reports_relup_and_previous(tmp_path):
    h = _host(tmp_path)
    h.write_releases(ag.parse_releases(RELEASES.replace("unpacked", "permanent_").replace("permanent}", "old}")
                                       .replace("permanent_", "permanent")))
    (tmp_path / "releases" / "2.0.0").mkdir()
    (tmp_path / "releases" / "2.0.0" / "relup").write_text(RELUP)
    rc, out, _ign = _cli(tmp_path, "status")
    assert rc == 0, out
    assert out["permanent"] == "2.0.0" and out["previous"] == "1.0.0"
    assert out["relup_down"] == ["1.0.0"] and out["relup_up"] == ["1.0.0", "1.5.0"]


# ------------------------------------------------------------------ properties (hypothesis)

from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402

_VSN_CHARS = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ._+-"
_ALNUM = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"


def _vsn_ok(v):
    """The intended language: ASCII alnum first, then [alnum . _ + -], at most 64 chars, no '..'."""
    return (1 <= len(v) <= 64 and v[0] in _ALNUM and all(c in _VSN_CHARS for c in v) and ".." not in v)


_vsn_like = st.one_of(
    st.text(alphabet=_VSN_CHARS, max_size=70),
    st.text(alphabet=_VSN_CHARS + "/\\ \n\t;$`|&<>()'\"*?~!#%\0\u00e9\u0663", max_size=70),
    st.builds(lambda a, b: a + b, st.text(alphabet=_VSN_CHARS, min_size=1, max_size=10),
              st.sampled_from(["\n", "/..", "/", "..", " ", ";", "\r\n", "\u0660"])),
    st.text(max_size=70),
)


@settings(max_examples=600, deadline=None)
@given(_vsn_like)
def test_property_version_validation_accepts_exactly_the_language(v):
    ok = True
    try:
        ag.check_vsn(v)
    except ag.BadInput:
        ok = False
    assert ok == _vsn_ok(v), repr(v)


@settings(max_examples=400, deadline=None)
@given(st.one_of(st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789_", max_size=70),
                 st.text(max_size=70)))
def test_property_app_name_validation(a):
    want = (1 <= len(a) <= 64 and a[0] in "abcdefghijklmnopqrstuvwxyz"
            and all(c in "abcdefghijklmnopqrstuvwxyz0123456789_" for c in a))
    try:
        ag.check_app(a)
        got = True
    except ag.BadInput:
        got = False
    assert got == want, repr(a)


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
        rel = ag._member_rel(m)
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
            members = [(m, r) for m in tf.getmembers() for r in [ag._member_rel(m)] if r]
            ag.safe_extract(tf, members, str(dest))
        except (ag.PackageRefused, ag.OpFailed, OSError):
            pass
    outside = [p for p in box.rglob("*") if not _inside(str(box / "in"), str(p))]
    assert outside == [] or outside == [box / "in"], outside
    for p in dest.rglob("*"):
        assert _inside(str(dest), os.path.realpath(p)) or p.is_symlink() and not p.exists() and \
            _inside(str(dest), os.path.normpath(os.path.join(p.parent, os.readlink(p)))), p
    shutil.rmtree(box)


# ------------------------------------------------------------------ repairs, disk full, status

def _disk_release(root, vsn, erts="13.1.5", complete=True):
    rel = ('{release,{"demo","%s"},{erts,"%s"},[{kernel,"8.5.3"},{demo,"%s"}]}.\n' % (vsn, erts, vsn))
    d = root / "releases" / vsn
    d.mkdir(parents=True, exist_ok=True)
    (d / "demo.rel").write_text(rel)
    (d / "start.boot").write_bytes(b"boot")
    (root / "lib" / "kernel-8.5.3").mkdir(parents=True, exist_ok=True)
    (root / f"erts-{erts}").mkdir(exist_ok=True)
    if complete:
        (root / "lib" / f"demo-{vsn}").mkdir(parents=True, exist_ok=True)


def test_releases_from_disk_only_complete(tmp_path):
    for v, c in (("1.0.0", True), ("2.0.0", True), ("3.0.0", False)):
        _disk_release(tmp_path, v, complete=c)
    (tmp_path / "releases" / "bogus").mkdir()
    h = ag.Host(str(tmp_path), "demo")
    assert [r["version"] for r in ag.releases_from_disk(h)] == ["2.0.0", "1.0.0"]


def test_repair_boot_files_start_erl_names_removed_version(tmp_path):
    _disk_release(tmp_path, "1.0.0")
    _disk_release(tmp_path, "2.0.0")
    h = ag.Host(str(tmp_path), "demo")
    rels = [ag._releases_entry(h, ag.parse_rel((tmp_path / "releases" / v / "demo.rel").read_text()), st)
            for v, st in (("2.0.0", "old"), ("1.0.0", "permanent"))]
    h.write_releases(rels)
    (tmp_path / "releases" / "start_erl.data").write_text("13.1.5 9.9.9\n")
    rep = ag.repair_boot_files(h)
    assert len(rep) == 1 and "9.9.9" in rep[0] and "1.0.0" in rep[0], rep
    assert h.start_erl() == {"erts": "13.1.5", "version": "1.0.0"}
    assert ag.repair_boot_files(h) == []  # idempotent
    # permanent release gone too: the newest complete one that RELEASES lists
    shutil.rmtree(tmp_path / "releases" / "1.0.0")
    rep = ag.repair_boot_files(h)
    assert h.start_erl()["version"] == "2.0.0" and "made permanent" in rep[0], rep
    assert next(r["version"] for r in h.releases() if r["status"] == "permanent") == "2.0.0"


def test_repair_boot_files_rebuilds_corrupt_releases_from_disk(tmp_path):
    _disk_release(tmp_path, "1.0.0")
    _disk_release(tmp_path, "2.0.0")
    h = ag.Host(str(tmp_path), "demo")
    (tmp_path / "releases" / "RELEASES").write_text("garbage {{{")
    (tmp_path / "releases" / "start_erl.data").write_text("13.1.5 1.0.0\n")
    rep = ag.repair_boot_files(h)
    assert any("RELEASES" in r for r in rep), rep
    assert [(r["version"], r["status"]) for r in h.releases()] == [("2.0.0", "old"), ("1.0.0", "permanent")]
    assert list((tmp_path / ".hotswap").glob("RELEASES.damaged-*"))


def test_status_reports_corrupt_releases(tmp_path):
    (tmp_path / "releases").mkdir()
    (tmp_path / "releases" / "RELEASES").write_text("not erlang [")
    rc, out, _ign = _cli(tmp_path, "status")
    assert rc == 0 and out["releases_error"] and "RELEASES" in out["releases_error"], out


def _upgrade_pkg(path, vsn="2.0.0", payload=b"x" * 5000):
    rel = ('{release,{"demo","%s"},{erts,"13.1.5"},[{kernel,"8.5.3"},{demo,"%s"}]}.\n' % (vsn, vsn)).encode()
    with tarfile.open(path, "w:gz") as tf:
        for name, data in ((f"releases/demo-{vsn}.rel", rel), (f"releases/{vsn}/demo.rel", rel),
                           (f"lib/demo-{vsn}/ebin/demo.app", payload)):
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))
    import hashlib
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _root_v1(tmp_path):
    root = tmp_path / "root"
    _disk_release(root, "1.0.0")
    h = ag.Host(str(root), "demo")
    h.write_releases([ag._releases_entry(h, ag.parse_rel((root / "releases/1.0.0/demo.rel").read_text()),
                                         "permanent")])
    h.ensure_hs()
    return root, h


def test_unpack_no_space_preflight(tmp_path, monkeypatch):
    root, h = _root_v1(tmp_path)
    pkg = tmp_path / "p.tar.gz"
    sha = _upgrade_pkg(pkg)
    monkeypatch.setattr(ag, "_space_free", lambda h: 20 * 1024)
    with pytest.raises(ag.OpFailed) as e:
        ag.prepare_unpack(h, str(pkg), sha, "2.0.0", False)
    assert "no space left on device while unpacking 2.0.0" in e.value.msg and "nothing changed" in e.value.msg
    assert not (root / "releases" / "2.0.0").exists()


def test_unpack_enospc_midway_removes_partial_files(tmp_path, monkeypatch):
    import errno as _errno
    root, h = _root_v1(tmp_path)
    pkg = tmp_path / "p.tar.gz"
    sha = _upgrade_pkg(pkg)
    real_rename = os.rename
    calls = []

    def rename(a, b):  # the lib dir moves, then the disk fills up
        calls.append(b)
        if len(calls) == 2:
            raise OSError(_errno.ENOSPC, "No space left on device")
        return real_rename(a, b)

    monkeypatch.setattr(ag.os, "rename", rename)
    with pytest.raises(ag.OpFailed) as e:
        ag.prepare_unpack(h, str(pkg), sha, "2.0.0", False)
    assert "no space left on device while unpacking" in e.value.msg and "partial files removed" in e.value.msg
    assert not (root / "lib" / "demo-2.0.0").exists() and not (root / "releases" / "2.0.0").exists()
    assert not [n for n in os.listdir(root / ".hotswap") if n.startswith("staging")]


@pytest.mark.parametrize("root", ["/", "//", "/.", "/opt/..", "/opt/../etc", "rel/x", "/opt/x\n"])
def test_cli_bad_roots(root):
    p = subprocess.run([sys.executable, str(AGENT_PATH), "--root", root, "--app", "demo", "status"],
                       capture_output=True, text=True, check=False)
    assert p.returncode == 2 and "--root" in json.loads(p.stdout)["msg"]


def test_fault_point_only_acts_on_its_name(tmp_path, monkeypatch):
    h = _host(tmp_path)
    killed = []
    monkeypatch.setattr(h, "os_pid", lambda: (4242, None))
    monkeypatch.setattr(ag.os, "kill", lambda pid, sig: killed.append((pid, sig)))
    monkeypatch.setattr(ag, "_pid_alive", lambda pid: False)
    monkeypatch.delenv("HOTSWAP_AGENT_FAULT", raising=False)
    ag.fault_point(h, "before_install")
    monkeypatch.setenv("HOTSWAP_AGENT_FAULT", "after_commit")
    ag.fault_point(h, "before_install")
    assert killed == []
    monkeypatch.setenv("HOTSWAP_AGENT_FAULT", "before_install")
    ag.fault_point(h, "before_install")
    assert killed == [(4242, ag.signal.SIGKILL)]


def test_refusal_message():
    r = {"running": "1.0.0", "rehearsal_failures": [
        {"module": "Sample.Counter", "old_vsn": "1", "pid": "#PID<0.1.0>", "callback": "Sample.Counter",
         "error": "raised (RuntimeError) boom"}]}
    msg = ag._refusal_msg("2.0.0", r)
    assert msg.startswith("hot upgrade to 2.0.0 refused: Sample.Counter.code_change(1, state, extra)")
    assert "RuntimeError" in msg and msg.endswith(
        "rehearsed on a copy of the live state; nothing was installed; the host keeps 1.0.0 and its state")


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
    assert not (tmp_path / ".hotswap" / "journal.jsonl").exists()   # a read is not journalled


def test_settings_write_env_and_cookie_privately_and_only_when_changed(tmp_path):
    h = _host(tmp_path)
    assert ag.apply_settings(h, {"env": {"B": "2", "A": "x y"}, "cookie": "secret-cookie"}) == ["env", "cookie"]
    env, cookie = tmp_path / ".hotswap" / "env", tmp_path / ".hotswap" / "cookie"
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
    assert (tmp_path / ".hotswap" / "cookie").read_text() == "c00kie-x"
    assert "c00kie-x" not in (tmp_path / ".hotswap" / "journal.jsonl").read_text()


def test_store_package_verifies_then_keeps_it(tmp_path):
    h = _host(tmp_path)
    h.ensure_hs()
    up = tmp_path / ".hotswap" / ".upload.part"
    up.write_bytes(b"package bytes")
    sha = ag.sha256_file(str(up))
    with pytest.raises(ag.OpFailed):
        ag.store_package(h, str(up), "0" * 64, "demo-2.0.0.tar.gz")
    assert up.exists()
    with pytest.raises(ag.BadInput):
        ag.store_package(h, str(up), sha, "../evil")
    dest = ag.store_package(h, str(up), sha, "demo-2.0.0.tar.gz")
    assert dest == str(tmp_path / ".hotswap" / "packages" / (sha + "-demo-2.0.0.tar.gz"))
    assert not up.exists() and open(dest, "rb").read() == b"package bytes"
    assert oct(os.stat(dest).st_mode & 0o777) == "0o644"
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
    assert not (tmp_path / ".hotswap" / "journal.jsonl").exists()


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
    old, new = tmp_path / ".hotswap" / ".upload-ab-x.part", tmp_path / ".hotswap" / ".upload-cd-y.part"
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
