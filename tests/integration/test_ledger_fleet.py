"""A second app, written the way users write apps (tests/fixtures/ledger_app), deployed through deploy.yml
to three targets under continuous load on every target: each change either goes live hot (every acknowledged
write kept, same OS pid, no failed request) or is refused before the point of no return with a named reason,
the hosts keeping their release, OS process and state.  Never rc 0 with a dead node or a change silently
left out.

The tests run in file order on one fleet root (/opt/ledger): each starts from where the previous left it.
"""
import json
import os
import re

import pytest

from hotswap_testlib import ledger
from hotswap_testlib.ansible_run import parse_recap, run_playbook
from hotswap_testlib.layout import agent_cmd

pytestmark = [pytest.mark.integration, pytest.mark.fleet]

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEPLOY = os.path.join(REPO, "playbooks", "deploy.yml")
ROOT = "/opt/ledger"
PORT = 5050
STORE = "/opt/ledger-store"
TARGETS = ["target1", "target2", "target3"]
AGENT = agent_cmd(ROOT, "ledger")
ENV = {"LEDGER_PORT": str(PORT), "LEDGER_GREETING": "hello-ledger", "RELEASE_NODE": "ledger"}


@pytest.fixture(scope="module")
def env(fleet, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ledger")

    def extra(version, old_mtimes=False, **kw):
        src = tmp / ("src-" + version + ("-old" if old_mtimes else ""))
        if not src.exists():
            ledger.materialise(src, version, old_mtimes=old_mtimes)
        e = {"hotswap_app": "ledger", "hotswap_root": ROOT, "hotswap_source": str(src),
             "hotswap_build_store": STORE, "hotswap_artifact_dir": str(tmp / "artifacts"),
             "hotswap_report_dir": str(tmp / "reports"), "hotswap_service_manager": "daemon",
             "hotswap_env": dict(ENV)}
        e.update(kw)
        return e
    return {"extra": extra}


def _status(fleet, host):
    return json.loads(fleet.run(host, AGENT + ["status"]).stdout)


def _statuses(fleet):
    return {t: _status(fleet, t) for t in TARGETS}


def _ask(fleet, host, line):
    return ledger.ask(fleet.host(host).address, PORT, line)


def _deploy(fleet, extra):
    """(rc, stdout + stderr, stderr): Ansible prints a task's warnings on stderr."""
    rc, out, err = run_playbook(fleet, DEPLOY, extra, timeout=1200)
    print("\n".join(x for x in (out + err).splitlines() if '"msg"' in x or "FAILED" in x or "WARNING" in x)[-4000:])
    return rc, out + "\n" + err, err


class _Loads:
    """A Load on every target; on exit: no failed request and every acknowledged write still there."""

    def __init__(self, fleet, tag):
        self.loads = {t: ledger.Load(fleet.host(t).address, PORT, f"{tag}-{t}") for t in TARGETS}

    def __enter__(self):
        for ld in self.loads.values():
            ld.start()
        return self

    def __exit__(self, *exc):
        self.figures = {t: ld.stop() for t, ld in self.loads.items()}
        print("load:", self.figures)

    def check(self):
        for t, ld in self.loads.items():
            fig = self.figures[t]
            assert fig["acked"] > 20 and fig["failed"] == 0, (t, fig)
            assert ld.missing() == [], (t, "acknowledged writes lost")


def _same_processes(before, after, version):
    for t in TARGETS:
        b, a = before[t], after[t]
        assert a["node_up"] and (a["running"], a["permanent"]) == (version, version), (t, a)
        assert a["os_pid"] == b["os_pid"], (t, "the node was restarted", b["os_pid"], a["os_pid"])


@pytest.mark.fault
def test_first_install_then_an_acceptor_looping_locally_is_refused_three_times_before_anything_changes(fleet, env):
    rc, out, err = _deploy(fleet, env["extra"]("1.0.0"))
    assert rc == 0, out[-3000:] + err[-1500:]
    before = _statuses(fleet)
    assert all(s["running"] == "1.0.0" and s["node_up"] for s in before.values()), before
    with _Loads(fleet, "refuse") as loads:
        for attempt in range(3):          # the acceptor case, several times in a row
            rc, out, err = _deploy(fleet, env["extra"]("1.1.0"))
            assert rc != 0 and parse_recap(out)["target1"]["failed"] == 1, (attempt, out[-3000:])
            # where the acceptor is blocked depends on the moment it is sampled (accept, or a call it makes)
            assert "refused" in out and re.search(r"in Ledger.Listener.accept_loop/1 \(blocked in :[a-z_]+\.\w+/\d\)", out), out[-3000:]
            assert "nothing was installed" in out and "hotswap_old_code=kill" in out, out[-3000:]
            _same_processes(before, _statuses(fleet), "1.0.0")
    loads.check()
    assert _ask(fleet, "target1", "WHO") == "listener-1"
    assert not [r for r in _status(fleet, "target1")["releases"] if r["version"] == "1.1.0"]   # nothing left behind


@pytest.mark.fault
def test_with_old_code_kill_the_acceptor_is_restarted_on_the_new_code_or_the_host_is_restored(fleet, env):
    """hotswap_old_code=kill is the user's opt-in to lose the killed processes.  The acceptor here owns its listen
    socket: the restart its supervisor makes may race the socket's close (eaddrinuse) and take the application
    down, on any host of any batch.  Either every host goes live (acceptor restarted), or the play fails on the
    host whose node died, that host is back on 1.0.0 and said so, the hosts before it run 1.1.0 and the hosts
    after it were not touched; never rc 0 with a dead node."""
    before = _statuses(fleet)
    ticks = int(_ask(fleet, "target1", "TICKS"))
    with _Loads(fleet, "kill") as loads:
        # the role's default settle window: a node that dies after its commit must fail the play
        rc, out, err = _deploy(fleet, env["extra"]("1.1.0", hotswap_old_code="kill", hotswap_settle_seconds=6))
    if rc != 0:
        recap = parse_recap(out)
        failed = [t for t in TARGETS if recap.get(t, {}).get("failed")]
        assert len(failed) == 1, (recap, out[-3000:])
        st = _statuses(fleet)
        bad = st[failed[0]]
        assert bad["node_up"] and (bad["running"], bad["permanent"]) == ("1.0.0", "1.0.0"), bad
        assert "state lost" in out.lower(), out[-3000:]
        for t in TARGETS:
            if t != failed[0]:
                assert st[t]["node_up"] and st[t]["os_pid"] == before[t]["os_pid"], (t, st[t])
                assert st[t]["running"] in ("1.0.0", "1.1.0"), (t, st[t])
        print("the killed acceptor took its application down on %s; that host was restored and said so" % failed)
        rc, out, err = _deploy(fleet, env["extra"]("1.1.0", hotswap_mode="cold"))   # on to 1.1.0, on purpose
        assert rc == 0 and "in-memory state is lost" in out, out[-3000:]
        return
    loads.check()
    _same_processes(before, _statuses(fleet), "1.1.0")
    for t in TARGETS:
        assert _ask(fleet, t, "WHO") == "listener-2" and _ask(fleet, t, "VSN") == "1.1.0"
    assert int(_ask(fleet, "target1", "TICKS")) >= ticks        # the receive loop kept its count
    assert "hotswap_old_code=kill: 1 process(es)" in out and "in Ledger.Listener.accept_loop/1" in out, out[-3000:]


def test_an_upgrade_safe_acceptor_and_receive_loop_go_hot_and_new_application_children_are_reported(fleet, env):
    before = _statuses(fleet)
    ticks = int(_ask(fleet, "target1", "TICKS"))
    with _Loads(fleet, "safe") as loads:
        rc, out, err = _deploy(fleet, env["extra"]("1.2.0"))
    assert rc == 0, out[-3000:] + err[-1500:]
    loads.check()
    _same_processes(before, _statuses(fleet), "1.2.0")
    for t in TARGETS:
        assert _ask(fleet, t, "WHO") == "listener-3"
    assert int(_ask(fleet, "target1", "TICKS")) >= ticks
    # the child added to Ledger.Application's own list is not started by a hot upgrade: said so, per host
    assert _ask(fleet, "target1", "AUDIT") == "NOAUDIT"
    assert re.search(r"not.applied", out) and "Ledger.Application" in out, out[-3000:]
    assert "hotswap_old_code=kill" not in out


def test_a_bumped_path_dependency_with_old_file_times_goes_live_with_its_new_code(fleet, env):
    before = _statuses(fleet)
    with _Loads(fleet, "dep") as loads:
        rc, out, err = _deploy(fleet, env["extra"]("1.3.0", old_mtimes=True))
    assert rc == 0, out[-3000:] + err[-1500:]
    loads.check()
    _same_processes(before, _statuses(fleet), "1.3.0")
    for t in TARGETS:
        assert _ask(fleet, t, "FMT") == "fmt-b:42"                 # the dependency's new code, not the old
        assert _ask(fleet, t, "SHAPE") == "entries,table,writes"   # code_change transformed the state
    libs = [r for r in _status(fleet, "target1")["releases"] if r["version"] == "1.3.0"]
    assert libs


@pytest.mark.bad_input
def test_an_equal_size_dependency_edit_without_a_version_bump_is_refused_by_the_build(fleet, env):
    before = _statuses(fleet)
    rc, out, err = _deploy(fleet, env["extra"]("1.3.1", old_mtimes=True))
    assert rc != 0 and "bump its version" in out, out[-3000:]
    _same_processes(before, _statuses(fleet), "1.3.0")
    assert _ask(fleet, "target1", "FMT") == "fmt-b:42"


@pytest.mark.bad_input
def test_a_downgrade_through_deploy_yml_goes_hot_or_is_refused_never_cold(fleet, env):
    before = _statuses(fleet)
    with _Loads(fleet, "down") as loads:
        rc, out, err = _deploy(fleet, env["extra"]("1.2.0"))
    loads.check()
    after = _statuses(fleet)
    if rc == 0:      # a hot edge down: every host on 1.2.0, same processes
        _same_processes(before, after, "1.2.0")
        rc, out, err = _deploy(fleet, env["extra"]("1.3.0", old_mtimes=True))
        assert rc == 0, out[-3000:]
    else:
        assert "rollback.yml" in out and "older than the running 1.3.0" in out, out[-3000:]
        _same_processes(before, after, "1.3.0")


def test_an_env_change_is_written_reported_until_a_restart_and_put_back_by_a_rerun(fleet, env):
    before = _statuses(fleet)
    new_env = dict(ENV, LEDGER_GREETING="bonjour")
    rc, out, err = _deploy(fleet, env["extra"]("1.3.0", old_mtimes=True, hotswap_env=new_env))
    assert rc == 0, out[-3000:]
    assert "LEDGER_GREETING written on the host" in out and "when it next starts" in out, out[-3000:]
    assert "bonjour" not in out                                     # names, never values
    after = _statuses(fleet)
    _same_processes(before, after, "1.3.0")
    assert all(after[t]["env_pending_restart"] == ["LEDGER_GREETING"] for t in TARGETS), after
    assert _ask(fleet, "target1", "GREETING") == "hello-ledger"     # the running VM still has the old value
    # the original env again: the files go back, nothing pending, nothing restarted
    rc, out, err = _deploy(fleet, env["extra"]("1.3.0", old_mtimes=True))
    assert rc == 0 and "when it next starts" not in out, out[-3000:]
    assert re.search(r"target1\s*:\s*ok=\d+\s+changed=[1-9]", out), out[-2000:]
    after = _statuses(fleet)
    _same_processes(before, after, "1.3.0")
    assert all(after[t]["env_pending_restart"] == [] for t in TARGETS), after
    # the new env once more, then a restart of the node puts it in effect
    rc, out, err = _deploy(fleet, env["extra"]("1.3.0", old_mtimes=True, hotswap_env=new_env))
    assert rc == 0 and "LEDGER_GREETING written on the host" in out, out[-3000:]
    fleet.run("target1", AGENT + ["stop"])
    fleet.run("target1", AGENT + ["start"])
    assert _ask(fleet, "target1", "GREETING") == "bonjour"
    assert _status(fleet, "target1")["env_pending_restart"] == []
