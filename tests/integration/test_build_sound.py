"""A build compiles exactly the source it was given, dependencies included, whatever the files' times.

Real `mix release` builds (on this machine, no fleet) of a small project with a path dependency, in one
store, the way the build host builds successive versions: sources arrive with old modification times (a
`git archive` export, a vendored library with upstream dates, `cp -a`), which mix's own staleness check
cannot see through.
"""
import os
import subprocess
import tarfile
import textwrap

import pytest

from ansible_collections.beam.hotswap.plugins.module_utils import _build
from hotswap_testlib.requirements import require

pytestmark = pytest.mark.integration

OLD = 1_000_000_000   # 2001-09-09: older than any build output


def _run(argv, cwd=None, env=None):
    e = dict(os.environ)
    e.update(env or {})
    p = subprocess.run(argv, cwd=cwd, env=e, capture_output=True, text=True, check=False)
    return p.returncode, p.stdout, p.stderr


def _write(root, files):
    for rel, text in files.items():
        path = os.path.join(root, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(textwrap.dedent(text))


def _age(root):
    for dp, dns, fns in os.walk(root):
        for n in dns + fns:
            os.utime(os.path.join(dp, n), (OLD, OLD))


def _dep(base, vsn, value):
    root = os.path.join(base, "dep-" + vsn)
    _write(root, {
        "mix.exs": """
            defmodule Dep.MixProject do
              use Mix.Project
              def project, do: [app: :dep, version: "%s", elixir: "~> 1.14"]
              def application, do: []
            end
            """ % vsn,
        "lib/dep.ex": """
            defmodule Dep do
              def value, do: %d
            end
            """ % value,
    })
    _age(root)
    return root


def _project(base, vsn, dep_dir):
    root = os.path.join(base, "app-" + vsn)
    _write(root, {
        "mix.exs": """
            defmodule Sound.MixProject do
              use Mix.Project
              def project do
                [app: :sound, version: "%s", elixir: "~> 1.14", deps: [{:dep, path: "%s"}],
                 releases: [sound: [include_executables_for: [:unix]]]]
              end
              def application, do: [extra_applications: [:logger, :sasl]]
            end
            """ % (vsn, dep_dir),
        "lib/sound.ex": """
            defmodule Sound do
              def answer, do: Dep.value()
            end
            """,
    })
    _age(root)
    return root


def _build_version(builder, base, src, bases):
    arch = os.path.join(base, os.path.basename(src) + ".tar.gz")
    with tarfile.open(arch, "w:gz") as t:
        for n in sorted(os.listdir(src)):
            t.add(os.path.join(src, n), arcname=n)
    wd = builder.stage_archive(arch)
    _age(wd)
    return builder.build(wd, "sha256:" + _build.tree_digest(wd), bases=bases)[1]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    require("mix", "erl")
    base = str(tmp_path_factory.mktemp("sound"))
    builder = _build.Builder(_run, os.path.join(base, "store"), "sound")
    m1 = _build_version(builder, base, _project(base, "1.0.0", _dep(base, "0.1.0", 1)), [])
    return {"base": base, "builder": builder, "m1": m1}


def test_a_bumped_path_dependency_with_old_file_times_is_the_one_the_release_ships(store):
    base, builder = store["base"], store["builder"]
    assert store["m1"]["apps"]["dep"] == "0.1.0"
    m2 = _build_version(builder, base, _project(base, "1.1.0", _dep(base, "0.2.0", 22)), ["1.0.0"])
    assert m2["apps"]["dep"] == "0.2.0", m2["apps"]
    lib = os.path.join(builder.store.vdir("1.1.0"), "release", "lib")
    assert "dep-0.2.0" in os.listdir(lib) and "dep-0.1.0" not in os.listdir(lib)
    (edge,) = m2["edges"]
    assert "dep" in edge["changed_apps"], edge


def test_an_equal_size_dependency_edit_without_a_version_bump_is_refused_not_shipped_stale(store):
    base, builder = store["base"], store["builder"]
    if not builder.store.manifest("1.1.0"):
        _build_version(builder, base, _project(base, "1.1.0", _dep(base, "0.2.0", 22)), ["1.0.0"])
    dep = _dep(os.path.join(base, "edited"), "0.2.0", 33)     # same size as 22, same version, old times
    with pytest.raises(_build.BuildError, match=r"application dep changed .* but kept version 0\.2\.0"):
        _build_version(builder, base, _project(os.path.join(base, "edited"), "1.2.0", dep), ["1.1.0"])
