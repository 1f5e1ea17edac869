"""Where the agent lives on a target, as docs/operations.md states it: PARENT/.hotswap/NAME beside the
release root ROOT=PARENT/NAME (root-only), never inside the node user's tree.  The tests spell the rule
out instead of importing the product's, so a change of layout shows up as a test failure."""

import os


def agent_dir(root):
    """The agent's directory for release root ``root`` (str or Path; returns the same type)."""
    s = os.path.normpath(str(root))
    out = os.path.join(os.path.dirname(s), ".hotswap", os.path.basename(s))
    return type(root)(out) if not isinstance(root, str) else out


def agent_cmd(root, app, python="/usr/bin/python3"):
    """The command line that runs the installed agent for ``root``."""
    return [python, agent_dir(root) + "/agent.py", "--root", str(root), "--app", app]
