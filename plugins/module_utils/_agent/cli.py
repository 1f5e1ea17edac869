"""The command line: one JSON object on stdout, exit 0 (ok), 1 (operation failed), 2 (bad input); `run`
is the same entry point for callers in the same process.
"""

import argparse
import contextlib
import json
import os
import sys

from .errors import BadInput, now_ms, OpFailed
from .options import add_agent_options
from .names import AGENT_VERSION, check_app, check_sha, check_vsn, is_system_dir, USER_RE
from .erlterms import permanent_version
from .host import Host
from .state import journal, Lock
from .reads import cmd_facts, cmd_status, ensure_user, state_key
from .packages import apply_settings, cmd_unpack, store_package
from .health import cmd_health, parse_check
from .service import cmd_start, cmd_stop, ensure_unit, resolve_service_manager, SYSTEMD_UNIT_DIR, unit_name
from .prune import cmd_prune
from .hot import cmd_commit, cmd_hot, cmd_install, cmd_revert
from .full import cmd_cold, cmd_first_install, cmd_rollback

DESCRIPTION = "beam.hotswap host agent: moves one mix release root from one state to another."


class Parser(argparse.ArgumentParser):
    def error(self, message):
        raise BadInput(message)

    def exit(self, status=0, message=None):
        if status:
            raise BadInput(message or "bad arguments")
        raise SystemExit(status)


def build_parser():
    p = Parser(prog="agent.py", description=DESCRIPTION)
    p.add_argument("--root", required=True)
    p.add_argument("--app", required=True)
    p.add_argument("--user")
    sub = p.add_subparsers(dest="command", required=True, parser_class=Parser)

    def add(name, fn, *opts):
        s = sub.add_parser(name)
        s.set_defaults(fn=fn)
        for o in opts:
            if o == "version":
                s.add_argument("--version", required=True)
            elif o == "version?":
                s.add_argument("--version")
            elif o == "package":
                s.add_argument("--package", required=True)
                s.add_argument("--sha256", required=True)
        # options common to every command (the Ansible module passes them uniformly;
        # commands that have no use for one ignore it)
        s.add_argument("--store-package", dest="store_package", metavar="FILE_NAME",
                       help="keep --package in .hotswap/packages/SHA256-FILE_NAME (moved there once verified)")
        s.add_argument("--expect-state", dest="expect_state", metavar="STATE",
                       help="refuse (stale_facts) unless the host is in this state (as `facts` reports it)")
        s.add_argument("--settings-stdin", dest="settings_stdin", action="store_true",
                       help="read {\"env\": {...}, \"cookie\": \"...\"} as JSON from stdin and write them first")
        s.add_argument("--expect-agent", dest="expect_agent", metavar="NAME=SHA256,...",
                       help="facts: report whether the installed agent files have these checksums")
        add_agent_options(s)
        return s

    add("status", cmd_status)
    add("facts", cmd_facts)
    add("unpack", cmd_unpack, "package", "version")
    add("install", cmd_install, "version")
    add("health", cmd_health, "version")
    add("commit", cmd_commit, "version")
    add("revert", cmd_revert, "version")
    add("rollback", cmd_rollback, "version").add_argument("--mode", choices=["hot", "cold"], default="hot")
    add("hot", cmd_hot, "package", "version")
    add("cold", cmd_cold, "package", "version")
    add("first-install", cmd_first_install, "package", "version")
    add("prune", cmd_prune)
    add("start", cmd_start, "version?")
    add("stop", cmd_stop)
    return p


READ_OPS = ("status", "facts")


def run(argv, settings=None):
    """Run one agent command in this process; returns (exit code, result dict).  Never raises:
    the collection's modules call this directly (no second Python start-up per command).

    ``settings`` ({"env": {...}, "cookie": "..."}; the CLI reads it from stdin with --settings-stdin)
    is written to .hotswap/ before the command runs."""
    t0 = now_ms()
    out = {"op": None, "agent_version": AGENT_VERSION}
    code = 0
    h = None
    try:
        a = build_parser().parse_args(argv)
        out["op"] = a.command
        check_app(a.app)
        if a.user is not None and not USER_RE.fullmatch(a.user):
            raise BadInput(f"invalid user {a.user!r}: give the node's own user (hotswap_user), a system user name")
        if a.user == "root":
            raise BadInput("the node may not run as root: give it a user of its own (hotswap_user)")
        if getattr(a, "version", None) is not None:
            check_vsn(a.version)
            out["version"] = a.version
        if getattr(a, "sha256", None) is not None:
            a.sha256 = check_sha(a.sha256)
        if getattr(a, "package", None) is not None:
            a.package = os.path.abspath(a.package)
        if getattr(a, "keep", None) is not None and a.keep < 1:
            raise BadInput("--keep must be >= 1")
        if not (0 < a.timeout <= 3600):
            raise BadInput("--timeout must be in (0, 3600]")
        if (not os.path.isabs(a.root) or os.path.normpath(a.root) in ("/", "//") or ".." in a.root.split("/")
                or any(ord(c) < 0x20 or ord(c) == 0x7F for c in a.root)):
            raise BadInput(f"--root must be an absolute path below / without '..' (got {a.root!r})")
        if a.settings_stdin and settings is None:
            try:
                settings = json.loads(sys.stdin.read() or "{}")
            except ValueError as e:
                raise BadInput(f"--settings-stdin: not JSON ({e})")
        settings = dict(settings or {})
        if settings.get("check"):
            a.check = settings["check"]
        settings.pop("check", None)
        if getattr(a, "check", None) is not None:
            parse_check(a.check)
        if a.command == "first-install" and a.user and ensure_user(a.user):
            out["user_created"] = a.user
        h = Host(a.root, a.app, a.user)
        if is_system_dir(h.root):
            raise BadInput(f"hotswap_root {h.root} is a system directory: a release root is a directory of its own "
                           f"(for example /opt/{a.app}); nothing was changed")
        h.check_parents()
        h.service_manager = resolve_service_manager(a.service_manager)
        if a.command == "first-install" and not os.path.lexists(h.root):
            # a new release root: the node user's, 0750 (its parents are root's: check_parents)
            pw = h.run_pw()
            os.mkdir(h.root, 0o750)
            os.lchown(h.root, pw.pw_uid, pw.pw_gid)
        if a.command not in READ_OPS and not os.path.isdir(h.root):
            raise OpFailed(f"release root {h.root} does not exist")
        if a.expect_state is not None:
            now = state_key(h)
            if now != a.expect_state:
                raise OpFailed(f"the host changed since its facts were read ({a.expect_state} -> {now}); "
                               "nothing was done", stale_facts=True, changed=False)
        # the settings and the package are written under the root's lock, which the command then keeps
        # (a second agent, refused by the lock, writes nothing)
        # (a noop deploy is `status` with settings: it writes them too, under the lock)
        writes = a.command not in READ_OPS or any(settings.values())
        with (Lock(h, a.command) if writes else contextlib.nullcontext()):
            if any(settings.values()):
                out["settings_changed"] = apply_settings(h, settings)
            if a.command not in READ_OPS and h.service_manager == "systemd" and \
                    os.path.exists(os.path.join(SYSTEMD_UNIT_DIR, unit_name(h.app))) and ensure_unit(h):
                # a unit written by an earlier agent (its EnvironmentFile in ROOT/.hotswap, ExecStop): the node
                # keeps running; its next start uses this one
                h.repaired.append(f"rewrote {unit_name(h.app)} (daemon-reload, no restart)")
            if a.store_package:
                if not getattr(a, "package", None):
                    raise BadInput("--store-package needs --package")
                a.package = store_package(h, a.package, a.sha256, a.store_package)
            res = a.fn(h, a)
        out.update(res)
        out.setdefault("changed", False)
        out["failed"] = False
    except BadInput as e:
        code = 2
        out.update(failed=True, changed=False, msg=f"bad input: {e}")
    except OpFailed as e:
        code = 1
        out.update(e.extra)
        out.update(failed=True, msg=e.msg)
        out.setdefault("changed", False)
    except Exception as e:  # no tracebacks to the user
        code = 1
        out.update(failed=True, changed=out.get("changed", False),
                   msg=f"internal error: {type(e).__name__}: {e}")
    if h is not None:
        if h.repaired:
            out.setdefault("repaired", h.repaired)
        out["rpc_calls"] = h.rpc_calls
        out["rpc_ms"] = round(h.rpc_ms, 1)
    out["total_ms"] = round(now_ms() - t0, 1)
    if "host_version" not in out and h is not None and out.get("op") not in READ_OPS and code != 2:
        try:
            rels = h.releases() or []
            out["host_version"] = permanent_version(rels)
        except Exception:
            pass
    if h is not None and code != 2 and "env_pending_restart" not in out:
        try:
            out["env_pending_restart"] = h.env_pending()
        except Exception:
            pass
    out["result"] = "bad_input" if code == 2 else ("failed" if code else ("ok" if out.get("changed") else "noop"))
    # the journal records operations on the release root; a read (status) changes nothing and is not one
    if h is not None and code != 2 and out.get("op") not in READ_OPS and not out.get("stale_facts"):
        journal(h, out)
    return code, out


def main(argv=None):
    code, out = run(argv)
    sys.stdout.write(json.dumps(out, sort_keys=True, default=str) + "\n")
    return code
