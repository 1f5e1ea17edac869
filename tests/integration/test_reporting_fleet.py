"""Reporting on the real netns fleet: the words of the summary, status.yml's verdict, the up-front variable
check, and nothing written on a target before the build succeeded (issue 13, finding 5).

Own release root (/opt/reporting), node name, port, build store, artifact and report dirs, so it can
share a session (and a fleet) with the other fleet tests.

  bad type refused on the controller -> wrong hotswap_app leaves nothing -> first install (misspelled
  variable warned) -> no-op rerun (agent current: one ssh exec to read each host, no install task)
  -> status with a node stopped -> status and a deploy with an unreachable host
"""
import json
import os
import re
import time

import pytest

from hotswap_testlib import sample
from hotswap_testlib.ansible_run import parse_recap, run_playbook
from hotswap_testlib.layout import agent_cmd

pytestmark = [pytest.mark.integration, pytest.mark.fleet]

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEPLOY = os.path.join(REPO, "playbooks", "deploy.yml")
STATUS = os.path.join(REPO, "playbooks", "status.yml")
ROOT = "/opt/reporting"
PORT = 4090
NODE = "reporting"
STORE = "/opt/reporting-store"
TARGETS = ["target1", "target2", "target3"]
AGENT = agent_cmd(ROOT, "sample")
TIMINGS = []


@pytest.fixture(scope="module")
def env(fleet, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("reporting")
    src = str(sample.materialise(tmp / "src-1.0.0", "1.0.0"))
    counter = {"n": 0}

    def extra(**kw):
        counter["n"] += 1
        e = {
            "hotswap_app": "sample",
            "hotswap_root": ROOT,
            "hotswap_service_manager": "daemon",
            "hotswap_report_dir": str(tmp / "reports" / ("%02d" % counter["n"])),
            "hotswap_source": src,
            "hotswap_build_store": STORE,
            "hotswap_artifact_dir": str(tmp / "artifacts"),
            "hotswap_env": {"SAMPLE_PORT": str(PORT), "SAMPLE_GREETING": "hello-reporting", "RELEASE_NODE": NODE},
        }
        e.update(kw)
        return {k: v for k, v in e.items() if v is not None}

    ghost = tmp / "ghost.ini"
    # a host nothing listens for: ssh is refused at once (unreachable, never "down")
    ghost.write_text("[hotswap_targets]\nghost ansible_host=127.0.0.1 ansible_port=1 ansible_user=root\n")
    yield {"tmp": tmp, "extra": extra, "ghost": str(ghost)}
    with open(tmp / "timings.txt", "w") as f:
        f.writelines("%6.1f s  %s\n" % (dt, what) for what, dt in TIMINGS)


def _play(fleet, playbook, extra_vars, label, args=()):
    t0 = time.monotonic()
    rc, out, err = run_playbook(fleet, playbook, extra_vars, args=list(args), timeout=1200)
    TIMINGS.append((label, time.monotonic() - t0))
    return rc, out, err, parse_recap(out)


def _tail(out, err, n=5000):
    return out[-n:] + "\n--- stderr ---\n" + err[-2000:]


def _no_traceback(out, err):
    assert "Traceback (most recent call last)" not in out + err, _tail(out, err)


def _on_host(fleet, host, path):
    """``path`` (under /opt) as the controller sees the host's private /opt."""
    return os.path.join(str(fleet.opt_dir(host)), path[len("/opt/"):])


def _status(fleet, host):
    return json.loads(fleet.run(host, AGENT + ["status"], timeout=120).stdout)


def _ssh_execs(out, fleet, host):
    """How many ssh commands ansible ran on ``host`` (-vvv prints one ``SSH: EXEC`` line per command)."""
    addr = fleet.host(host).address
    return sum(1 for line in out.splitlines() if line.startswith("<%s>" % addr) and "SSH: EXEC" in line)


# ----------------------------------------------------------------------------------------------- 1

def test_a_bad_type_is_refused_on_the_controller_before_any_host_is_touched(fleet, env):
    rc, out, err, recap = _play(fleet, DEPLOY, env["extra"](), "deploy with hotswap_health_timeout=30s",
                                args=["-e", "hotswap_health_timeout=30s"])
    assert rc != 0, _tail(out, err)
    _no_traceback(out, err)
    assert "hotswap_health_timeout must be an integer (seconds), got '30s'." in out, _tail(out, err)
    # the roles' own argument-spec validation never ran (its dump is what the user saw before)
    assert "validate_argument_spec" not in out and "arg spec 'main' - Move" not in out, _tail(out, err)
    assert set(recap) == {"localhost"}, recap
    for t in TARGETS + ["build1"]:
        assert not os.path.exists(_on_host(fleet, t, ROOT)), t


def test_a_string_that_converts_passes_the_check(fleet, env):
    """``-e hotswap_health_timeout=30`` is the string "30": the check passes it (status.yml, nothing installed
    yet: the run fails later for the nodes that are not there, not for the value)."""
    rc, out, err, recap = _play(fleet, STATUS, {"hotswap_app": "sample", "hotswap_root": ROOT}, "status, timeout 30",
                                args=["-e", "hotswap_health_timeout=30", "-e", "hotswap_allow_downgrade=false"])
    _no_traceback(out, err)
    assert "Bad input" not in out and recap["localhost"]["failed"] == 0, _tail(out, err)


# ----------------------------------------------------------------------------------------------- 2

def test_a_wrong_app_name_leaves_nothing_on_the_targets(fleet, env):
    rc, out, err, recap = _play(fleet, DEPLOY, env["extra"](hotswap_app="wrong_app", hotswap_root=None),
                                "deploy hotswap_app=wrong_app (build fails)")
    assert rc != 0, _tail(out, err)
    _no_traceback(out, err)
    assert "wrong_app" in out and recap.get("build1", {}).get("failed", 0) >= 1, _tail(out, err)
    for t in TARGETS:
        assert recap[t]["changed"] == 0, recap
        assert not os.path.exists(_on_host(fleet, t, "/opt/wrong_app")), t
        assert not os.path.exists(_on_host(fleet, t, ROOT)), t


# ----------------------------------------------------------------------------------------------- 3

def test_first_install_warns_about_a_misspelled_variable(fleet, env):
    rc, out, err, recap = _play(fleet, DEPLOY, env["extra"](hotswap_mdoe="hot"), "first install 1.0.0")
    assert rc == 0, _tail(out, err)
    both = out + err
    assert re.search(r"unknown variable hotswap_mdoe is ignored: did you mean\s+hotswap_mode\?", both), _tail(out, err)
    for t in TARGETS:
        st = _status(fleet, t)
        assert st["node_up"] and st["running"] == "1.0.0", (t, st)


def test_a_rerun_with_the_agent_current_reads_each_host_in_one_ssh_exec(fleet, env):
    rc, out, err, recap = _play(fleet, DEPLOY, env["extra"](), "no-op rerun, -vvv", args=["-vvv"])
    assert rc == 0, _tail(out, err)
    assert all(recap[t]["changed"] == 0 for t in TARGETS), recap
    gather = out.split("TASK [beam.hotswap.agent : Gather what the host runs]", 1)[1]
    gather = re.split(r"\nTASK \[", gather, maxsplit=1)[0]
    for t in TARGETS:
        assert _ssh_execs(gather, fleet, t) == 1, (t, gather[-3000:])
    # the agent is current: the release task installs nothing (its own ssh execs are counted below)
    assert '"agent_installed": ["' not in out
    TIMINGS.append(("ssh execs per target, whole no-op deploy: %s" % {t: _ssh_execs(out, fleet, t) for t in TARGETS},
                    0.0))


# ----------------------------------------------------------------------------------------------- 4

def test_status_with_a_node_stopped_fails_naming_it_after_the_whole_table(fleet, env):
    fleet.run("target2", AGENT + ["stop"], timeout=120)
    try:
        rc, out, err, recap = _play(fleet, STATUS, {"hotswap_app": "sample", "hotswap_root": ROOT},
                                    "status, target2 stopped")
        assert rc != 0, _tail(out, err)
        _no_traceback(out, err)
        table = out.index("Print what each host runs")
        verdict = out.index("1 node(s) down (the host was reached, the node is not running): target2.")
        assert table < verdict, _tail(out, err)
        rows = out[table:verdict]
        assert re.search(r"target2\s+\(down\)", rows) and re.search(r"target1\s+1\.0\.0", rows), rows[-3000:]
        assert "unreachable" not in rows.split("versions", 1)[1].split("\n", 1)[0], rows[-3000:]
    finally:
        fleet.run("target2", AGENT + ["start"], timeout=180)
    assert _status(fleet, "target2")["node_up"]


def test_status_calls_an_unreachable_host_unreachable_not_down(fleet, env):
    rc, out, err, recap = _play(fleet, STATUS, {"hotswap_app": "sample", "hotswap_root": ROOT},
                                "status with an unreachable host", args=["-i", env["ghost"]])
    assert rc != 0, _tail(out, err)
    _no_traceback(out, err)
    assert "1 host(s) unreachable (could not connect; their state is unknown): ghost." in out, _tail(out, err)
    assert "node(s) down" not in out, _tail(out, err)
    assert re.search(r"ghost\s+unreachable", out) and not re.search(r"ghost\s+\(down\)", out), _tail(out, err)
    for t in TARGETS:
        assert re.search(r"%s\s+1\.0\.0" % t, out), _tail(out, err)


def test_a_rollout_summary_calls_an_unreachable_host_unreachable(fleet, env):
    rc, out, err, recap = _play(fleet, DEPLOY, env["extra"](), "no-op deploy with an unreachable host",
                                args=["-i", env["ghost"]])
    assert rc != 0 and recap["ghost"]["unreachable"] >= 1, _tail(out, err)
    _no_traceback(out, err)
    assert all(recap[t]["changed"] == 0 and recap[t]["failed"] == 0 for t in TARGETS), recap
    assert "unreachable (could not connect): ghost" in out, _tail(out, err)
    assert not re.search(r"ghost[^\n]*\(down\)", out), _tail(out, err)
