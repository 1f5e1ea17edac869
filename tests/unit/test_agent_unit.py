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


def test_agent_version_and_stdlib_only():
    assert ag.AGENT_VERSION == "1.0.0"
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
    if not os.path.exists("/usr/bin/elixir"):
        pytest.skip("no elixir")
    s = 'q"#{1}\\ \t\n\u00e9\U0001F600'
    p = subprocess.run(["elixir", "-e", "IO.write(" + ag.ex_lit(s) + ")"], capture_output=True, text=True)
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
    with pytest.raises(ag.OpFailed) as e:
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
        p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=10)
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
                       capture_output=True, text=True, timeout=30)
    return p.returncode, json.loads(p.stdout), p.stderr


def test_cli_bad_input_exit_2(tmp_path):
    for args in (["install", "--version", "1;x"], ["hot", "--package", "p", "--sha256", "zz", "--version", "1"],
                 ["nosuchcmd"], ["prune", "--keep", "0"], ["prune"], ["rollback", "--version", "1", "--mode", "warm"], ["health", "--version", "1", "--check", "ftp://x"]):
        rc, out, err = _cli(tmp_path, *args)
        assert rc == 2 and out["failed"] is True and out["msg"].startswith("bad input"), (args, out)
        assert "Traceback" not in err


def test_cli_status_without_node(tmp_path):
    h = _host(tmp_path)
    h.write_releases(ag.parse_releases(RELEASES))
    (tmp_path / "releases" / "start_erl.data").write_text("13.1.5 1.0.0\n")
    rc, out, _ = _cli(tmp_path, "status")
    assert rc == 0
    assert out["permanent"] == "1.0.0" and out["unpacked"] == ["2.0.0"]
    assert out["start_erl"] == {"erts": "13.1.5", "version": "1.0.0"}
    assert out["agent_version"] == "1.0.0"
    assert isinstance(out["node_up"], bool)


def test_cli_unpack_sha_mismatch_changes_nothing(tmp_path):
    h = _host(tmp_path)
    h.write_releases(ag.parse_releases(RELEASES))
    pkg = tmp_path / "p.tar.gz"
    pkg.write_bytes(b"not a tar")
    before = sorted(os.listdir(tmp_path / "releases"))
    rc, out, _ = _cli(tmp_path, "unpack", "--package", str(pkg), "--sha256", "0" * 64, "--version", "3.0.0")
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
    with pytest.raises(ag.OpFailed) as e:
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
    with pytest.raises(ag.OpFailed) as e:  # a tarball of another version
        ag.stage_full(h, str(pkg), sha, "2.0.0", (os.getuid(), os.getgid()))
    assert "unexpected" in e.value.msg


def test_first_install_refusals_without_node(tmp_path):
    root = tmp_path / "root"
    pkg = tmp_path / "full.tar.gz"
    sha = _full_tarball(pkg, extra=[("releases/1.0.0/../../../escape", b"x")])
    rc, out, _ = _cli(root, "first-install", "--version", "1.0.0", "--package", str(pkg), "--sha256", sha,
                      "--service-manager", "daemon")
    assert rc == 1 and ".." in out["msg"], out
    assert not (root / "bin").exists() and not (tmp_path / "escape").exists()
    # a root holding a release is refused: use hot/cold
    h = _host(root)
    h.write_releases(ag.parse_releases(RELEASES))
    sha = _full_tarball(pkg)
    rc, out, _ = _cli(root, "first-install", "--version", "1.0.0", "--package", str(pkg), "--sha256", sha)
    assert rc == 1 and "already installed" in out["msg"] and "hot/cold" in out["msg"], out
    # cold needs a release to start from
    (root / "releases" / "RELEASES").unlink()
    rc, out, _ = _cli(root, "cold", "--version", "1.0.0", "--package", str(pkg), "--sha256", sha)
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


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="systemd-analyze not installed")
def test_systemd_unit_verifies(tmp_path):
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
                       timeout=60)
    assert p.returncode == 0, p.stdout + p.stderr
    exe.unlink()  # and the check is real: a missing ExecStart binary fails
    p = subprocess.run(["systemd-analyze", "verify", "--man=no", str(unit)], capture_output=True, text=True,
                       timeout=60)
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
    rc, out, _ = _cli(tmp_path, "status")
    assert rc == 0, out
    assert out["permanent"] == "2.0.0" and out["previous"] == "1.0.0"
    assert out["relup_down"] == ["1.0.0"] and out["relup_up"] == ["1.0.0", "1.5.0"]
