"""pytest plugin: one closing line counting the faults survived and the bad inputs rejected.

    reliability: N faults survived, M bad inputs rejected

N counts the tests marked ``fault`` that PASSED, M those marked ``bad_input`` (a parametrized test
counts once per case).  Printed from ``pytest_terminal_summary``, i.e. before pytest's own closing
line (``== 3 passed in 1.2s ==``), which it leaves alone.
"""
from __future__ import annotations

MARKERS = ("fault", "bad_input")

_counts = {m: 0 for m in MARKERS}


def pytest_sessionstart(session):
    for m in MARKERS:
        _counts[m] = 0


def pytest_runtest_logreport(report):
    # a test PASSED when its call phase passed (an xfail that passed unexpectedly is not counted
    # when strict; an error in setup/teardown has no passing call phase or is reported separately)
    if report.when != "call" or not report.passed or hasattr(report, "wasxfail"):
        return
    for m in MARKERS:
        if m in report.keywords:
            _counts[m] += 1


def pytest_terminal_summary(terminalreporter):
    terminalreporter.write_line("reliability: %d faults survived, %d bad inputs rejected"
                                % (_counts["fault"], _counts["bad_input"]))
