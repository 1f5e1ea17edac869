"""relx releases (rebar3): what the agent does differently for them than for mix releases.

A relx release is told apart by its tree: releases/VSN/ has vm.args (or vm.args.src) and no env.sh, which
every mix release has.  Its start script is `bin/APP foreground` (mix: `bin/APP start`), it names the
version it boots (REL_VSN, so bin/ follows the permanent release: see bins.py), its node name and cookie
are lines of vm.args, and `daemon` keeps its run_erl pipes in PIPE_DIR (default /tmp/erl_pipes/NAME).
Everything here is read from the node user's tree: it decides only what runs as that user, and names
are validated before they are used.
"""

import os
import re

from .files import safe_read

NODE_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,200}(@[A-Za-z0-9_.-]{1,255})?$")


def is_relx(root, vsn):
    """True when releases/VSN of ROOT is a relx release (vm.args and no env.sh)."""
    if not vsn:
        return False
    d = os.path.join(root, "releases", vsn)
    return (os.path.lexists(os.path.join(d, "vm.args")) or os.path.lexists(os.path.join(d, "vm.args.src"))) \
        and not os.path.lexists(os.path.join(d, "env.sh"))


def _expand(value, env):
    """${VAR} from the release's environment (the agent's env file, then the agent's own), as relx's
    RELX_REPLACE_OS_VARS does; None when a variable is unset."""
    missing = []

    def sub(m):
        name = m.group(1) or m.group(2)
        if name in env:
            return env[name]
        if name in os.environ:
            return os.environ[name]
        missing.append(name)
        return ""
    out = re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}|\$([A-Za-z_][A-Za-z0-9_]*)", sub, value)
    return None if missing else out


def vm_args(root, vsn, env):
    """{"flag": "-sname"|"-name", "name": ..., "cookie": ...} from releases/VSN/vm.args (vm.args.src),
    read without following a link; missing keys when absent or unusable."""
    out = {}
    for name in ("vm.args", "vm.args.src"):
        data = safe_read(root, f"releases/{vsn}/{name}", limit=1 << 20)
        if data is not None:
            break
    else:
        return out
    for line in data.decode("utf-8", "replace").splitlines():
        parts = line.split("#", 1)[0].split()
        if len(parts) != 2:
            continue
        value = _expand(parts[1], env)
        if value is None:
            continue
        if parts[0] in ("-sname", "-name") and NODE_NAME_RE.match(value):
            out.update(flag=parts[0], name=value)
        elif parts[0] == "-setcookie":
            out["cookie"] = value
    return out


def start_args(relx):
    """The start script's argument for a foreground start (systemd)."""
    return "foreground" if relx else "start"


def daemon_env(root, relx):
    """Variables for `bin/APP daemon`: relx's run_erl pipes and logs under ROOT/tmp (where mix keeps its
    own), not in /tmp shared by every release of the host."""
    if not relx:
        return {}
    return {"PIPE_DIR": os.path.join(root, "tmp", "erl_pipes") + "/", "RUNNER_LOG_DIR": os.path.join(root, "tmp", "log")}
