"""The agent's command line: one JSON object, exit 0/1/2, the lock, the journal; standard library only."""
import json
import os
import subprocess
import sys

import pytest

from hotswap_testlib.agent_artifact import AGENT_PATH, RELEASES, _cli, _host, ag

from ansible_collections.beam.hotswap.plugins.module_utils._agent.names import state_dir


def hs_dir(root):
    """The agent's directory for a release root (beside it, root-owned)."""
    return type(root)(state_dir(str(root)))


def test_agent_is_stdlib_only():
    src = AGENT_PATH.read_text()
    for bad in ("import yaml", "import requests", "shell=True"):
        assert bad not in src


# ------------------------------------------------------------------ lock, journal, CLI (no node)


def test_lock_second_holder_fails_fast(tmp_path):
    h = _host(tmp_path)
    with ag.Lock(h, "hot"):
        holder = json.loads((hs_dir(tmp_path) / "lock").read_text())
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
    lines = [json.loads(x) for x in (hs_dir(tmp_path) / "journal.jsonl").read_text().splitlines()]
    assert [x["op"] for x in lines] == ["hot", "status"]
    assert "env" not in lines[0] and "ts" in lines[0]


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
    assert out["agent_version"] == ag.AGENT_VERSION
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
