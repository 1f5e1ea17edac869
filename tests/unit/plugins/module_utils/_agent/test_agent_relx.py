"""relx releases on a host: told apart from mix ones, their vm.args read (name, cookie, ${VAR}), the start
command and the daemon's pipes, and bin/ following the release that boots."""
import os

from hotswap_testlib.agent_artifact import ag


def _rel(root, vsn, relx=True, vm_args="-sname kv_web\n-setcookie secret_cookie_1\n", bin_text=None):
    d = root / "releases" / vsn
    d.mkdir(parents=True, exist_ok=True)
    (d / "vm.args").write_text(vm_args)
    if not relx:
        (d / "env.sh").write_text("#!/bin/sh\n")
    (root / "releases" / "start_erl.data").write_text(f"13.1.5 {vsn}\n")
    if bin_text is not None:
        (root / "bin").mkdir(exist_ok=True)
        (root / "bin" / "kv_web").write_text(bin_text)


def test_a_relx_release_is_told_from_a_mix_one_by_its_tree(tmp_path):
    _rel(tmp_path, "1.0.0")
    assert ag.is_relx(str(tmp_path), "1.0.0")
    _rel(tmp_path, "2.0.0", relx=False)
    assert not ag.is_relx(str(tmp_path), "2.0.0")
    assert not ag.is_relx(str(tmp_path), None) and not ag.is_relx(str(tmp_path), "9.9.9")


def test_vm_args_give_the_node_name_flag_and_cookie_with_variables_from_the_env(tmp_path):
    _rel(tmp_path, "1.0.0", vm_args="## comment\n-name ${NODE}@127.0.0.1\n-setcookie ${COOKIE}  # trailing\n+K true\n")
    va = ag.vm_args(str(tmp_path), "1.0.0", {"NODE": "kv", "COOKIE": "c00kie_value"})
    assert va == {"flag": "-name", "name": "kv@127.0.0.1", "cookie": "c00kie_value"}
    # an unset variable or a name with shell characters is never used
    assert "name" not in ag.vm_args(str(tmp_path), "1.0.0", {})
    _rel(tmp_path, "1.0.0", vm_args="-sname a;rm\n")
    assert ag.vm_args(str(tmp_path), "1.0.0", {}) == {}


def test_vm_args_are_read_without_following_a_link(tmp_path):
    secret = tmp_path / "secret"
    secret.write_text("-sname stolen\n-setcookie root_only_secret\n")
    _rel(tmp_path / "root", "1.0.0")
    os.unlink(tmp_path / "root" / "releases" / "1.0.0" / "vm.args")
    os.symlink(secret, tmp_path / "root" / "releases" / "1.0.0" / "vm.args")
    assert ag.vm_args(str(tmp_path / "root"), "1.0.0", {}) == {}


def test_the_host_takes_a_relx_nodes_name_from_vm_args(tmp_path):
    root = tmp_path / "kv_web"
    _rel(root, "1.0.0", vm_args="-sname kv_node\n")
    h = ag.Host(str(root), "kv_web")
    assert h.relx and h.node_name() == "kv_node"
    _rel(root, "2.0.0", relx=False)
    assert not h.relx and h.node_name() == "kv_web"


def test_a_relx_release_runs_in_the_foreground_under_systemd_and_keeps_its_pipes_in_the_root():
    assert "ExecStart=/opt/kv/bin/kv foreground" in ag.systemd_unit("/opt/kv", "kv", "kv", True)
    assert "ExecStart=/opt/kv/bin/kv start" in ag.systemd_unit("/opt/kv", "kv", "kv", False)
    assert ag.daemon_env("/opt/kv", True) == {"PIPE_DIR": "/opt/kv/tmp/erl_pipes/", "RUNNER_LOG_DIR": "/opt/kv/tmp/log"}
    assert ag.daemon_env("/opt/kv", False) == {}


def test_an_erlexec_started_vm_is_recognised_by_its_command_line():
    assert ag._is_beam(["/opt/kv/erts-13.1.5/bin/beam.smp", "--", "-root", "/opt/kv"])
    relx = ["/opt/kv/bin/kv", "-Bd", "--", "-root", "/opt/kv", "-bindir", "/opt/kv/erts-13.1.5/bin", "-progname", "kv"]
    assert ag._is_beam(relx)
    assert not ag._is_beam(["/bin/sh", "/opt/kv/bin/kv", "foreground"])
    assert not ag._is_beam([])


def test_bin_follows_the_release_that_boots(tmp_path):
    root = tmp_path / "kv_web"
    _rel(root, "1.0.0", bin_text='REL_VSN="1.0.0"\n')
    h = ag.Host(str(root), "kv_web")
    h.ensure_hs()
    for vsn in ("1.0.0", "2.0.0"):
        d = os.path.join(h.hs, "bin", vsn)
        os.makedirs(d)
        with open(os.path.join(d, "kv_web"), "w") as f:
            f.write(f'REL_VSN="{vsn}"\n')
    assert not ag.boot_bin(h)                       # already the booting release's
    (root / "releases" / "start_erl.data").write_text("13.1.5 2.0.0\n")
    assert ag.boot_bin(h)
    assert (root / "bin" / "kv_web").read_text() == 'REL_VSN="2.0.0"\n'
    (root / "releases" / "start_erl.data").write_text("13.1.5 3.0.0\n")
    assert not ag.boot_bin(h)                       # nothing kept for 3.0.0: left as it is
    assert (root / "bin" / "kv_web").read_text() == 'REL_VSN="2.0.0"\n'
