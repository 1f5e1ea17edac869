"""pytest plugin: the suite never skips.

A skipped test hides a missing install step, so any skip (``pytest.skip``, ``skipif``, an
``importorskip``) is reported as a failure naming the reason.  Deselecting with ``-m``/``-k`` is
not a skip and is unaffected.  Tests that need a tool call ``hotswap_testlib.requirements.require``.
"""
from __future__ import annotations

import pytest


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = (f"{item.nodeid}: skipped tests are not allowed in this suite ({reason}); "
                           "install what is missing with `make setup`")
