"""The build's dependency rules: the build user's Hex, hotswap_build_env, mix.lock keyed dependency dirs,
clear messages for a missing Hex or an unreachable repository, a lock that mix.exs does not match."""
import os

import pytest

from ansible_collections.beam.hotswap.plugins.module_utils import _build, _deps

LOCK = b'''%{
  "jason": {:hex, :jason, "1.4.1", "af1504e3", [:mix], [{:decimal, "~> 1.0 or ~> 2.0", [hex: :decimal, repo: "hexpm", optional: true]}], "hexpm", "fbb01ecd"},
  "mylib": {:path, "../mylib"},
  "plug": {:hex, :plug, "1.16.1", "40c74619", [:mix], [], "hexpm", "a13ff6b9"},
}
'''


def test_env_is_checked_and_stringified():
    assert _deps.check_env({"HEX_MIRROR": "http://m", "HEX_HTTP_TIMEOUT": 5, "X": True}) == \
        {"HEX_MIRROR": "http://m", "HEX_HTTP_TIMEOUT": "5", "X": "true"}
    assert _deps.check_env(None) == {}


@pytest.mark.parametrize("env, needle", [
    ({"MIX_ENV": "dev"}, "MIX_ENV is set by the build"),
    ({"MIX_DEPS_PATH": "/x"}, "MIX_DEPS_PATH is set by the build"),
    ({"BAD-NAME": "1"}, "not an environment variable name"),
    ({"A": {"b": 1}}, "A must be a string"),
    ({"A": "x\ny"}, "NUL or newline"),
    (["HEX_MIRROR"], "must be a mapping"),
])
def test_bad_env_is_refused_naming_the_entry(env, needle):
    with pytest.raises(_deps.DepsError, match=needle):
        _deps.check_env(env)


def test_builder_refuses_bad_env_as_a_build_error(tmp_path):
    with pytest.raises(_build.BuildError, match="MIX_ENV"):
        _build.Builder(lambda *a, **k: (0, "", ""), str(tmp_path), "app", env={"MIX_ENV": "dev"})


def test_hex_is_found_in_the_build_users_mix_home_or_the_given_one(tmp_path):
    home = tmp_path / "home"
    (home / ".mix" / "archives" / "hex-2.5.1").mkdir(parents=True)
    assert _deps.hex_installed({}, {"HOME": str(home)}) == "hex-2.5.1"
    assert _deps.hex_installed({"MIX_HOME": str(tmp_path / "other")}, {"HOME": str(home)}) is None
    (tmp_path / "arch" / "hex-2.6.0").mkdir(parents=True)
    assert _deps.hex_installed({"MIX_ARCHIVES": str(tmp_path / "arch")}, {"HOME": str(home)}) == "hex-2.6.0"


def test_lock_parsing_and_drift():
    assert _deps.hex_deps(LOCK) == ["jason", "plug"]
    after = LOCK.replace(b'"1.16.1"', b'"1.19.2"')
    assert _deps.lock_drift(LOCK, after) == ["plug"]
    assert _deps.lock_drift(LOCK, LOCK + b"\n") == []
    assert _deps.hex_deps(None) == []


def test_deps_dirs_are_keyed_on_the_lock_and_only_the_last_few_kept(tmp_path):
    a = _deps.deps_dir(str(tmp_path), LOCK)
    assert _deps.deps_dir(str(tmp_path), LOCK) == a
    b = _deps.deps_dir(str(tmp_path), LOCK + b" ")
    assert a != b and os.path.isdir(a) and os.path.isdir(b)
    assert _deps.deps_dir(str(tmp_path), None).endswith("no-lock")
    for i in range(4):
        _deps.deps_dir(str(tmp_path), b"%d" % i)
    assert len(os.listdir(tmp_path / "deps")) == _deps.KEEP_DEPS_DIRS


@pytest.mark.parametrize("out, needle", [
    ("** (Mix) Could not find Hex, which is needed to build dependency :jason", "Hex is not installed"),
    ("** (Mix) Could not find an SCM for dependency :plug from Phoenix.MixProject", "Hex is not installed"),
    ("{:failed_connect, [{:to_address, {'127.0.0.1', 9}}, {:inet, [:inet], :econnrefused}]}\nFailed to fetch "
     "record for jason from registry (using cache instead)\n** (Mix) Unknown package jason in lockfile",
     "could not fetch the project's Hex dependencies"),
    ("** (Mix) Unknown package secret_lib in lockfile", "has no package secret_lib"),
    ("** (Mix) Registry checksum mismatch against lock (jason 1.4.1)", "jason 1.4.1 with other content"),
])
def test_failures_are_explained(out, needle):
    msg = _deps.explain_failure(out, LOCK)
    assert needle in msg


def test_a_plain_compile_error_is_not_explained_as_a_hex_problem():
    assert _deps.explain_failure("== Compilation error in file lib/a.ex ==\n** (CompileError) undefined", LOCK) is None


class _FakeMix(object):
    """Runs nothing; records argv; deps.get rewrites mix.lock when told to."""

    def __init__(self, rewrite=None):
        self.calls = []
        self.rewrite = rewrite

    def __call__(self, argv, cwd=None, env=None):
        self.calls.append((argv, env))
        if argv[1:2] == ["deps.get"] and self.rewrite is not None:
            with open(os.path.join(cwd, "mix.lock"), "wb") as f:
                f.write(self.rewrite)
        return 0, "", ""


def _builder(tmp_path, run, **kw):
    return _build.Builder(run, str(tmp_path / "store"), "app", **kw)


def test_missing_hex_fails_before_mix_runs_naming_what_to_do(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "mix.lock").write_bytes(LOCK)
    run = _FakeMix()
    b = _builder(tmp_path, run, env={"MIX_HOME": str(tmp_path / "nomix")})
    with pytest.raises(_build.BuildError, match=r"Hex dependencies \(jason, plug\) but Hex is not installed.*mix "
                                                r"local.hex.*hotswap_hex_archive"):
        b.fetch_deps(str(src), b.mix_env(LOCK), LOCK)
    assert run.calls == []


def test_a_given_hex_archive_is_installed_when_hex_is_missing(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "mix.lock").write_bytes(LOCK)
    mixhome = tmp_path / "mixhome"

    def run(argv, cwd=None, env=None):
        if argv[1] == "archive.install":
            (mixhome / "archives" / "hex-2.5.1").mkdir(parents=True)
        return 0, "", ""
    b = _builder(tmp_path, run, env={"MIX_HOME": str(mixhome)}, hex_archive="/tmp/x/hex-2.5.1.ez")
    b.fetch_deps(str(src), b.mix_env(LOCK), LOCK)
    assert b.hex_installed == "hex-2.5.1"


def test_a_lock_that_mix_rewrites_fails_the_build_naming_the_entries(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "mix.lock").write_bytes(LOCK)
    (tmp_path / "m" / "archives" / "hex-2.5.1").mkdir(parents=True)
    run = _FakeMix(rewrite=LOCK.replace(b'"1.4.1"', b'"1.4.5"'))
    b = _builder(tmp_path, run, env={"MIX_HOME": str(tmp_path / "m")})
    with pytest.raises(_build.BuildError, match=r"mix.lock does not match mix.exs.*entry \(jason\).*commit"):
        b.fetch_deps(str(src), b.mix_env(LOCK), LOCK)


def test_mix_runs_with_the_users_env_and_a_lock_keyed_deps_dir(tmp_path):
    b = _builder(tmp_path, _FakeMix(), env={"HEX_MIRROR": "http://mirror"})
    env = b.mix_env(LOCK)
    assert env["HEX_MIRROR"] == "http://mirror" and env["MIX_ENV"] == "prod"
    assert "HEX_OFFLINE" not in env and "MIX_HOME" not in env
    assert env["MIX_DEPS_PATH"] != b.mix_env(LOCK.replace(b"1.4.1", b"1.4.5"))["MIX_DEPS_PATH"]
