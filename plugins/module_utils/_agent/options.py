"""The options the release task hands to the agent, one row each: the task's option (its spec: type,
default, choices), the agent's flag, and how the agent parses it.  The agent's command line
(``cli.build_parser``) and the controller's (the task's spec, and the command line ``_release`` builds)
both come from these rows: an option the agent takes from the task is added here, in one place.
"""

# (task option, task spec, agent flag, agent dest, agent type, agent default)
TASK_OPTIONS = (
    ("keep_releases", {"type": "int", "default": 5}, "--keep", "keep", int, None),
    ("health_timeout", {"type": "int", "default": 30}, "--timeout", "timeout", float, 30.0),
    ("service_manager", {"type": "str", "default": "auto", "choices": ["auto", "systemd", "daemon"]},
     "--service-manager", "service_manager", str, "auto"),
    # no_log: a URL may carry a token; the controller hands it to the agent on stdin, never on a command line
    ("health_check", {"type": "str", "no_log": True}, "--check", "check", str, None),
    # after a hot commit (and prune) the node must stay up and healthy this long; 0 = no watch
    ("settle_seconds", {"type": "float", "default": 6.0}, "--settle", "settle", float, 0.0),
    # processes executing code a hot upgrade replaces (a purge would kill them): refuse, or let them die
    ("old_code", {"type": "str", "default": "refuse", "choices": ["refuse", "kill"]},
     "--old-code", "old_code", str, "refuse"),
    # how long such processes get to leave before that decision
    ("old_code_wait", {"type": "float", "default": 5.0}, "--old-code-wait", "old_code_wait", float, 5.0),
)


# options that travel with the settings on the agent's stdin (``_release.settings_of``), not on its command line
SETTINGS_OPTIONS = ("health_check",)


def task_option_specs():
    """The task's argument spec entries for these options."""
    return {name: dict(spec) for name, spec, _flag, _dest, _type, _default in TASK_OPTIONS}


def agent_option_args(params):
    """The agent's command-line arguments for a task's validated parameters (unset options left out)."""
    out = []
    for name, _spec, flag, _dest, _type, _default in TASK_OPTIONS:
        if name in SETTINGS_OPTIONS:
            continue
        if params.get(name) not in (None, ""):
            out += [flag, str(params[name])]
    return out


def add_agent_options(parser):
    """Add these options to an agent (sub)command parser."""
    for _name, spec, flag, dest, kind, default in TASK_OPTIONS:
        kw = {"dest": dest, "type": kind, "default": default}
        if spec.get("choices"):
            kw["choices"] = list(spec["choices"])
        parser.add_argument(flag, **kw)
