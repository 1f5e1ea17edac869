"""Up-front variable check: the roles' own argument specs judge every hotswap_* value (strings from -e that
convert pass), and an unknown hotswap_* name is a warning naming the closest known one."""
import pytest

from ansible_collections.beam.hotswap.plugins.plugin_utils import _vars

SPECS, PROBLEMS = _vars.load_specs()
KNOWN = _vars.load_known()


def test_the_specs_are_the_roles_own_files():
    assert not PROBLEMS
    roles = {role for entries in SPECS.values() for role, _spec in entries}
    assert {"agent", "build", "upgrade", "validate"} <= roles
    assert ("upgrade", "int") in [(r, s["type"]) for r, s in SPECS["hotswap_health_timeout"]]


def test_names_the_playbooks_set_themselves_are_known():
    for name in ("hotswap_playbook", "hotswap_manifest", "hotswap_build_bases", "hotswap_target_fingerprints",
                 "hotswap_target_hosts", "hotswap_serial", "hotswap_max_fail_percentage", "hotswap_state"):
        assert name in KNOWN, name


BAD = [
    ("hotswap_health_timeout", "30s", "hotswap_health_timeout must be an integer (seconds), got '30s'."),
    ("hotswap_keep_releases", "", "hotswap_keep_releases must be an integer, got ''."),
    ("hotswap_keep_releases", True, "hotswap_keep_releases must be an integer, got True."),
    ("hotswap_settle_seconds", "soon", "hotswap_settle_seconds must be a number (seconds), got 'soon'."),
    ("hotswap_allow_downgrade", "perhaps", "hotswap_allow_downgrade must be true or false, got 'perhaps'."),
    ("hotswap_mode", "hto", "hotswap_mode must be one of auto, hot, cold, got 'hto'."),
    ("hotswap_env", ["A=b"], "hotswap_env must be a dict (KEY: value mapping), got ['A=b']."),
    ("hotswap_env", "not a mapping", "hotswap_env must be a dict (KEY: value mapping), got 'not a mapping'."),
    ("hotswap_build_bases", ["1.0.0", {"a": 1}], "hotswap_build_bases must be a list of strings, but item 2 is"),
    ("hotswap_app", {"name": "x"}, "hotswap_app must be a string, got {'name': 'x'}."),
    ("hotswap_playbook", "upgrade", "hotswap_playbook must be one of deploy, rollback, status, got 'upgrade'."),
]


@pytest.mark.parametrize("name, value, line", BAD, ids=["%s=%r" % b[:2] for b in BAD])
def test_a_bad_value_is_one_readable_line(name, value, line):
    errors, warnings = _vars.check({name: value}, SPECS, KNOWN)
    assert len(errors) == 1 and errors[0].startswith(line) and "\n" not in errors[0], errors
    assert not warnings


GOOD = [
    ("hotswap_health_timeout", "30"), ("hotswap_health_timeout", 30), ("hotswap_keep_releases", "3"),
    ("hotswap_settle_seconds", "0.5"), ("hotswap_allow_downgrade", "yes"), ("hotswap_allow_downgrade", "false"),
    ("hotswap_mode", "cold"), ("hotswap_env", {"A": "b"}), ("hotswap_env", '{"A": "b"}'),
    ("hotswap_build_bases", ["1.0.0"]), ("hotswap_version", 2), ("hotswap_artifact_dir", "~/x"),
    ("hotswap_serial", [1, "50%"]), ("hotswap_cookie", None),
]


@pytest.mark.parametrize("name, value", GOOD, ids=["%s=%r" % g for g in GOOD])
def test_values_that_convert_as_the_roles_convert_them_pass(name, value):
    assert _vars.check({name: value}, SPECS, KNOWN) == ([], [])


def test_an_unknown_name_warns_with_the_closest_known_one():
    errors, warnings = _vars.check({"hotswap_mdoe": "hot", "hotswap_helth_timeout": "5"}, SPECS, KNOWN)
    assert not errors
    assert warnings == ["unknown variable hotswap_helth_timeout is ignored: did you mean hotswap_health_timeout?",
                        "unknown variable hotswap_mdoe is ignored: did you mean hotswap_mode?"]


def test_internal_and_foreign_names_are_not_judged():
    assert _vars.check({"_hotswap_bad": 1, "_hotswap_x": "y", "other_var": "z", "ansible_host": 3},
                       SPECS, KNOWN) == ([], [])


def test_a_name_nothing_resembles_says_so():
    _errors, (warning,) = _vars.check({"hotswap_zzzzzzzzzzzzzzzz": 1}, SPECS, KNOWN)
    assert warning.startswith("unknown variable hotswap_zzzzzzzzzzzzzzzz is ignored (no beam.hotswap")


def test_an_option_added_to_a_role_spec_is_checked_without_another_copy(tmp_path):
    role = tmp_path / "roles" / "upgrade" / "meta"
    role.mkdir(parents=True)
    (role / "argument_specs.yml").write_text(
        "argument_specs:\n  main:\n    options:\n      hotswap_old_code:\n        type: str\n"
        "        choices: [refuse, kill]\n        default: refuse\n")
    specs, problems = _vars.load_specs(str(tmp_path))
    assert not problems
    assert _vars.check({"hotswap_old_code": "kill"}, specs, []) == ([], [])
    assert _vars.check({"hotswap_old_code": "murder"}, specs, [])[0] == [
        "hotswap_old_code must be one of refuse, kill, got 'murder'."]


def test_an_unreadable_spec_file_is_a_problem_not_a_traceback(tmp_path):
    role = tmp_path / "roles" / "broken" / "meta"
    role.mkdir(parents=True)
    (role / "argument_specs.yml").write_text("argument_specs: [unclosed\n")
    specs, problems = _vars.load_specs(str(tmp_path))
    assert specs == {} and len(problems) == 1 and "role broken" in problems[0]
