"""Where the agent keeps its state: beside the root, root-only; the move from ROOT/.hotswap (agents before
1.2.0) takes only an old agent's own directory, never the new layout's PARENT/.hotswap of other roots."""
import os

from ansible_collections.beam.hotswap.plugins.module_utils._agent import layout, names


def test_state_dir_is_beside_the_root():
    assert names.state_dir("/opt/my_app") == "/opt/.hotswap/my_app"
    assert names.legacy_state_dir("/opt/my_app") == "/opt/my_app/.hotswap"


def test_system_directories_are_never_release_roots():
    for bad in ("/opt", "/usr", "/var/lib", "/etc", "/home", "/lib64", "/usr/lib32", "/"):
        assert names.valid_root(bad) is False, bad
    assert names.valid_root("/opt/my_app") and names.valid_root("/srv/shop")


def test_an_old_agents_directory_moves_and_the_new_layouts_never_does(tmp_path):
    old = tmp_path / "root" / ".hotswap"
    (old / "unpacked").mkdir(parents=True)
    os.chmod(old, 0o750)
    (old / "env").write_text("A=1\n")
    (old / "journal.jsonl").write_text('{"op":"hot"}\n')
    (old / "unpacked" / "1.0.0.sha256").write_text("x\n")
    os.symlink("/etc/shadow", old / "shadow")  # a link is never followed, never copied
    new = tmp_path / ".hotswap" / "root"
    new.mkdir(parents=True)
    assert layout.migrate_legacy(str(old), str(new)) is True
    assert not old.exists() and (new / "env").read_text() == "A=1\n"
    assert (new / "unpacked" / "1.0.0.sha256").exists() and not (new / "shadow").exists()
    assert oct((new / "env").stat().st_mode & 0o777) == "0o600"
    # ROOT=PARENT: PARENT/.hotswap is the new layout's directory of other roots (0711), not an old agent's
    other = tmp_path / "p" / ".hotswap"
    (other / "app").mkdir(parents=True)
    os.chmod(other, 0o711)
    assert layout.migrate_legacy(str(other), str(tmp_path / "x")) is False and (other / "app").is_dir()
