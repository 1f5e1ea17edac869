"""The Erlang test app, tests/fixtures/erlang_app (kv_web): a rebar3/relx project using Cowboy, Cowlib and
Ranch from shared/thirdparty, put into ``_checkouts/`` as rebar3 takes local dependencies offline.

``base/`` is version 1.0.0; ``versions/VSN/`` holds the files that change in VSN, applied in order along CHAIN.
"""
from __future__ import annotations

import http.client as httpc
import re
import shutil
from pathlib import Path

from .fixture_tree import overlay
from .hexrepo import THIRDPARTY

SRC = Path(__file__).resolve().parent.parent / "fixtures" / "erlang_app"
CHAIN = ("1.0.0", "1.1.0")
LIBS = {
    "1.0.0": {"cowboy": "2.12.0", "cowlib": "2.13.0", "ranch": "1.8.0"},
    "1.1.0": {"cowboy": "2.17.0", "cowlib": "2.18.0", "ranch": "1.8.1"},
}
APP = "kv_web"
COOKIE = "kv_web_fixture_cookie_5f3a"


def materialise(dest, version: str, port: int | None = None) -> Path:
    """Write version ``version`` of kv_web to ``dest`` (replaced), its libraries in ``_checkouts/``."""
    dest = overlay(SRC, CHAIN, version, dest, "kv_web")
    for name in ("rebar.config", "src/kv_web.app.src"):
        p = dest / name
        text = p.read_text()
        text = re.sub(r'\{kv_web, "[^"]*"\}', '{kv_web, "%s"}' % version, text)
        text = re.sub(r'\{vsn, "[^"]*"\}', '{vsn, "%s"}' % version, text)
        p.write_text(text)
    if port is not None:
        cfg = dest / "config" / "sys.config"
        cfg.write_text(re.sub(r"\{port, \d+\}", "{port, %d}" % port, cfg.read_text()))
    for name, vsn in LIBS[version].items():
        lib = THIRDPARTY / f"{name}-{vsn}"
        out = dest / "_checkouts" / name
        for part in ("src", "include", "ebin"):
            if (lib / part).is_dir():
                shutil.copytree(lib / part, out / part)
        if (lib / "rebar.config").is_file():
            shutil.copy(lib / "rebar.config", out / "rebar.config")
        elif name == "cowboy":
            (out / "rebar.config").write_text("{deps, [cowlib, ranch]}.\n")
    return dest


def http(host: str, port: int, method: str, path: str, body: bytes | None = None, conn=None, timeout: float = 5.0):
    """(status, headers dict, body bytes); ``conn`` reuses a keep-alive connection."""
    c = conn or httpc.HTTPConnection(host, port, timeout=timeout)
    c.request(method, path, body=body)
    r = c.getresponse()
    data = r.read()
    if conn is None:
        c.close()
    return r.status, {k.lower(): v for k, v in r.getheaders()}, data
