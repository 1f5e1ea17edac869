"""pytest plugin: session-scoped builds of the sample app (``sample_builds.get(version, flags)``)."""
from __future__ import annotations

import threading

import pytest

from hotswap_testlib import sample


class SampleBuilds:
    """Build each (version, flags) once per session; ``get`` returns the release dir."""

    def __init__(self, workdir):
        self.workdir = workdir
        self._cache = {}
        self._lock = threading.Lock()

    def get(self, version: str, flags=()):
        key = (version, sample._norm_flags(flags))
        with self._lock:
            if key not in self._cache:
                self._cache[key] = sample.build_release(version, key[1], workdir=self.workdir)
            return self._cache[key]

    def project(self, version: str, flags=()):
        """The mix project dir the release was built in (builds if needed)."""
        self.get(version, flags)
        return sample.project_dir(version, flags, self.workdir)


@pytest.fixture(scope="session")
def sample_builds(tmp_path_factory):
    return SampleBuilds(tmp_path_factory.mktemp("sample_builds"))
