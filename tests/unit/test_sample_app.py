"""The sample app fixture: builds, runs locally, speaks its protocol, and its stable
modules compile to the same code in every version (only the modules meant to change do)."""
from __future__ import annotations

import time

import pytest

from hotswap_testlib import sample
from hotswap_testlib.requirements import require


@pytest.fixture(autouse=True)
def _elixir_and_erlang():
    require("mix", "erl")


STABLE = ["Elixir.Sample.Application", "Elixir.Sample.Listener", "Elixir.Sample.Conn",
          "Elixir.Sample.Ticker", "Elixir.Sample.Features", "Elixir.Sample.Render",
          "Elixir.Sample.Render.Map"]


def test_v1_runs_and_speaks_the_protocol(sample_builds):
    rel = sample_builds.get("1.0.0")
    port = sample.free_port()
    node = sample.start_local(rel, port, env={"SAMPLE_GREETING": "hi-from-test"})
    try:
        assert node.os_pid and node.os_pid > 1
        with node.client() as c:
            assert c.ping() == "PONG"
            assert [c.add(n) for n in (1, 2, 3)] == ["OK 1", "OK 3", "OK 6"]
            assert c.get() == 6
            assert c.state() == "tuple 6 3"
            assert c.vsn() == "1.0.0"
            assert c.code() == "v1"
            assert c.config() == "hi-from-test"  # from config/runtime.exs at boot
            assert c.audit() == "ERR unknown"
            assert c.render() == "ERR unknown"
            assert c.cmd("NOPE") == "ERR unknown"
            assert 0 <= c.gap() < 5_000_000
        load = sample.LoadClient("127.0.0.1", port, interval=0).start()
        time.sleep(0.3)
        res = load.stop()
        assert res["acked"] > 0 and res["failed"] == 0, res
        with node.client() as c:
            assert c.get() == 6 + res["acked"]
    finally:
        sample.stop(node)
    assert not sample._alive(node.os_pid)


def test_stable_modules_compile_identically(sample_builds):
    v1, v2, v3 = (sample.ebin_dir(sample_builds.get(v), v) for v in ("1.0.0", "2.0.0", "3.0.0"))
    md5 = {v: sample.beam_md5s(e) for v, e in (("1", v1), ("2", v2), ("3", v3))}
    dig = {v: sample.code_digests(e) for v, e in (("1", v1), ("2", v2), ("3", v3))}
    for table in (md5, dig):
        for mod in STABLE:
            assert table["1"][mod] == table["2"][mod] == table["3"][mod], mod
        # the modules meant to change
        assert table["1"]["Elixir.Sample.Counter"] != table["2"]["Elixir.Sample.Counter"]
        assert table["2"]["Elixir.Sample.Counter"] != table["3"]["Elixir.Sample.Counter"]
        assert table["1"]["Elixir.Sample.Sup"] != table["2"]["Elixir.Sample.Sup"]
        assert table["2"]["Elixir.Sample.Sup"] == table["3"]["Elixir.Sample.Sup"]
        assert table["2"]["Elixir.Sample.Audit"] == table["3"]["Elixir.Sample.Audit"]
    assert "Elixir.Sample.Audit" not in md5["1"]
    assert "Elixir.Sample.Render.Tuple" not in md5["2"] and "Elixir.Sample.Render.Tuple" in md5["3"]
    assert sorted(md5["2"]) == sorted(dig["2"])


def test_flags_change_only_what_they_should(sample_builds):
    base = sample_builds.get("1.0.0")
    fl = sample_builds.get("1.0.0", ["vmargs", "raise_code_change"])
    a, b = sample.beam_md5s(sample.ebin_dir(base, "1.0.0")), sample.beam_md5s(sample.ebin_dir(fl, "1.0.0"))
    assert {m for m in a if a[m] != b.get(m)} == {"Elixir.Sample.Counter"}
    assert "+sbwt none" not in (base / "releases/1.0.0/vm.args").read_text()
    assert "+sbwt none" in (fl / "releases/1.0.0/vm.args").read_text()
