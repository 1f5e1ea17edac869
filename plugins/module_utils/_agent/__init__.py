"""beam.hotswap host agent: moves one mix release root from one state to another.

    python3 agent.py --root /opt/APP --app APP [--user U] COMMAND [options]

Commands: status, facts, unpack, install, health, commit, revert, rollback, hot, cold, first-install,
prune, start, stop.
Prints exactly one JSON object on stdout.  Exit 0 ok, 1 operation failed, 2 bad input.
Python 3.9+ standard library only.  The node-side code lives in node.erl (installed next to
this file, in the agent's root-only directory PARENT/.hotswap/NAME beside the release root;
`hotswap_node.erl` in the repository): an Erlang expression sequence that erl_eval evaluates in
the node, needing only kernel, stdlib and sasl (mix and relx releases alike).  The agent runs its
phases on the live node through `erl_call` (shipped with every ERTS), run as the node's user:
nothing from the release tree ever runs as root.

Before a hot install the node rehearses every code_change of the relup edge on a copy of
the live state in a scratch peer node; if one raises, the install is refused (nothing is
installed, the host keeps its version and its state).

TEST-ONLY fault injection: the environment variable HOTSWAP_AGENT_FAULT=before_install makes
`hot` and `install` SIGKILL the node right before the install rpc (to test recovery from a node
that dies mid-deploy); =after_commit right after a hot commit, =after_start right after a cold
start passed its health check (both inside the settle window).  Any other value is ignored.  Never
set it in production.

Source layout: this package's modules, each owning one concern, in the order they are assembled
(each imports only from those before it); `_assemble.py` joins them into the single stdlib-only
file a host receives, roles/agent/files/hotswap_agent.py (`make agent`).
"""

MODULES = ("errors", "options", "names", "erlterms", "files", "fingerprint", "layout", "relx", "nodecall", "host", "state", "reads", "packages",
           "bins", "prune", "health", "service", "hot", "full", "cli")
