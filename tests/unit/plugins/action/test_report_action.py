"""The report action writes the rollout report as JSON on the controller, and nothing in check mode."""
import json
import os
import stat

import pytest

from ansible_collections.beam.hotswap.plugins.action import report as action_mod
from hotswap_testlib.action_harness import make_action, run_action

REPORT = {"rows": [{"host": "t1", "from": "1.0.0", "to": "2.0.0"}], "lines": ["t1 1.0.0 2.0.0 hot"]}


@pytest.mark.parametrize("case, args, check, failed, written", [
    ("writes APP-TIMESTAMP.json", {"report": REPORT, "app": "demo"}, False, False, True),
    ("check mode writes nothing", {"report": REPORT, "app": "demo"}, True, False, False),
    ("no report dict", {"report": "text", "app": "demo"}, False, True, False),
], ids=lambda v: v if isinstance(v, str) else "")
def test_report_action(tmp_path, case, args, check, failed, written):
    a = make_action(action_mod.ActionModule, dict(args, dest_dir=str(tmp_path / "reports")), check_mode=check)
    res = run_action(a)
    assert bool(res.get("failed")) == failed, case
    files = list((tmp_path / "reports").glob("demo-*.json")) if (tmp_path / "reports").exists() else []
    assert bool(files) == written, case
    if written:
        assert json.loads(files[0].read_text()) == REPORT and res["path"] == str(files[0])
        assert res["lines"] == REPORT["lines"] and res["changed"] is False
    assert not a.module_calls


def test_an_unwritable_report_dir_fails_naming_it(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    a = make_action(action_mod.ActionModule, {"report": REPORT, "app": "demo", "dest_dir": str(blocker / "sub")})
    res = run_action(a)
    assert res["failed"] and str(blocker / "sub") in res["msg"]


def mode(p):
    return stat.S_IMODE(os.lstat(p).st_mode)


def test_the_report_dir_and_reports_are_private_to_the_controller_user(tmp_path):
    dest = tmp_path / "cache" / "reports"
    res = run_action(make_action(action_mod.ActionModule, {"report": REPORT, "app": "demo", "dest_dir": str(dest)}))
    assert mode(dest) == mode(tmp_path / "cache") == 0o700 and mode(res["path"]) == 0o600
    os.chmod(dest, 0o755)                    # as an older collection left it
    res = run_action(make_action(action_mod.ActionModule, {"report": REPORT, "app": "demo", "dest_dir": str(dest)}))
    assert mode(dest) == 0o700 and mode(res["path"]) == 0o600 and res["changed"] is False


def test_a_report_dir_that_holds_other_things_keeps_its_mode(tmp_path):
    """hotswap_report_dir set to a directory of other things (~, /tmp): only the report is private."""
    (tmp_path / "notes.txt").write_text("mine")
    os.chmod(tmp_path, 0o755)
    res = run_action(make_action(action_mod.ActionModule, {"report": REPORT, "app": "demo", "dest_dir": str(tmp_path)}))
    assert mode(tmp_path) == 0o755 and mode(res["path"]) == 0o600
