"""The report action writes the rollout report as JSON on the controller, and nothing in check mode."""
import json

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
