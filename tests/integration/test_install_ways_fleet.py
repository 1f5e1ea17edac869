"""The three ways a user runs the playbooks, each with a plain ansible-core and no environment variables.

1. From a checkout: ``ansible-playbook CHECKOUT/playbooks/deploy.yml`` from any working directory (the
   checkout's ``playbooks/collections/`` makes ``beam.hotswap`` resolve without any setting).
2. Installed from the built tarball: ``ansible-galaxy collection install beam-hotswap-*.tar.gz``, then
   ``ansible-playbook beam.hotswap.deploy``.
3. Installed from a git checkout: ``ansible-galaxy collection install git+file://CHECKOUT``, then
   ``ansible-playbook beam.hotswap.rollback`` and ``beam.hotswap.status``.

Every command runs under ``env -i PATH=/usr/bin:/bin:VENV/bin HOME=...`` with VENV a venv holding only
ansible-core, from a working directory whose ``ansible.cfg`` is ``docs/ansible.cfg.example`` plus the
fleet's inventory and key: what a user has.  One app root (``/opt/ways``) on target1 goes
first install 1.0.0 (checkout) -> hot 2.0.0 (tarball) -> hot rollback to 1.0.0 (git install).
"""
import configparser
import json
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from hotswap_testlib import sample
from hotswap_testlib.ansible_run import parse_recap
from hotswap_testlib.layout import agent_cmd

pytestmark = [pytest.mark.integration, pytest.mark.fleet]

REPO = Path(__file__).resolve().parents[2]
ROOT = "/opt/ways"
PORT = 4070
NODE = "ways"              # RELEASE_NODE: beside the other modules' nodes on the same hosts
STORE = "/opt/hotswap-store-ways"
HOST = "target1"
AGENT = agent_cmd(ROOT, "sample")


def _ansible_core_pin() -> str:
    """The ansible-core pin from the Makefile's PY_PKGS (one copy of the version)."""
    m = re.search(r"ansible-core==[0-9][0-9.]*", (REPO / "Makefile").read_text())
    assert m, "the Makefile pins no ansible-core"
    return m.group(0)


def _sh(argv, **kw):
    p = subprocess.run([str(a) for a in argv], capture_output=True, text=True, check=False,
                       stdin=subprocess.DEVNULL, **kw)
    return p


@pytest.fixture(scope="module")
def ways(fleet, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ways")
    repo = REPO
    # a venv with ansible-core only (no ansible-lint, no pytest, no collection link)
    venv = tmp / "venv"
    p = _sh([sys.executable, "-m", "venv", venv])
    assert p.returncode == 0, p.stderr
    p = _sh([venv / "bin" / "python", "-m", "pip", "install", "-q", "--disable-pip-version-check",
             _ansible_core_pin()])
    assert p.returncode == 0, p.stdout + p.stderr
    # the checkout as git would hand it out: tracked files (and new, not ignored ones) only
    checkout = tmp / "checkout"
    checkout.mkdir()
    files = _sh(["git", "-C", repo, "ls-files", "-z", "--cached", "--others", "--exclude-standard"]).stdout
    tar = subprocess.run(["tar", "--null", "-T", "-", "-cf", "-"], input=files.encode(), cwd=str(repo),
                         capture_output=True, check=True).stdout
    subprocess.run(["tar", "-xf", "-"], input=tar, cwd=str(checkout), check=True)
    for argv in (["git", "init", "-q"], ["git", "add", "-A"],
                 ["git", "-c", "user.name=t", "-c", "user.email=t@invalid", "commit", "-qm", "checkout"]):
        p = _sh(argv, cwd=str(checkout))
        assert p.returncode == 0, p.stderr
    # a working directory with the user's ansible.cfg: the documented example plus this fleet
    cfg = configparser.ConfigParser(interpolation=None)
    cfg.read(repo / "docs" / "ansible.cfg.example")
    cfg["defaults"].update({"inventory": str(fleet.inventory_path), "private_key_file": str(fleet.key_path),
                            "remote_user": "root", "nocolor": "True"})
    cfg["ssh_connection"]["control_path_dir"] = str(fleet.control_dir)
    work = tmp / "work"
    work.mkdir(mode=0o700)
    with open(work / "ansible.cfg", "w") as f:
        cfg.write(f)
    srcs = {v: str(sample.materialise(tmp / ("src-" + v), v)) for v in ("1.0.0", "2.0.0")}
    return {"tmp": tmp, "venv": venv, "checkout": checkout, "work": work, "srcs": srcs}


def _env(ways, home):
    home.mkdir(exist_ok=True)
    return {"PATH": f"/usr/bin:/bin:{ways['venv'] / 'bin'}", "HOME": str(home)}


def _play(ways, home, playbook, extra):
    vars_path = ways["tmp"] / "vars.json"
    vars_path.write_text(json.dumps(extra))
    p = _sh([ways["venv"] / "bin" / "ansible-playbook", playbook, "-e", "@" + str(vars_path)],
            env=_env(ways, home), cwd=str(ways["work"]), timeout=900)
    return p.returncode, p.stdout, p.stderr, parse_recap(p.stdout)


def _extra(ways, version=None, **kw):
    e = {"hotswap_app": "sample", "hotswap_root": ROOT, "hotswap_target_hosts": HOST,
         "hotswap_service_manager": "daemon", "hotswap_report_dir": str(ways["tmp"] / "reports")}
    if version:
        e.update(hotswap_source=ways["srcs"][version], hotswap_build_store=STORE,
                 hotswap_artifact_dir=str(ways["tmp"] / "artifacts"),
                 hotswap_env={"SAMPLE_PORT": str(PORT), "SAMPLE_GREETING": "hello-ways", "RELEASE_NODE": NODE})
    e.update(kw)
    return e


def _node(fleet):
    st = json.loads(fleet.run(HOST, AGENT + ["status"]).stdout)
    return st["running"], st["permanent"]


def test_syntax_check_of_every_playbook_from_a_plain_checkout_in_another_directory(ways, tmp_path):
    for name in ("deploy", "rollback", "status"):
        book = ways["checkout"] / "playbooks" / f"{name}.yml"
        p = _sh([ways["venv"] / "bin" / "ansible-playbook", "--syntax-check", book],
                env=_env(ways, tmp_path / "home"), cwd=str(tmp_path))
        assert p.returncode == 0, p.stdout + p.stderr


def test_deploy_from_a_plain_checkout_installs_the_release(fleet, ways):
    rc, out, err, recap = _play(ways, ways["tmp"] / "home-checkout",
                                ways["checkout"] / "playbooks" / "deploy.yml", _extra(ways, "1.0.0"))
    assert rc == 0, out[-4000:] + err[-2000:]
    assert recap[HOST]["failed"] == 0 and recap[HOST]["changed"] > 0, recap
    assert _node(fleet) == ("1.0.0", "1.0.0")
    assert sample.SampleClient(fleet.host(HOST).address, PORT).vsn() == "1.0.0"


def test_collection_installed_from_the_built_tarball_deploys_hot(fleet, ways):
    tmp = ways["tmp"]
    env = _env(ways, tmp / "home-tarball")
    out_dir = tmp / "dist"
    p = _sh([ways["venv"] / "bin" / "ansible-galaxy", "collection", "build", "--output-path", out_dir,
             ways["checkout"]], env=env, cwd=str(tmp))
    assert p.returncode == 0, p.stdout + p.stderr
    (tarball,) = out_dir.glob("beam-hotswap-*.tar.gz")
    with tarfile.open(tarball) as t:
        assert not [n for n in t.getnames() if n.startswith("playbooks/collections")]
    p = _sh([ways["venv"] / "bin" / "ansible-galaxy", "collection", "install", tarball], env=env, cwd=str(tmp))
    assert p.returncode == 0, p.stdout + p.stderr
    assert (tmp / "home-tarball" / ".ansible" / "collections" / "ansible_collections" / "beam" / "hotswap"
            / "playbooks" / "deploy.yml").is_file()
    c = sample.SampleClient(fleet.host(HOST).address, PORT)
    c.add(5)
    before = c.get()
    rc, out, err, recap = _play(ways, tmp / "home-tarball", "beam.hotswap.deploy", _extra(ways, "2.0.0"))
    assert rc == 0, out[-4000:] + err[-2000:]
    assert re.search(HOST + r"\s+1\.0\.0\s+2\.0\.0\s+hot\s", out), out[-3000:]
    assert _node(fleet) == ("2.0.0", "2.0.0")
    assert c.vsn() == "2.0.0" and c.get() == before     # same connection, same state: it went hot


def test_collection_installed_from_a_git_checkout_rolls_back_and_reports_status(fleet, ways):
    tmp = ways["tmp"]
    home = tmp / "home-git"
    p = _sh([ways["venv"] / "bin" / "ansible-galaxy", "collection", "install", f"git+file://{ways['checkout']}"],
            env=_env(ways, home), cwd=str(tmp))
    assert p.returncode == 0, p.stdout + p.stderr
    installed = home / ".ansible" / "collections" / "ansible_collections" / "beam" / "hotswap"
    assert (installed / "playbooks" / "rollback.yml").is_file()
    assert not (installed / "playbooks" / "collections").exists()
    c = sample.SampleClient(fleet.host(HOST).address, PORT)
    before = c.get()
    rc, out, err, recap = _play(ways, home, "beam.hotswap.rollback", _extra(ways))
    assert rc == 0, out[-4000:] + err[-2000:]
    assert _node(fleet) == ("1.0.0", "1.0.0")
    assert c.vsn() == "1.0.0" and c.get() == before
    rc, out, err, recap = _play(ways, home, "beam.hotswap.status", _extra(ways))
    assert rc == 0, out[-4000:] + err[-2000:]
    assert re.search(HOST + r".*1\.0\.0", out), out[-3000:]
