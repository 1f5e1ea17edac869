"""Health checks after install and before commit: an http(s) URL, a command on the host, or an rpc
expression on the node (the default: the node answers and runs the new release).
"""

import shlex
import subprocess
import time

from .errors import BadInput, OpFailed


def _need_up(h, what):
    if not h.node_up():
        raise OpFailed(f"node {h.node_name()} is not running: {what} needs a running node "
                       f"(start it, or use the cold path)", node_up=False)


def _http_check(url, timeout):
    # imported here: only HTTP checks need it, and it costs every agent start 13 ms
    import urllib.error  # pylint: disable=import-outside-toplevel
    import urllib.request  # pylint: disable=import-outside-toplevel
    try:
        with urllib.request.build_opener().open(url, timeout=timeout) as resp:
            return 200 <= resp.status < 300, f"HTTP {resp.status}"
    except urllib.error.HTTPError as e:
        return False, f"HTTP {e.code}"
    except (urllib.error.URLError, OSError, ValueError) as e:
        return False, f"{type(e).__name__}: {getattr(e, 'reason', e)}"


def _cmd_check(h, argv, timeout):
    """The command runs as the node's user (never root: a script in the release tree is the user's)."""
    try:
        p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False,
                           stdin=subprocess.DEVNULL, **h.run_kwargs())
    except FileNotFoundError:
        return False, f"command not found: {argv[0]}"
    except subprocess.TimeoutExpired:
        return False, f"timed out after {timeout:.1f}s"
    out = (p.stdout + p.stderr).strip()[-200:]
    return p.returncode == 0, f"exit {p.returncode}" + (f": {out}" if out else "")


def parse_check(spec):
    """A health check specification -> (kind, argument): ``default``, ``http`` URL, ``cmd`` argv or ``rpc``
    expression; BadInput for a malformed one."""
    if spec is None or spec == "":
        return ("default", None)
    if spec.startswith(("http://", "https://")):
        return ("http", spec)
    if spec.startswith("cmd:"):
        try:
            argv = shlex.split(spec[4:])
        except ValueError as e:
            raise BadInput(f"bad cmd check: {e}")
        if not argv:
            raise BadInput("empty cmd: check")
        return ("cmd", argv)
    if spec.startswith("rpc:"):
        if not spec[4:].strip():
            raise BadInput("empty rpc: check")
        return ("rpc", spec[4:])
    raise BadInput(f"unknown check {spec!r}: use http(s)://..., cmd:ARGV or rpc:EXPR")


def run_health(h, vsn, check, timeout):
    """Returns (ok, why).  rpc/default run inside the node (one rpc, retried there)."""
    kind, arg = check
    if kind in ("default", "rpc"):
        try:
            r = h.rpc("verify", vsn=vsn, check_rpc=arg, timeout_ms=int(timeout * 1000), timeout=timeout + 60)
        except OpFailed as e:
            return False, e.msg
        return bool(r.get("ok")), r.get("error") or "ok"
    deadline = time.monotonic() + timeout
    why = "not run"
    while True:
        left = deadline - time.monotonic()
        # a command may take as long as the budget allows; one HTTP request at most 10 s, then retry
        per = max(0.5, left if kind == "cmd" else min(10.0, left))
        ok, why = _http_check(arg, per) if kind == "http" else _cmd_check(h, arg, per)
        if ok:
            return True, why
        if time.monotonic() + 0.5 >= deadline:
            return False, why
        time.sleep(0.5)


def cmd_health(h, a):
    """health --version V: run the health check once against the live node (OpFailed when it fails)."""
    check = parse_check(a.check)
    if check[0] in ("default", "rpc"):
        _need_up(h, "the health check")
    ok, why = run_health(h, a.version, check, a.timeout)
    if not ok:
        raise OpFailed(f"health check ({check[0]}) of {a.version} failed: {why}", healthy=False, check=check[0])
    return {"changed": False, "healthy": True, "version": a.version, "check": check[0]}
