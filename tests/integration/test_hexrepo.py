"""The tests' local Hex repository (hotswap_testlib.hexrepo) works with a real Mix and Hex 2.5.1.

Built once per run from shared/thirdparty, served on 127.0.0.1, used through a user's Hex home set up as
for any mirror (``mix hex.repo set hexpm --url ... --public-key ...``): a small project resolves
``{:jason, "~> 1.4"}`` and ``{:plug, "~> 1.16"}`` into a mix.lock and compiles with MIX_ENV=prod, then
takes the older jason its edited mix.lock pins; the Erlang libraries (cowboy, cowlib, ranch,
cowboy_telemetry) build on a consumer through their mix.exs; rebuilt packages have the same checksums;
and what ``mix deps.get`` says without Hex, with the repository down and an empty cache, and with it
down but the packages cached.

Every Mix command runs with HOME set to an empty directory, which must stay empty (nothing in ~/.mix or
~/.hex).  Run: .venv/bin/pytest tests/integration/test_hexrepo.py -q
"""
from __future__ import annotations

import re
import shutil
import socket
import subprocess
import tarfile
import tempfile
import textwrap
from pathlib import Path

import pytest

from hotswap_testlib import hexrepo
from hotswap_testlib.requirements import require

pytestmark = pytest.mark.integration

PROJECT_MIX_EXS = """\
defmodule Demo.MixProject do
  use Mix.Project

  def project do
    [app: :demo, version: "0.1.0", elixir: "~> 1.14", deps: deps()]
  end

  def application, do: [extra_applications: [:logger]]

  defp deps do
    [%s]
  end
end
"""
DEMO_EX = """\
defmodule Demo do
  def hello, do: Jason.encode!(%{hello: Plug.Conn.Query.decode("a=1")})
end
"""


@pytest.fixture(scope="session")
def hex_repo(tmp_path_factory) -> hexrepo.Repo:
    """The archive and repository, built once for the whole run."""
    require("mix", "elixir", "erl")
    repo = hexrepo.session_repo(tmp_path_factory)
    print("hexrepo build seconds:", {k: round(v, 1) for k, v in repo.seconds.items()})
    return repo


@pytest.fixture
def home(tmp_path) -> Path:
    """An empty HOME for every Mix command of the test; it must still be empty at the end."""
    h = tmp_path / "home"
    h.mkdir()
    yield h
    assert sorted(p.name for p in h.iterdir()) == [], "a Mix/Hex command wrote into HOME"


def _mix(cwd: Path, env: dict[str, str], *args: str, prod: bool = False,
         extra: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    e = {**env, **(extra or {})}
    if prod:
        e["MIX_ENV"] = "prod"
    return subprocess.run(["mix", *args], cwd=cwd, env=e, stdin=subprocess.DEVNULL, capture_output=True,
                          text=True, timeout=600, check=False)


def _ok(p: subprocess.CompletedProcess[str]) -> str:
    assert p.returncode == 0, f"{' '.join(p.args)} exited {p.returncode}\n{p.stdout}{p.stderr}"
    return p.stdout + p.stderr


def _project(root: Path, deps: str, lock: str | None = None) -> Path:
    root.mkdir(parents=True)
    (root / "lib").mkdir()
    (root / "mix.exs").write_text(PROJECT_MIX_EXS % deps)
    (root / "lib" / "demo.ex").write_text(DEMO_EX)
    if lock is not None:
        (root / "mix.lock").write_text(lock)
    return root


def _user(tmp_path: Path, home: Path, url: str, repo: hexrepo.Repo, name: str = "user") -> dict[str, str]:
    homes = hexrepo.configure_build_user(tmp_path / name / "mix", tmp_path / name / "hex", url, repo)
    return hexrepo.mix_env(homes["MIX_HOME"], homes["HEX_HOME"], {"HOME": str(home)})


def _lock_entry(lock: str, name: str) -> re.Match[str]:
    m = re.search(rf'^  "{name}": \{{:hex, :{name}, "([^"]+)", "([0-9a-f]+)", \[[^\]]*\], .*, "hexpm", '
                  rf'"([0-9a-f]+)"\}},$', lock, re.M)
    assert m, f"no Hex entry for {name} in mix.lock:\n{lock}"
    return m


def _app_vsn(project: Path, app: str, env: str = "prod") -> str:
    text = (project / "_build" / env / "lib" / app / "ebin" / f"{app}.app").read_text()
    return re.search(r'\{vsn,\s*"([^"]+)"\}', text).group(1)


def _closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def test_every_library_is_a_package(hex_repo):
    libs = hexrepo.library_dirs()
    assert [f"{n}-{v}" for n, v in hex_repo.packages] == [d.name for d in libs]
    for n, v in hex_repo.packages:
        assert hex_repo.tarball(n, v).is_file()
        assert len(hex_repo.checksums[(n, v)][1]) == 64
    for f in ("names", "versions", "public_key", "installs/hex-1.x.csv", "packages/cowboy"):
        assert (hex_repo.public_dir / f).is_file(), f
    assert "BEGIN RSA PUBLIC KEY" in hex_repo.public_key_path.read_text()
    # the shims now require the Hex packages cowboy pins, and are built with Mix
    for cowboy, cowlib, ranch in (("2.12.0", "2.13.0", "1.8.0"), ("2.17.0", "2.18.0", "1.8.1")):
        with tarfile.open(hex_repo.tarball("cowboy", cowboy)) as tar:
            meta = tar.extractfile("metadata.config").read().decode()
        flat = re.sub(r"\s+", "", meta)
        assert f'{{<<"name">>,<<"cowlib">>}},{{<<"optional">>,false}},{{<<"repository">>,<<"hexpm">>}},' \
               f'{{<<"requirement">>,<<"{cowlib}">>}}' in flat
        assert f'{{<<"requirement">>,<<"{ranch}">>}}' in flat
        assert '{<<"build_tools">>,[<<"mix">>]}' in flat and '<<"ebin/cowboy.app">>' in flat
    # only optional dependencies may be missing; jason's decimal is one
    assert "decimal" in hex_repo.stubs and set(hex_repo.stubs["decimal"]) >= {"jason-1.4.5"}
    assert not (hexrepo.THIRDPARTY / "cowboy-2.17.0" / hexrepo.BUILD_EXS).exists()


def test_packages_are_reproducible(hex_repo, tmp_path):
    """Packing again, in another directory and on tmpfs (another readdir order), gives the same bytes."""
    mix_home, hex_home = tmp_path / "mix", tmp_path / "hex"
    hexrepo.install_archive(hex_repo.archive, mix_home, hex_home)
    places = [tmp_path / "again"]
    shm = Path("/dev/shm")
    scratch = None
    if shm.is_dir() and shm.stat().st_dev != tmp_path.stat().st_dev:
        scratch = Path(tempfile.mkdtemp(prefix="hexrepo-", dir=shm))
        places.append(scratch)
    try:
        for place in places:
            for lib in ("jason-1.4.5", "phoenix-1.7.24", "cowboy-2.17.0", "telemetry-1.3.0"):
                out = place / f"{lib}.tar"
                hexrepo.pack_library(hexrepo.THIRDPARTY / lib, place / lib, out, mix_home, hex_home)
                name, vsn = lib.split("-", 1)
                assert hexrepo.tarball_checksums(out) == hex_repo.checksums[(name, vsn)], (place, lib)
                assert out.read_bytes() == hex_repo.tarball(name, vsn).read_bytes()
    finally:
        if scratch is not None:
            shutil.rmtree(scratch)


def test_deps_get_compile_and_locked_version(hex_repo, tmp_path, home):
    log: list[str] = []
    url, stop = hexrepo.serve(hex_repo, "127.0.0.1", 0, log=log)
    try:
        assert url.startswith("http://127.0.0.1:")
        env = _user(tmp_path, home, url, hex_repo)
        app = _project(tmp_path / "app", '{:jason, "~> 1.4"}, {:plug, "~> 1.16"}')

        out = _ok(_mix(app, env, "deps.get"))
        assert "Failed" not in out, out          # no update-check 404, no missing optional record
        lock = (app / "mix.lock").read_text()
        for name, vsn in (("jason", "1.4.5"), ("plug", "1.19.2"), ("plug_crypto", "2.1.1"), ("mime", "2.0.7"),
                          ("telemetry", "1.4.1")):
            m = _lock_entry(lock, name)
            assert m.group(1) == vsn
            assert (m.group(2), m.group(3)) == hex_repo.checksums[(name, vsn)], name
        assert "/tarballs/jason-1.4.5.tar" in log and "/packages/plug" in log

        _ok(_mix(app, env, "compile", prod=True))
        assert _app_vsn(app, "jason") == "1.4.5" and _app_vsn(app, "plug") == "1.19.2"
        assert _app_vsn(app, "telemetry") == "1.4.1"        # an Erlang package, built by its mix.exs
        out = _ok(_mix(app, env, "run", "--no-compile", "-e",
                       'IO.puts("vsn=#{Application.spec(:jason, :vsn)} " <> Demo.hello())', prod=True))
        assert 'vsn=1.4.5 {"hello":{"a":"1"}}' in out

        # the lock entry Hex writes for jason 1.4.1 (from a project that asks for exactly that) ...
        pin = _project(tmp_path / "pin", '{:jason, "1.4.1"}')
        _ok(_mix(pin, env, "deps.get"))
        old = _lock_entry((pin / "mix.lock").read_text(), "jason")
        assert old.group(1) == "1.4.1" and (old.group(2), old.group(3)) == hex_repo.checksums[("jason", "1.4.1")]
        # ... pasted into the app's mix.lock: deps.get and compile take the locked version
        (app / "mix.lock").write_text(lock.replace(_lock_entry(lock, "jason").group(0), old.group(0)))
        out = _ok(_mix(app, env, "deps.get"))
        assert "jason 1.4.1" in out, out
        assert '<<"1.4.1">>' in (app / "deps" / "jason" / "hex_metadata.config").read_text()
        _ok(_mix(app, env, "compile", prod=True))
        assert _app_vsn(app, "jason") == "1.4.1"
        assert _lock_entry((app / "mix.lock").read_text(), "jason").group(1) == "1.4.1"
        out = _ok(_mix(app, env, "run", "--no-compile", "-e",
                       'IO.puts("vsn=#{Application.spec(:jason, :vsn)} " <> Demo.hello())', prod=True))
        assert 'vsn=1.4.1 {"hello":{"a":"1"}}' in out
    finally:
        stop()


def test_erlang_packages_build_on_a_consumer(hex_repo, tmp_path, home):
    """plug_cowboy pulls cowboy, cowlib, ranch and cowboy_telemetry: Mix compiles their src/ through the
    (shim) mix.exs shipped in the package, with cowlib's include/ on the path; no rebar3."""
    url, stop = hexrepo.serve(hex_repo, "127.0.0.1", 0)
    try:
        env = _user(tmp_path, home, url, hex_repo)
        env["MIX_REBAR3"] = "/nonexistent/rebar3"     # were rebar3 asked for, the build would fail
        app = _project(tmp_path / "app", '{:jason, "~> 1.4"}, {:plug_cowboy, "~> 2.7"}')
        _ok(_mix(app, env, "deps.get"))
        lock = (app / "mix.lock").read_text()
        for name, vsn in (("cowboy", "2.17.0"), ("cowlib", "2.18.0"), ("ranch", "1.8.1"),
                          ("cowboy_telemetry", "0.4.0"), ("plug_cowboy", "2.7.5")):
            m = _lock_entry(lock, name)
            assert m.group(1) == vsn and f'"{vsn}", "{m.group(2)}", [:mix],' in m.group(0), m.group(0)
        _ok(_mix(app, env, "compile", prod=True))
        out = _ok(_mix(app, env, "run", "--no-compile", "-e", textwrap.dedent("""\
            {:ok, _} = Application.ensure_all_started(:plug_cowboy)
            IO.puts("cowboy=#{Application.spec(:cowboy, :vsn)} ranch=#{Application.spec(:ranch, :vsn)}")
        """), prod=True))
        assert "cowboy=2.17.0 ranch=1.8.1" in out
    finally:
        stop()


def test_what_deps_get_says_without_hex_or_repository(hex_repo, tmp_path, home):
    """(a) Hex not installed, (b) repository refusing connections with an empty Hex cache, (c) the same
    with the packages cached in HEX_HOME (and with HEX_OFFLINE=1)."""
    url, stop = hexrepo.serve(hex_repo, "127.0.0.1", 0)
    try:
        env = _user(tmp_path, home, url, hex_repo)
        first = _project(tmp_path / "first", '{:jason, "~> 1.4"}, {:plug, "~> 1.16"}')
        _ok(_mix(first, env, "deps.get"))
    finally:
        stop()
    lock = (first / "mix.lock").read_text()

    # (a) no Hex archive in MIX_HOME, a mix.lock with Hex packages
    bare = hexrepo.mix_env(tmp_path / "bare" / "mix", tmp_path / "bare" / "hex", {"HOME": str(home)})
    p = _mix(_project(tmp_path / "a", '{:jason, "~> 1.4"}, {:plug, "~> 1.16"}', lock), bare, "deps.get")
    assert p.returncode == 1
    assert "Could not find Hex, which is needed to build dependency :jason" in p.stdout
    assert "** (Mix) Could not find an SCM for dependency :jason from Demo.MixProject" in p.stderr

    # (b) connection refused, nothing cached
    refused = _user(tmp_path, home, f"http://127.0.0.1:{_closed_port()}", hex_repo, name="refused")
    b = _project(tmp_path / "b", '{:jason, "~> 1.4"}, {:plug, "~> 1.16"}', lock)
    p = _mix(b, refused, "deps.get")
    assert p.returncode == 1
    assert ":econnrefused}]}" in p.stdout and "{:failed_connect, [{:to_address, {'127.0.0.1', " in p.stdout
    assert re.search(r"Failed to fetch record for \w+ from registry \(using cache instead\)", p.stderr)
    assert re.search(r"\*\* \(Mix\) Unknown package \w+ in lockfile", p.stderr), p.stderr
    p = _mix(b, refused, "deps.get", extra={"HEX_OFFLINE": "1"})
    assert p.returncode == 1
    assert re.search(r"\*\* \(Mix\) Hex is running in offline mode and the registry entry for package \w+ "
                     r"is not cached locally", p.stderr), p.stderr
    (b / "mix.lock").unlink()
    p = _mix(b, refused, "deps.get")
    assert p.returncode == 1
    assert re.search(r"\*\* \(Mix\) No package with name \w+ \(from: mix.exs\) in registry", p.stderr), p.stderr

    # (c) the same URL, now refusing, with registry and tarballs cached in HEX_HOME: works, says why
    c = _project(tmp_path / "c", '{:jason, "~> 1.4"}, {:plug, "~> 1.16"}', lock)
    p = _mix(c, env, "deps.get")
    out = _ok(p)
    assert ":econnrefused}]}" in p.stdout
    assert "Failed to fetch record for jason from registry (using cache instead)" in p.stderr
    assert (c / "deps" / "jason" / "hex_metadata.config").is_file()
    shutil.rmtree(c / "deps")
    out = _ok(_mix(c, env, "deps.get", extra={"HEX_OFFLINE": "1"}))
    assert "Failed" not in out and "econnrefused" not in out, out
    _ok(_mix(c, env, "compile", prod=True, extra={"HEX_OFFLINE": "1"}))
    assert _app_vsn(c, "jason") == "1.4.5"
