"""A local Hex repository for the tests, built from shared/thirdparty (hex.pm is unreachable here).

``build_hex_archive`` builds the Hex 2.5.1 client archive from ``hex-2.5.1/``; ``build_repo`` packs every
other library directory with ``mix hex.build`` and signs a registry over them with ``mix hex.registry
build`` (repository name ``hexpm``, a key made for the run); ``serve`` publishes it over HTTP on one
address; ``configure_build_user`` sets up a MIX_HOME/HEX_HOME the way a user points Hex at a mirror
(``mix archive.install`` + ``mix hex.repo set hexpm --url URL --public-key PEM``).  ``session_repo``
builds the archive and the repository once per pytest run.  Nothing is written into shared/thirdparty,
~/.mix or ~/.hex: every build runs on a scratch copy with its own MIX_HOME/HEX_HOME.

What the scratch copies change, and why (``Repo.changes`` lists them per library):

* Sibling path dependencies (cowboy's shim: ``{:cowlib, path: "../cowlib-2.18.0"}``) become the exact
  Hex requirement they stand for (``{:cowlib, "2.18.0"}``, the pin of cowboy's rebar.config).
* Libraries whose mix.exs has no ``package:`` (the four Erlang build shims cowboy, cowlib, ranch,
  cowboy_telemetry, and telemetry's upstream mix.exs) get ``description`` (from the application
  resource), ``licenses`` and ``links`` (MANIFEST.md), ``files`` (everything vendored: mix.exs, src/,
  include/, ebin/<app>.app, rebar.config, LICENSE/NOTICE; a shim reads ebin/<app>.app or
  src/<app>.app.src when Mix loads it) and ``build_tools: ["mix"]`` (Hex would guess ``["mix",
  "rebar3"]`` from rebar.config).  A consumer's mix.lock then says ``[:mix]`` and Mix compiles src/*.erl
  through that mix.exs into the consumer's _build, as with the path dependencies: no rebar3.
  Such a mix.exs gets a comment saying it was changed.
* Files a library's own ``files:`` names but the vendored copy left out (README, CHANGELOG,
  .formatter.exs, phoenix's priv/ and assets/js, phoenix_pubsub's test/shared, ...) would stop ``mix
  hex.build`` ("Missing files: ..."): they are created as placeholders, an empty directory or a
  one-line file saying it is one.
* ``mix hex.build`` loads a copy of mix.exs (``MIX_EXS=.hexrepo_build.exs``) whose ``project/0`` hands
  Hex the package's files as an explicit sorted list; the package ships the plain mix.exs.

The repository (``PUBLIC``: names, versions, packages/, tarballs/, public_key) also holds what a mirror
of hex.pm would: ``installs/hex-1.x.csv`` (Hex 2.5.1 is the newest; Hex's daily update check reads it,
else every ``mix deps.get`` says "Failed to check for new Hex version"), and a signed record with no
release for each optional dependency that no package here provides (decimal, phoenix_html,
phoenix_view; ``Repo.stubs``): Hex fetches the records of optional dependencies too, and without them
says "Failed to fetch record for decimal from registry" on every ``deps.get`` and, with
``HEX_OFFLINE=1``, stops: "the registry entry for package decimal is not cached locally".

Reproducibility: two builds of the same sources give byte-identical NAME-VSN.tar files, hence the same
inner and outer checksums (the ones mix.lock records), on any filesystem (checked: ext4 and tmpfs).  Hex makes the tar itself
reproducible (mtimes 2000-01-01, uid/gid 0, gzip without a timestamp) but takes the file modes from
disk and, for a directory in ``files``, lists it in readdir order, which differs between filesystems
(ext4 hash order with a per-filesystem seed, tmpfs order): plain ``mix hex.build`` of jason 1.4.5 gave
different checksums on ext4 and tmpfs.  Here modes are normalised (0644/0755) and the file list is
sorted (above), so only the sources, this module's edits and the Hex version change a checksum.  The
registry is signed with a key made per build; mix.lock holds no signature, so test apps may track
mix.lock files.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import glob
import hashlib
import http.server
import os
import re
import shutil
import subprocess
import tarfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping

THIRDPARTY = Path("/work/shared/thirdparty")
HEX_VSN = "2.5.1"
REPO_NAME = "hexpm"
JOBS = 2  # mix hex.build calls at a time (2 cores)
_TIMEOUT = 600

__all__ = [
    "THIRDPARTY", "HEX_VSN", "REPO_NAME", "HexRepoError", "Repo", "mix_env", "build_hex_archive",
    "install_archive", "library_dirs", "prepare_library", "pack_library", "tarball_checksums", "build_repo",
    "serve", "configure_build_user", "session_repo",
]


class HexRepoError(RuntimeError):
    """A step of building or configuring the repository failed; the message holds the command's output."""


@dataclass(frozen=True)
class Repo:
    """A built repository: serve ``public_dir`` (``names``, ``versions``, ``packages/``, ``tarballs/``)."""

    public_dir: Path
    public_key_path: Path          # PEM, written by `mix hex.registry build` (PUBLIC/public_key)
    archive: Path                  # the Hex client archive, hex-2.5.1.ez
    packages: tuple[tuple[str, str], ...]          # (name, vsn), sorted
    checksums: Mapping[tuple[str, str], tuple[str, str]] = field(default_factory=dict)
    """(name, vsn) -> (inner, outer) sha256, lower-case hex, as mix.lock writes them."""
    stubs: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    """optional dependency no package provides -> the NAME-VSN naming it (served as a record with no release)."""
    changes: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    """library dir name -> what the scratch copy changed (see the module docstring)."""
    seconds: Mapping[str, float] = field(default_factory=dict)
    """wall time of the steps: "archive", "packages", "registry", "total"."""

    def tarball(self, name: str, vsn: str) -> Path:
        """The package file for ``name`` ``vsn``."""
        return self.public_dir / "tarballs" / f"{name}-{vsn}.tar"

    def versions(self, name: str) -> list[str]:
        """The versions of ``name`` in the repository (sorted by directory name)."""
        return [v for n, v in self.packages if n == name]


# --- processes -----------------------------------------------------------------------------------

def mix_env(mix_home: os.PathLike | str, hex_home: os.PathLike | str,
            extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The inherited environment without any MIX_*/HEX_* variable, with LANG=C.UTF-8 and the given homes."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MIX_", "HEX_"))}
    env.update(LANG="C.UTF-8", MIX_HOME=str(mix_home), HEX_HOME=str(hex_home))
    env.update(extra or {})
    return env


def _run(cmd: list[str], cwd: Path, env: Mapping[str, str], what: str,
         timeout: float = _TIMEOUT) -> subprocess.CompletedProcess[str]:
    """Run ``cmd``; raise HexRepoError with its output when it fails."""
    try:
        p = subprocess.run(cmd, cwd=cwd, env=dict(env), stdin=subprocess.DEVNULL, capture_output=True,
                           text=True, timeout=timeout, check=False)
    except FileNotFoundError as e:
        raise HexRepoError(f"{what}: {cmd[0]} is not installed ({e})") from e
    except subprocess.TimeoutExpired as e:
        raise HexRepoError(f"{what}: `{' '.join(cmd)}` took more than {timeout} s") from e
    if p.returncode != 0:
        raise HexRepoError(f"{what}: `{' '.join(cmd)}` in {cwd} exited {p.returncode}\n"
                           f"{p.stdout}{p.stderr}")
    return p


def _copy_sorted(src: Path, dest: Path) -> None:
    """Copy ``src`` to a new ``dest`` (sorted, symlinks kept), modes normalised to 0644/0755 (the tar
    records them; the vendored tree is read-only)."""
    dest.mkdir(parents=True)
    for entry in sorted(os.scandir(src), key=lambda e: e.name):
        target = dest / entry.name
        if entry.is_symlink():
            os.symlink(os.readlink(entry.path), target)
        elif entry.is_dir():
            _copy_sorted(Path(entry.path), target)
        else:
            shutil.copyfile(entry.path, target)
            target.chmod(0o755 if os.stat(entry.path).st_mode & 0o111 else 0o644)
    dest.chmod(0o755)


# --- the Hex archive ------------------------------------------------------------------------------

def build_hex_archive(workdir: os.PathLike | str, source: Path | None = None) -> Path:
    """Build ``hex-2.5.1.ez`` from ``source`` (default shared/thirdparty/hex-2.5.1) in a scratch copy
    under ``workdir``, with ``MIX_ENV=prod mix archive.build`` and MIX_HOME/HEX_HOME under ``workdir``."""
    workdir = Path(workdir)
    source = source or THIRDPARTY / f"hex-{HEX_VSN}"
    scratch = workdir / "hex-src"
    if scratch.exists():
        shutil.rmtree(scratch)
    _copy_sorted(source, scratch)
    out = workdir / f"hex-{HEX_VSN}.ez"
    env = mix_env(workdir / "mix-home-archive", workdir / "hex-home-archive", {"MIX_ENV": "prod"})
    _run(["mix", "archive.build", "-o", str(out)], scratch, env, f"building the Hex {HEX_VSN} archive")
    if not out.is_file():
        raise HexRepoError(f"mix archive.build did not write {out}")
    return out


def install_archive(archive: Path, mix_home: Path, hex_home: Path) -> None:
    """``mix archive.install ARCHIVE --force`` into ``mix_home``."""
    mix_home.mkdir(parents=True, exist_ok=True)
    _run(["mix", "archive.install", str(archive), "--force"], mix_home.parent,
         mix_env(mix_home, hex_home), f"installing {archive.name} into {mix_home}")


# --- packages -------------------------------------------------------------------------------------

def library_dirs(source: Path | None = None) -> list[Path]:
    """Every ``NAME-VSN`` library directory of shared/thirdparty except Hex itself, sorted."""
    source = source or THIRDPARTY
    dirs = [d for d in sorted(source.iterdir())
            if d.is_dir() and re.fullmatch(r"[a-z][a-z0-9_]*-\d+\.\d+\.\d+\S*", d.name)
            and not d.name.startswith("hex-")]
    if not dirs:
        raise HexRepoError(f"no NAME-VSN library directories in {source}")
    return dirs


def _split(dirname: str) -> tuple[str, str]:
    name, vsn = dirname.split("-", 1)
    return name, vsn


@functools.lru_cache(maxsize=None)
def _manifest(source: Path) -> dict[tuple[str, str], tuple[str, str]]:
    """(name, vsn) -> (license, upstream URL) from the MANIFEST.md table."""
    out = {}
    for line in (source / "MANIFEST.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 5 and re.fullmatch(r"\d+\.\d+\.\d+\S*", cells[1]):
            license_ = cells[4].split()[0].rstrip(";,")
            out[(cells[0], cells[1])] = (license_, "https://" + cells[2])
    return out


def _app_description(lib: Path, name: str) -> str:
    """The ``description`` of the application resource the library ships (ebin/NAME.app or src/NAME.app.src)."""
    for res in (lib / "ebin" / f"{name}.app", lib / "src" / f"{name}.app.src"):
        if res.is_file():
            m = re.search(r'\{\s*description\s*,\s*"((?:[^"\\]|\\.)*)"', res.read_text())
            if m:
                return m.group(1)
    raise HexRepoError(f"{lib.name}: no description in ebin/{name}.app or src/{name}.app.src")


def _ex_string(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"').replace("#{", "\\#{") + '"'


def prepare_library(src: Path, dest: Path, source: Path | None = None) -> list[str]:
    """Copy library ``src`` to ``dest`` and make its mix.exs buildable with ``mix hex.build`` (module
    docstring); return what was changed."""
    source = source or src.parent
    name, vsn = _split(src.name)
    if dest.exists():
        shutil.rmtree(dest)
    _copy_sorted(src, dest)
    mix_exs = dest / "mix.exs"
    text = mix_exs.read_text()
    changes = []

    def to_hex(m: re.Match[str]) -> str:
        if m.group(1) != m.group(2):
            raise HexRepoError(f"{src.name}: path dependency {m.group(0)} names another app")
        changes.append(f"{{:{m.group(1)}, path: \"../{m.group(2)}-{m.group(3)}\"}} -> "
                       f"{{:{m.group(1)}, \"{m.group(3)}\"}}")
        return f'{{:{m.group(1)}, "{m.group(3)}"}}'

    text = re.sub(r'\{:(\w+),\s*path:\s*"\.\./(\w+)-(\d[^"/]*)"\s*\}', to_hex, text)
    # any other path/git dependency in prod is refused by `mix hex.build` itself ("Dependencies excluded")

    if not re.search(r"\bpackage:", text):
        try:
            license_, url = _manifest(source)[(name, vsn)]
        except KeyError:
            raise HexRepoError(f"{src.name}: no row for {name} {vsn} in {source / 'MANIFEST.md'}") from None
        files = [p.name for p in sorted(dest.iterdir())]
        meta = (f"description: {_ex_string(_app_description(dest, name))}, "
                f"package: [licenses: [{_ex_string(license_)}], links: %{{\"Source\" => {_ex_string(url)}}}, "
                f"files: [{', '.join(_ex_string(f) for f in files)}], build_tools: [\"mix\"]], ")
        text, n = re.subn(r"(def project(?:\(\))? do\s*\[\s*)", lambda m: m.group(1) + meta, text, count=1)
        if n != 1:
            raise HexRepoError(f"{src.name}: mix.exs has no `def project do [` to add package metadata to")
        changes.append(f"added description, package (licenses {license_}, links {url}, "
                       f"files {files}, build_tools mix)")
    if changes:
        note = ("# Changed by tests/hotswap_testlib/hexrepo.py for the tests' local Hex repository (not in\n"
                "# shared/thirdparty): " + "; ".join(c.split(" (")[0] for c in changes) + ".\n")
        text, n = re.subn(r"^defmodule ", lambda m: note + m.group(0), text, count=1, flags=re.M)
        if n != 1:
            raise HexRepoError(f"{src.name}: mix.exs has no defmodule")
    mix_exs.write_text(text)
    return changes


def _placeholder(lib: Path, pattern: str) -> str:
    """Create what ``mix hex.build`` reported missing for ``pattern``; return the path created."""
    rel = pattern.replace("*", "") or pattern
    if "." not in Path(rel).name and pattern.endswith("*"):
        rel += ".md"                                    # README* -> README.md
    path = lib / rel
    if path.resolve() != lib.resolve() and lib.resolve() not in path.resolve().parents:
        raise HexRepoError(f"{lib.name}: missing file {pattern!r} is outside the package")
    if "." in path.name:
        path.parent.mkdir(parents=True, exist_ok=True)
        note = (f"Placeholder: {rel} is not vendored in shared/thirdparty (see its MANIFEST.md); "
                "written by tests/hotswap_testlib/hexrepo.py so that `mix hex.build` accepts the file list.")
        body = {".exs": f"# {note}\n[]\n", ".json": "{}\n"}.get(path.suffix, note + "\n")
        path.write_text(body)
        path.chmod(0o644)
    else:
        path.mkdir(parents=True, exist_ok=True)
    return rel


def _declared_files(mix_exs_text: str) -> list[str]:
    """The entries of a literal ``files: [...]`` / ``files: ~w(...)`` in a mix.exs ([] when there is none)."""
    m = re.search(r"\bfiles:\s*(?:~w\(([^)]*)\)|\[([^\]]*)\])", mix_exs_text)
    if not m:
        return []
    if m.group(1) is not None:
        return m.group(1).split()
    return re.findall(r'"([^"]*)"', m.group(2))


def _missing_declared(lib: Path) -> list[str]:
    """Entries of the library's literal ``files:`` list that match nothing in ``lib`` (as hex.build checks)."""
    return [f for f in _declared_files((lib / "mix.exs").read_text()) if not glob.glob(f, root_dir=lib)]


BUILD_EXS = ".hexrepo_build.exs"
_SORTED_FILES = '''
  # Added by tests/hotswap_testlib/hexrepo.py to the copy `mix hex.build` loads (MIX_EXS), not to the
  # package's mix.exs: the package's files, expanded as Hex expands them, in sorted order (Hex lists
  # directories in readdir order, which differs between filesystems, and so would the checksums).
  def project do
    config = hexrepo_upstream_project__()
    package = Map.new(config[:package] || [])
    files = package[:files] || Hex.Package.default_files()
    files = files |> Enum.flat_map(&Path.wildcard/1) |> Enum.flat_map(&hexrepo_walk__/1)
    Keyword.put(config, :package, Map.put(package, :files, files |> Enum.uniq() |> Enum.sort()))
  end

  defp hexrepo_walk__(path) do
    with {:ok, %File.Stat{type: :directory}} <- File.lstat(path),
         [_ | _] = names <- File.ls!(path) do
      Enum.flat_map(names, &hexrepo_walk__(Path.join(path, &1)))
    else
      _ -> [path]
    end
  end
'''


def _write_build_exs(lib: Path) -> Path:
    """Write ``lib/.hexrepo_build.exs``: the library's mix.exs whose ``project/0`` lists the package's
    files explicitly and sorted (so the tarball does not depend on directory order).  The package still
    ships the plain mix.exs."""
    text = (lib / "mix.exs").read_text()
    text, n = re.subn(r"\bdef project(\(\))? do\b", "def hexrepo_upstream_project__ do", text)
    text, m = re.subn(r"^(\s*use Mix\.Project\s*\n)", lambda g: g.group(1) + _SORTED_FILES, text,
                      count=1, flags=re.M)
    if n != 1 or m != 1:
        raise HexRepoError(f"{lib.name}: mix.exs needs exactly one `use Mix.Project` and one `def project do`")
    path = lib / BUILD_EXS
    path.write_text(text)
    return path


def _hex_build(lib: Path, out: Path, env: Mapping[str, str]) -> list[str]:
    """``mix hex.build -o OUT`` in ``lib``, with placeholders for declared files the copy lacks (found from
    the mix.exs text first, from hex.build's "Missing files:" error otherwise); return those created."""
    made = [_placeholder(lib, f) for f in _missing_declared(lib)]
    env = {**env, "MIX_EXS": str(_write_build_exs(lib))}
    for attempt in (1, 2):
        try:
            _run(["mix", "hex.build", "-o", str(out)], lib, env, f"packing {lib.name}")
            return made
        except HexRepoError as e:
            m = re.search(r"^Missing files: (.*)$", str(e), re.M)
            errors = str(e).split("Stopping package build due to errors.", 1)[-1].strip().splitlines()
            if attempt == 1 and m and len(errors) == 1:
                made += [_placeholder(lib, f.strip()) for f in m.group(1).split(",")]
                continue
            raise
    raise AssertionError("unreachable")


def pack_library(src: Path, scratch: Path, out: Path, mix_home: Path, hex_home: Path,
                 source: Path | None = None) -> list[str]:
    """Copy library ``src`` to ``scratch``, adapt it (``prepare_library``) and ``mix hex.build`` it into
    ``out`` with Hex from ``mix_home`` (installed there); return what the copy changed."""
    changes = prepare_library(src, scratch, source)
    made = _hex_build(scratch, out, mix_env(mix_home, hex_home))
    if made:
        changes.append(f"placeholders for files the vendored copy left out: {', '.join(made)}")
    return changes


def tarball_checksums(path: Path) -> tuple[str, str]:
    """(inner, outer) checksum of a Hex package file: the CHECKSUM member and sha256 of the file."""
    outer = hashlib.sha256(path.read_bytes()).hexdigest()
    with tarfile.open(path) as tar:
        member = tar.extractfile("CHECKSUM")
        if member is None:
            raise HexRepoError(f"{path}: no CHECKSUM member")
        inner = member.read().decode().strip().lower()
    return inner, outer


def _private_key(path: Path, env: Mapping[str, str]) -> None:
    """A fresh 2048-bit RSA key in PEM at ``path``, made by Erlang's :public_key (as Hex reads it)."""
    code = ('key = :public_key.generate_key({:rsa, 2048, 65537}); '
            'File.write!(System.fetch_env!("HOTSWAP_KEY_PATH"), '
            ':public_key.pem_encode([:public_key.pem_entry_encode(:RSAPrivateKey, key)]))')
    _run(["elixir", "-e", code], path.parent, {**env, "HOTSWAP_KEY_PATH": str(path)}, "generating the registry key")
    path.chmod(0o600)


_STUB_MISSING = r'''
[public, key_path] = System.argv()
[entry] = key_path |> File.read!() |> :public_key.pem_decode()
key = :public_key.pem_entry_decode(entry)
present = for p <- Path.wildcard(Path.join(public, "packages/*")), into: MapSet.new(), do: Path.basename(p)
# requirement name -> [{"user-vsn", optional?}]
wanted =
  for tar <- Path.wildcard(Path.join(public, "tarballs/*.tar")),
      {:ok, %{metadata: meta}} = :mix_hex_tarball.unpack(File.read!(tar), :memory),
      {name, req} <- Map.get(meta, "requirements", %{}),
      reduce: %{} do
    acc -> Map.update(acc, name, [{Path.basename(tar, ".tar"), req["optional"] == true}], &[{Path.basename(tar, ".tar"), req["optional"] == true} | &1])
  end

for {name, users} <- Enum.sort(wanted), not MapSet.member?(present, name) do
  required = for {user, false} <- users, do: user
  if required != [], do: raise("#{name} is required by #{Enum.join(required, ", ")} and is not in the repository")
  body = :mix_hex_registry.build_package(%{repository: "hexpm", name: name, releases: []}, key)
  File.write!(Path.join(public, "packages/#{name}"), body)
  IO.puts("#{name}\t#{users |> Enum.map(&elem(&1, 0)) |> Enum.sort() |> Enum.join(" ")}")
end
'''


def build_repo(workdir: os.PathLike | str, archive: os.PathLike | str, source: Path | None = None,
               jobs: int = JOBS) -> Repo:
    """Pack every library of ``source`` (default shared/thirdparty) and sign a registry over them.

    Layout under ``workdir``: ``libs/NAME-VSN`` (scratch copies), ``public/`` (the repository),
    ``registry_key.pem`` (private, made for this build), ``mix-home/``, ``hex-home/``."""
    t0 = time.monotonic()
    workdir, archive = Path(workdir), Path(archive)
    source = source or THIRDPARTY
    libs_dir, public = workdir / "libs", workdir / "public"
    for d in (libs_dir, public):
        if d.exists():
            shutil.rmtree(d)
    tarballs = public / "tarballs"
    tarballs.mkdir(parents=True)
    mix_home, hex_home = workdir / "mix-home", workdir / "hex-home"
    install_archive(archive, mix_home, hex_home)

    def one(src: Path) -> tuple[str, list[str]]:
        return src.name, pack_library(src, libs_dir / src.name, tarballs / f"{src.name}.tar",
                                      mix_home, workdir / "hex-homes" / src.name, source)

    libs = library_dirs(source)
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        results = list(pool.map(one, libs))
    t_packages = time.monotonic()

    # What `mix local.hex` and Hex's update check read (URL/installs/hex-1.x.csv: "hex vsn,sha512,elixir
    # vsns"); without it every `mix deps.get` says "Failed to check for new Hex version" (a 404).
    installs = public / "installs" / "hex-1.x.csv"
    installs.parent.mkdir()
    installs.write_text(f"{HEX_VSN},{hashlib.sha512(archive.read_bytes()).hexdigest()},1.14.0\n")

    key = workdir / "registry_key.pem"
    _private_key(key, mix_env(mix_home, hex_home))
    _run(["mix", "hex.registry", "build", str(public), "--name", REPO_NAME, "--private-key", str(key)],
         workdir, mix_env(mix_home, hex_home), "building the registry")
    stubs = _run(["elixir", "-pa", str(mix_home / "archives" / f"hex-{HEX_VSN}" / f"hex-{HEX_VSN}" / "ebin"),
                  "-e", _STUB_MISSING, "--", str(public), str(key)],
                 workdir, mix_env(mix_home, hex_home), "adding records for missing optional dependencies").stdout
    t_end = time.monotonic()
    packages = tuple(_split(src.name) for src in libs)
    missing = [f"{n}-{v}.tar" for n, v in packages if not (tarballs / f"{n}-{v}.tar").is_file()]
    if missing or not (public / "names").is_file():
        raise HexRepoError(f"repository in {public} is incomplete: missing {missing or 'names'}")
    return Repo(public_dir=public, public_key_path=public / "public_key", archive=archive,
                packages=packages,
                checksums={p: tarball_checksums(tarballs / f"{p[0]}-{p[1]}.tar") for p in packages},
                stubs={ln.split("\t")[0]: tuple(ln.split("\t")[1].split()) for ln in stubs.splitlines() if "\t" in ln},
                changes={n: tuple(c) for n, c in results if c},
                seconds={"packages": t_packages - t0, "registry": t_end - t_packages, "total": t_end - t0})


# --- HTTP ----------------------------------------------------------------------------------------

def serve(repo: Repo, address: str = "127.0.0.1", port: int = 0,
          log: list[str] | None = None) -> tuple[str, Callable[[], None]]:
    """Serve ``repo.public_dir`` over HTTP on ``address`` only (``port`` 0: a free one), in a thread.

    Returns ``(url, stop)``; ``stop()`` shuts the server down and closes its socket (idempotent).
    Request paths are appended to ``log`` when given."""
    directory = str(repo.public_dir)

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=directory, **kwargs)

        def log_message(self, format: str, *args) -> None:  # noqa: A002 (the base class's name)
            if log is not None:
                log.append(self.path)

    server = http.server.ThreadingHTTPServer((address, port), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name=f"hexrepo-{address}", daemon=True)
    thread.start()
    host, real_port = server.server_address[:2]
    host = f"[{host}]" if ":" in str(host) else host
    stopped = threading.Event()

    def stop() -> None:
        if not stopped.is_set():
            stopped.set()
            server.shutdown()
            server.server_close()
            thread.join(10)

    return f"http://{host}:{real_port}", stop


# --- a user's Hex home ---------------------------------------------------------------------------

def configure_build_user(mix_home: os.PathLike | str, hex_home: os.PathLike | str, url: str,
                         repo: Repo) -> dict[str, str]:
    """Configure a user's Hex for the mirror, the documented way: install the archive into ``mix_home``
    (``mix archive.install PATH --force``) and point ``hexpm`` at ``url`` with the registry's public key
    (``mix hex.repo set hexpm --url URL --public-key PEM``, stored in ``hex_home``/hex.config).

    Returns ``{"MIX_HOME": ..., "HEX_HOME": ...}``: add it to a ``mix_env``-style environment."""
    mix_home, hex_home = Path(mix_home), Path(hex_home)
    mix_home.mkdir(parents=True, exist_ok=True)
    hex_home.mkdir(parents=True, exist_ok=True)
    install_archive(repo.archive, mix_home, hex_home)
    _run(["mix", "hex.repo", "set", REPO_NAME, "--url", url, "--public-key", str(repo.public_key_path)],
         mix_home.parent, mix_env(mix_home, hex_home), f"configuring {REPO_NAME} in {hex_home}")
    return {"MIX_HOME": str(mix_home), "HEX_HOME": str(hex_home)}


# --- once per pytest run -------------------------------------------------------------------------

_SESSION: dict[int, Repo] = {}
_SESSION_LOCK = threading.Lock()


def session_repo(tmp_path_factory) -> Repo:
    """The archive and repository, built on first call and reused for the rest of the pytest run
    (keyed by ``tmp_path_factory``, which pytest makes once per session).  Wrap it in a session-scoped
    fixture: ``@pytest.fixture(scope="session") def hex_repo(tmp_path_factory): return session_repo(...)``."""
    with _SESSION_LOCK:
        key = id(tmp_path_factory)
        if key not in _SESSION:
            t0 = time.monotonic()
            workdir = tmp_path_factory.mktemp("hexrepo")
            archive = build_hex_archive(workdir)
            t_archive = time.monotonic() - t0
            repo = build_repo(workdir, archive)
            seconds = {"archive": t_archive, **repo.seconds, "total": time.monotonic() - t0}
            _SESSION[key] = dataclasses.replace(repo, seconds=seconds)
        return _SESSION[key]
