"""Service managers: which one is used, the systemd unit's text (verified by systemd-analyze), rewrites only on change."""
import subprocess

from hotswap_testlib.agent_artifact import ag
from hotswap_testlib.requirements import require

from ansible_collections.beam.hotswap.plugins.module_utils._agent.names import state_dir


def hs_dir(root):
    """The agent's directory for a release root (beside it, root-owned)."""
    return type(root)(state_dir(str(root)))


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
    for want in ("Type=exec", "ExecStart=/opt/demo/bin/demo start",
                 "User=demo", "EnvironmentFile=-/opt/.hotswap/demo/env", "Restart=on-failure",
                 "WantedBy=multi-user.target"):
        assert want in lines, want
    assert "restart" not in " ".join(x for x in lines if x.startswith("Exec"))  # never bin/APP restart
    assert not [x for x in lines if x.startswith("ExecStop")]  # bin/APP stop shows the cookie in its argv
    assert "User=" not in ag.systemd_unit("/opt/demo", "demo", None)
    assert ag.unit_name("demo") == "hotswap-demo.service"


def test_systemd_unit_verifies(tmp_path):
    require("systemd-analyze")
    root = tmp_path / "root"
    (root / "bin").mkdir(parents=True)
    hs_dir(root).mkdir(parents=True)
    (hs_dir(root) / "env").write_text("RELEASE_NODE=demo\n")
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
    h = ag.Host(str(tmp_path / "root"), "demo", "nobody")
    calls = []

    def run(argv, **kw):
        calls.append(argv[1:])
        return subprocess.CompletedProcess(argv, 0, "", "")

    assert ag.ensure_unit(h, unit_dir=str(tmp_path / "units"), run=run) is True
    assert calls == [["daemon-reload"], ["enable", "hotswap-demo.service"]]
    text = (tmp_path / "units" / "hotswap-demo.service").read_text()
    assert text == ag.systemd_unit(h.root, "demo", "nobody")
    calls.clear()
    assert ag.ensure_unit(h, unit_dir=str(tmp_path / "units"), run=run) is False
    assert calls == []
