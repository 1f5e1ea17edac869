"""The app of tests/fixtures/shipped_appup_app: a Mix app (shipapp) with an Erlang path dependency (mylib, built by
rebar3 as Hex packages of Erlang libraries are) that ships its own ``ebin/mylib.appup``, written the way library
authors write them: a regex from-version, ``apply`` steps that stop and restart its worker around the load, and an
older term left below the first.

``base/`` is shipapp 1.0.0 with mylib 1.0.1; ``versions/VSN/`` holds the files that change in VSN, applied in order
along CHAIN: 1.1.0 brings mylib 1.1.0 (its appup covers every 1.0.x), 1.2.0 brings mylib 2.0.0 (its appup covers only
2.0.0 release candidates).  The app answers a line protocol: PING, VSN, LIB (mylib's code version, its count, how
many times its appup restarted it) and BUMP.
"""
from __future__ import annotations

import re
from pathlib import Path

from .fixture_tree import overlay

SRC = Path(__file__).resolve().parent.parent / "fixtures" / "shipped_appup_app"
CHAIN = ("1.0.0", "1.1.0", "1.2.0")
LIB = {"1.0.0": "1.0.1", "1.1.0": "1.1.0", "1.2.0": "2.0.0"}
# Mix builds a `manager: :rebar3` dependency with this rebar3 (hotswap_build_env on the build host)
BUILD_ENV = {"MIX_REBAR3": "/usr/bin/rebar3"}


def materialise(dest, version: str) -> Path:
    """Write version ``version`` of the app to ``dest`` (a fresh directory)."""
    dest = overlay(SRC, CHAIN, version, dest, "shipapp")
    mix = dest / "mix.exs"
    mix.write_text(re.sub(r'@version "[^"]*"', f'@version "{version}"', mix.read_text()))
    return dest
