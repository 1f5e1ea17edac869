"""The agent's errors and their exit codes: BadInput and PackageRefused exit 2 (nothing changed),
OpFailed exits 1 (the operation failed; its extra fields go into the JSON result).
"""

import time


class BadInput(Exception):
    """exit 2"""


class PackageRefused(BadInput):
    """A package that is malformed or unsafe (entries escaping the root, another app, a bad .rel):
    refused before anything is written (exit 2)."""

    def __init__(self, msg, **extra):
        super().__init__(msg)
        self.msg = msg
        self.extra = extra


class OpFailed(Exception):
    """exit 1; extra goes into the JSON result"""

    def __init__(self, msg, **extra):
        super().__init__(msg)
        self.msg = msg
        self.extra = extra


def now_ms():
    return time.monotonic() * 1000.0
