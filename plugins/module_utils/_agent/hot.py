"""The hot path: install over the relup (after the code_change rehearsal), commit, revert, and `hot`
which carries them out in one lock; pruning old releases.
"""

import os
import signal
import time

from .errors import now_ms, OpFailed
from .erlterms import permanent_version
from .files import sha256_file
from .state import Lock, _make_permanent_offline, repair_releases, running_and_permanent
from .packages import prepare_unpack, undo_unpack
from .bins import boot_bin
from .prune import do_prune
from .health import _need_up, parse_check, run_health
from .service import _pid_alive, start_node, start_timeout, stop_node


def fault_point(h, name):
    """TEST-ONLY fault injection (HOTSWAP_AGENT_FAULT=NAME, see the module docstring): SIGKILL the
    node's OS process at the named point.  Does nothing unless the variable names this point."""
    if os.environ.get("HOTSWAP_AGENT_FAULT") != name:
        return
    pid, _ign = h.os_pid()
    if not pid:
        return
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    end = time.monotonic() + 10
    while _pid_alive(pid) and time.monotonic() < end:
        time.sleep(0.02)


def _recover_dead_node(h, old, err, timeout=60, when="before the upgrade was committed"):
    """The node's OS process died mid-deploy (killed, OOM...): make `old` the permanent release again
    (whatever was committed) and start it cold.  Returns the failure info (with "msg") for the caller's
    OpFailed; ``when`` says in that message when the node died."""
    h.set_installed_record(None)
    repaired = []
    try:
        # release_handler writes start_erl.data, then RELEASES in place (truncated first): a node killed in
        # between leaves RELEASES empty; rebuilt from the releases on disk, OLD is found and made permanent again
        repaired += repair_releases(h, up=False)
        rels = h.releases() or []
    except OpFailed:
        rels = []
    perm = permanent_version(rels)
    se = (h.start_erl() or {}).get("version")
    if old and any(r["version"] == old for r in rels) and (perm != old or se != old):
        _make_permanent_offline(h, old)
        repaired.append(f"{old} made permanent again (was {perm}, start_erl.data {se})")
    try:
        boot_bin(h)
        st = start_node(h, start_timeout(timeout))
    except OpFailed as e2:
        return {"host_version": None, "node_up": h.node_up(), "reverted": False, "state_lost": True,
                "node_died": True, "repaired": repaired,
                "msg": f"{err}; the node died and did not start again: {e2.msg}"}
    running = st.get("running")
    return {"host_version": running, "node_up": True, "reverted": running == old, "os_pid": st.get("os_pid"),
            "state_lost": True, "restarted": "cold", "node_died": True, "repaired": repaired,
            "msg": (f"{err}; the node died (its OS process is gone) {when}: "
                    f"started the permanent release {running} again cold (in-memory state lost)")}


def _after_failure(h, old, err, rh_pid_before=None, wait_s=60, pid_before=None):
    """install_release failed or the rpc died.  Past the relup's point of no return
    release_handler replies {error, _} and then calls init:restart(): the VM reboots in place
    from the permanent release, losing all in-memory state.  Find out which happened: wait until
    the node answers with init 'started', and compare release_handler's pid with the one from
    before the install (a new pid = the node restarted)."""
    deadline = time.monotonic() + wait_s
    info = None
    while time.monotonic() < deadline:
        if h.node_up():
            try:
                info = h.rpc("ready", timeout=max(5, int(deadline - time.monotonic()) + 5),
                             timeout_ms=int(max(1, deadline - time.monotonic()) * 1000))
                if info.get("ok"):
                    break
            except OpFailed:
                info = None
        elif pid_before and not _pid_alive(pid_before):
            # not an in-place restart (that keeps the OS pid): the VM is gone
            return _recover_dead_node(h, old, err, timeout=max(30, wait_s))
        time.sleep(0.3)
    h.set_installed_record(None)
    if info is None or not info.get("ok"):
        return {"host_version": None, "node_up": h.node_up(), "reverted": False, "state_lost": None,
                "msg": f"{err}; the node did not answer afterwards: check it (status), then start it"}
    restarted = None if rh_pid_before is None else info.get("rh_pid") != rh_pid_before
    running = info.get("running")
    res = {"host_version": running, "node_up": True, "reverted": running == old, "os_pid": info.get("os_pid"),
           "state_lost": restarted, "restarted_in_place": restarted}
    if restarted is None:
        res["msg"] = (f"{err}; the node answers on {running} (same OS pid), but whether release_handler restarted "
                      f"it in place (losing its in-memory state) is not known: check the application")
    elif restarted:
        res["msg"] = (f"{err}; release_handler restarted the node in place on {running} "
                      f"(same OS pid, in-memory state LOST)")
    else:
        res["msg"] = f"{err}; node still runs {running}, state intact"
    return res


def _rehearsal_fields(r):
    """The rehearsal's figures from a node result, for the agent's JSON."""
    out = {"rehearse_ms": r.get("rehearse_ms"), "rehearsal_warnings": r.get("rehearsal_warnings") or [],
           "rehearsed": r.get("rehearsed") or [], "rehearsal_peer": bool(r.get("rehearsal_peer")),
           "rehearse_skipped": r.get("rehearse_skipped") or 0}
    if r.get("rehearsal_failures"):
        out["rehearsal_failures"] = r["rehearsal_failures"]
    return out


def _refusal_msg(vsn, r):
    fails = r.get("rehearsal_failures") or []
    what = "; ".join(f"{f.get('module')}.code_change({f.get('old_vsn')}, state, extra) in {f.get('pid')} "
                     + (f"(callback {f.get('callback')}) " if f.get("callback") not in (None, f.get("module")) else "")
                     + f"{f.get('error')}" for f in fails[:3]) or r.get("error")
    keeps = r.get("running")
    return (f"hot upgrade to {vsn} refused: {what} -- rehearsed on a copy of the live state; nothing was "
            f"installed; the host keeps {keeps} and its state")


def _old_code_args(a):
    """The node's old-code options from the agent's arguments."""
    return {"old_code": getattr(a, "old_code", None) or "refuse",
            "old_code_wait_ms": int(max(0.0, getattr(a, "old_code_wait", 5.0) or 0.0) * 1000)}


def _procs_text(procs, limit=5, total=None):
    """Processes the node named (old_code_procs) as one line; processes alike (same function, same start)
    are told once with their count."""
    groups = {}
    for p in procs or []:
        key = (p.get("in"), p.get("current_function"), p.get("initial_call"), tuple(p.get("modules") or []))
        groups.setdefault(key, []).append(p.get("name"))
    out = []
    for (where, cur, init, mods), names in list(groups.items())[:limit]:
        who = names[0] if len(names) == 1 else f"{len(names)} processes like {names[0]}"
        out.append(f"{who} in {where or cur}"
                   + (f" (blocked in {cur})" if where and cur and cur != where else "")
                   + (f", started as {init}" if init and init not in (cur, where) else "")
                   + (f", holding old code of {', '.join(mods)}" if not where else ""))
    shown = sum(len(n) for n in list(groups.values())[:limit])
    more = max(total or 0, len(procs or [])) - shown
    return "; ".join(out) + (f"; and {more} more" if more > 0 else "")


def _old_code_refusal_msg(vsn, r, wait_s):
    procs = r.get("old_code_procs") or []
    count = r.get("old_code_count") or len(procs)
    if r.get("old_code_conns"):
        return (f"hot upgrade to {vsn} refused: {count} connection process(es) still run code an earlier upgrade "
                f"replaced and were still serving a request after {wait_s:g} s: {_procs_text(procs, total=count)}. release_handler asks "
                f"such a process (a Cowboy connection) for its status, which moves it onto the current code with "
                f"its old state; idle ones are closed, a busy one is not -- nothing was installed; the host keeps "
                f"{r.get('running')} and its state. Deploy again when its request is done, or set "
                f"hotswap_old_code=kill to close it")
    return (f"hot upgrade to {vsn} refused: {count} process(es) execute code of modules this upgrade replaces and "
            f"did not leave within {wait_s:g} s, so purging the old code would kill them: {_procs_text(procs, total=count)} -- "
            f"nothing was installed; the host keeps {r.get('running')} and its state. Make such loops leave the "
            f"module (docs/writing-upgradable-code.md), or set hotswap_old_code=kill to let their supervisors "
            f"restart them on the new code, or deploy with hotswap_mode=cold")


def cmd_install(h, a):
    """install --version V: install an unpacked release over the relup on the live node (after the
    code_change rehearsal), without committing it; on a dead node or a failed install, report what the host runs."""
    vsn = a.version
    with Lock(h, "install"):
        _need_up(h, "install")
        rels = h.releases()
        if rels is not None and not any(r["version"] == vsn for r in rels):
            raise OpFailed(f"{vsn} is not unpacked on this host: run unpack first", releases=[r["version"] for r in rels])
        pid, _ign = h.os_pid()
        perm = permanent_version(rels)
        fault_point(h, "before_install")
        try:
            r = h.rpc("install", vsn=vsn, rehearse=True, timeout=a.timeout + 60, **_old_code_args(a))
        except OpFailed as e:
            if e.extra.get("rpc_transport"):
                info = _after_failure(h, perm, e.msg, pid_before=pid)
                raise OpFailed(info.pop("msg"), **info)
            raise
        if not r.get("ok") and r.get("stage") == "rehearse":
            raise OpFailed(_refusal_msg(vsn, r), stage="rehearse", host_version=r.get("running"),
                           **_rehearsal_fields(r))
        if not r.get("ok") and r.get("stage") == "old_code":
            raise OpFailed(_old_code_refusal_msg(vsn, r, a.old_code_wait), stage="old_code",
                           host_version=r.get("running"), old_code_procs=r.get("old_code_procs"))
        if not r.get("ok"):
            msg = f"install_release({vsn}) failed at {r.get('stage')}: {r.get('error')}"
            if r.get("stage") == "install":
                raise OpFailed(**_after_failure(h, perm, msg, r.get("rh_pid_before")))
            raise OpFailed(f"{msg}; node runs {r.get('running')}", host_version=r.get("running"))
        if r.get("running") != r.get("permanent"):
            h.set_installed_record({"version": r.get("running"), "os_pid": r.get("os_pid") or pid})
        return dict({"changed": r.get("changed", True), "version": vsn, "from": r.get("from"),
                     "host_version": r.get("running"), "permanent": r.get("permanent"),
                     "install_ms": r.get("install_ms"), "runtime_keys": r.get("runtime_keys"),
                     "created_releases": r.get("created_releases"), "os_pid": r.get("os_pid")},
                    **_rehearsal_fields(r))


def _verify_committed(h, vsn):
    """What disagrees with V being committed: start_erl.data and RELEASES must both name it (empty: all good)."""
    se = h.start_erl() or {}
    rels = h.releases() or []
    perm = permanent_version(rels)
    problems = []
    if se.get("version") != vsn:
        problems.append(f"start_erl.data names {se.get('version')}")
    if perm != vsn:
        problems.append(f"RELEASES has {perm} permanent")
    return problems


def cmd_commit(h, a):
    """commit --version V: health-check the running release, make it permanent (make_permanent) and check
    that the boot files say so.  A release whose check fails is never made permanent: a commit may follow
    a run that was interrupted before its check passed."""
    vsn = a.version
    with Lock(h, "commit"):
        _need_up(h, "commit")
        check = parse_check(a.check)
        ok, why = run_health(h, vsn, check, a.timeout)
        if not ok:
            # never made permanent, and the host goes back to the release that is (hot, else cold)
            old = permanent_version(h.releases() or [])
            if not old or old == vsn:
                raise OpFailed(f"{vsn} runs but its health check ({check[0]}) fails: {why}; not made permanent",
                               stage="health", healthy=False)
            rv = _revert_or_recover(h, old, a.timeout, f"health check ({check[0]}) of {vsn} failed: {why}")
            raise OpFailed(f"{vsn} runs but its health check ({check[0]}) fails: {why}; not made permanent, "
                           + (f"reverted to {old} ({rv.get('mode')})" if rv.get("reverted")
                              else f"REVERT FAILED, node runs {rv.get('host_version')}"),
                           stage="health", healthy=False, reverted=bool(rv.get("reverted")), revert_mode=rv.get("mode"),
                           host_version=rv.get("host_version"), changed=True,
                           **{k: rv[k] for k in ("state_lost", "node_died", "os_pid") if k in rv})
        r = h.rpc("commit", vsn=vsn, timeout=60)
        if not r.get("ok"):
            raise OpFailed(f"make_permanent({vsn}) failed: {r.get('error')}", host_version=r.get("running"))
        problems = _verify_committed(h, vsn)
        if problems:
            raise OpFailed(f"{vsn} committed but the files disagree: {'; '.join(problems)}",
                           host_version=r.get("running"))
        boot_bin(h)
        h.set_installed_record(None)
        return {"changed": r.get("changed", True), "version": vsn, "host_version": r.get("running"),
                "permanent": r.get("permanent"), "commit_ms": r.get("commit_ms")}


def do_revert(h, old, timeout, mode="hot", old_code=None):
    """Hot revert to old; cold (stop, fix files, start) if that fails or mode == "cold".  With ``old_code``
    (an explicit rollback: the agent's arguments) processes in code the down edge replaces are checked
    first, and a refusal raises with nothing changed instead of going cold."""
    if not h.node_up():
        _make_permanent_offline(h, old)
        boot_bin(h)
        h.set_installed_record(None)
        return {"changed": True, "mode": "files", "reverted": True, "host_version": old, "node_up": False}
    hot_err = None
    refusal = None
    try:
        if mode == "cold":
            raise OpFailed("cold revert requested")
        extra = _old_code_args(old_code) if old_code is not None else {}
        r = h.rpc("revert", vsn=old, rehearse=True, timeout=timeout + 60 + 2 * (extra.get("old_code_wait_ms", 0) / 1000),
                  **extra)
        if old_code is not None and not r.get("ok") and r.get("old_code_procs"):
            # refused before anything changed: raised below, never turned into a cold revert
            refusal = OpFailed(_old_code_refusal_msg(old, r, old_code.old_code_wait).replace("hot upgrade", "hot rollback"),
                               stage="old_code", changed=False, reverted=False, host_version=r.get("running"),
                               old_code_procs=r.get("old_code_procs"))
        elif r.get("ok") and not _verify_committed(h, old):
            boot_bin(h)
            h.set_installed_record(None)
            return {"changed": r.get("changed", True), "mode": "hot", "reverted": True,
                    "host_version": r.get("running"), "from": r.get("from"),
                    "install_ms": r.get("revert_install_ms"), "conns_closed": r.get("revert_conns_closed") or []}
        else:
            hot_err = r.get("error") or "; ".join(_verify_committed(h, old))
    except OpFailed as e:
        hot_err = e.msg
    if refusal is not None:
        raise refusal
    # cold: stop, fix start_erl.data / RELEASES, start
    frm = permanent_version(h.releases())
    stop_node(h)
    _make_permanent_offline(h, old)
    boot_bin(h)
    h.set_installed_record(None)
    st = start_node(h, start_timeout(timeout))
    return {"changed": True, "mode": "cold", "reverted": st.get("running") == old, "state_lost": True, "from": frm,
            "hot_error": None if mode == "cold" else hot_err, "host_version": st.get("running"), "os_pid": st.get("os_pid")}


def cmd_revert(h, a):
    """revert --version OLD: put the node back on OLD (over the relup when it can, else cold), ending permanent."""
    with Lock(h, a.command):
        res = do_revert(h, a.version, a.timeout, getattr(a, "mode", "hot"), old_code=a)
        if not res.get("reverted"):
            raise OpFailed(f"revert to {a.version} failed; node runs {res.get('host_version')}", **res)
        return dict(res, version=a.version)


def _revert_or_recover(h, old, timeout, err):
    """After a failed health check/commit: revert to old (hot, else cold); when the node is gone
    altogether (its OS process died), start the permanent release old again cold."""
    if not h.node_up():
        info = _recover_dead_node(h, old, err, timeout=max(30, timeout))
        return dict(info, mode="cold-start")
    return do_revert(h, old, timeout)


def cmd_hot(h, a):
    """hot --package P --sha256 S --version V: the whole hot upgrade under one lock -- verify and unpack the
    upgrade package, rehearse code_change, install over the relup, health check, commit, prune -- and on any
    failure revert the host to the release it had before answering.  A rerun with V running and permanent
    changes nothing."""
    vsn = a.version
    check = parse_check(a.check)
    with Lock(h, "hot"):
        _need_up(h, "a hot upgrade")
        h.repaired += repair_releases(h, up=True)
        running, perm, _up, pid = running_and_permanent(h, h.releases())
        old = perm or running
        if running == vsn and perm == vsn:
            return already_there(h, vsn, a, h.sha_record(vsn))
        t_unpack = now_ms()
        prep = prepare_unpack(h, a.package, a.sha256, vsn, True, running=running)
        unpack_ms = round(now_ms() - t_unpack, 1)
        one_rpc = check[0] in ("default", "rpc")
        fault_point(h, "before_install")
        try:
            r = h.rpc("install", vsn=vsn, rel_file=prep["rel_file"], old=old, verify=one_rpc, commit=one_rpc,
                      revert_on_failure=one_rpc, check_rpc=check[1] if check[0] == "rpc" else None,
                      rehearse=True, timeout_ms=int(a.timeout * 1000),
                      timeout=a.timeout + 90 + 2 * (getattr(a, "old_code_wait", 0) or 0), **_old_code_args(a))
        except OpFailed as e:
            if e.extra.get("rpc_transport"):
                info = _after_failure(h, old, e.msg, pid_before=pid)
                raise OpFailed(info.pop("msg"), version=vsn, changed=True, stage="install", **{"from": old}, **info)
            raise
        if not r.get("ok") and r.get("stage") == "rehearse":
            # nothing was registered: take the files back out so the version can be retried
            undo_unpack(h, prep)
            raise OpFailed(_refusal_msg(vsn, r), stage="rehearse", changed=False, reverted=False,
                           host_version=r.get("running"), permanent=r.get("permanent"), os_pid=r.get("os_pid"),
                           unpack_ms=unpack_ms, cleaned=prep.get("cleaned"), **_rehearsal_fields(r))
        if not r.get("ok") and r.get("stage") == "old_code" and r.get("old_code_phase") == "before":
            # refused before anything was registered: the host keeps its release and its state
            undo_unpack(h, prep)
            raise OpFailed(_old_code_refusal_msg(vsn, r, a.old_code_wait), stage="old_code", changed=False,
                           reverted=False, host_version=r.get("running"), permanent=r.get("permanent"),
                           os_pid=r.get("os_pid"), unpack_ms=unpack_ms, cleaned=prep.get("cleaned"),
                           old_code_procs=r.get("old_code_procs"), **_rehearsal_fields(r))
        if not r.get("ok") and r.get("stage") == "unpack":
            undo_unpack(h, prep)
            raise OpFailed(f"release_handler refused to register {vsn}: {r.get('error')}; nothing changed",
                           host_version=r.get("running"), stage="unpack")
        h.set_sha_record(vsn, a.sha256)
        base = {"version": vsn, "from": old, "install_ms": r.get("install_ms"), "unpack_ms": unpack_ms,
                "runtime_keys": r.get("runtime_keys"), "os_pid": r.get("os_pid"), **_rehearsal_fields(r)}
        for k in ("old_code_killed", "old_code_waited", "old_code_ms", "old_code_finishing", "old_code_finishing_count",
                  "supervisors_kept", "children_changed", "paused", "quieted", "conns_closed"):
            if r.get(k):
                base[k] = r[k]
        if not r.get("ok") and r.get("stage") == "install":
            info = _after_failure(h, old, f"hot upgrade to {vsn} failed at install: {r.get('error')}",
                                  r.get("rh_pid_before"))
            raise OpFailed(info.pop("msg"), stage="install", changed=True, **dict(base, **info))
        if not r.get("ok"):
            stage = r.get("stage")
            err = (r.get("error") or "").strip().splitlines()[:2]
            if stage is None or not (_pid_alive(pid) and h.node_up()):
                # an error out of the node's script (no stage: it raised), or the node died meanwhile (e.g. a
                # process killed by the purge took its application down): never leave the host like that
                time.sleep(0.5)
                raise OpFailed(**_after_settle_failure(h, vsn, old, pid, f"the upgrade failed on the node: "
                                                       f"{' '.join(err)}", a.timeout, dict(base), stage=stage or "node"))
            reverted = r.get("running") == old and r.get("permanent") == old
            if stage in ("health", "commit", "old_code") and not r.get("reverted") and r.get("running") != old:
                rv = _revert_or_recover(h, old, a.timeout, f"hot upgrade to {vsn} failed at {stage}")
                reverted = rv.get("reverted")
                base["revert_mode"] = rv.get("mode")
            raise OpFailed(f"hot upgrade to {vsn} failed at {stage}: {r.get('error')}; "
                           + (f"reverted to {old}" if reverted else f"node runs {r.get('running')}"),
                           stage=stage, reverted=bool(reverted), host_version=old if reverted else r.get("running"),
                           changed=True, **base)
        if not r.get("changed", True):
            return dict(base, changed=False, host_version=r.get("running"))
        if not one_rpc:
            h.set_installed_record({"version": vsn, "os_pid": r.get("os_pid")})
            ok, why = run_health(h, vsn, check, a.timeout)
            if not ok:
                rv = _revert_or_recover(h, old, a.timeout, f"health check ({check[0]}) of {vsn} failed: {why}")
                raise OpFailed(f"health check ({check[0]}) of {vsn} failed: {why}; "
                               + (f"reverted to {old} ({rv.get('mode')})" if rv.get("reverted")
                                  else f"REVERT FAILED, node runs {rv.get('host_version')}"),
                               stage="health", reverted=bool(rv.get("reverted")), revert_mode=rv.get("mode"),
                               host_version=rv.get("host_version"), changed=True,
                               **dict(base, **{k: rv[k] for k in ("state_lost", "node_died", "os_pid") if k in rv}))
            try:
                c = h.rpc("commit", vsn=vsn, timeout=60)
            except OpFailed as e:
                if not e.extra.get("rpc_transport"):
                    raise
                c = {"ok": False, "error": e.msg}
            if not c.get("ok"):
                rv = _revert_or_recover(h, old, a.timeout, f"make_permanent({vsn}) failed: {c.get('error')}")
                if rv.get("node_died"):
                    msg = rv["msg"]
                else:
                    msg = f"make_permanent({vsn}) failed: {c.get('error')}; reverted={rv.get('reverted')}"
                raise OpFailed(msg, stage="commit", reverted=bool(rv.get("reverted")), revert_mode=rv.get("mode"),
                               host_version=rv.get("host_version"), changed=True,
                               **dict(base, **{k: rv[k] for k in ("state_lost", "node_died", "os_pid") if k in rv}))
        h.set_installed_record(None)
        problems = _verify_committed(h, vsn)
        if problems:
            raise OpFailed(f"{vsn} runs but the files disagree: {'; '.join(problems)}", host_version=vsn, **base)
        boot_bin(h)
        res = dict(base, changed=True, host_version=vsn, permanent=vsn)
        new_pid = r.get("os_pid") or pid
        fault_point(h, "after_commit")
        if a.keep:
            try:
                res["removed"] = do_prune(h, a.keep)
            except OpFailed as e:
                # the deploy itself is done; a prune that fails is reported, and never leaves the node down
                res["prune_error"] = e.msg
                if not (_pid_alive(new_pid) and h.node_up()):
                    raise OpFailed(**_after_settle_failure(h, vsn, old, new_pid, f"pruning old releases failed: "
                                                           f"{e.msg}", a.timeout, dict(base, **res)))
        if a.settle and a.settle > 0:
            t_settle = now_ms()
            why = _settle(h, vsn, new_pid, a.settle, check, a.timeout)
            res["settle_ms"] = round(now_ms() - t_settle, 1)
            if why:
                raise OpFailed(**_after_settle_failure(h, vsn, old, new_pid, why, a.timeout, dict(base, **res)))
        return res


def _settle(h, vsn, pid, seconds, check, timeout, what="committed"):
    """Watch the node for ``seconds`` after its commit: its OS process must stay alive, and at the end it
    must still answer and pass the health check.  None when it did, else what went wrong."""
    t0 = time.monotonic()
    end = t0 + seconds
    while time.monotonic() < end:
        if pid and not _pid_alive(pid):
            return f"the node died {round((time.monotonic() - t0) * 1000)} ms after {vsn} was {what}"
        time.sleep(min(0.05, max(0.0, end - time.monotonic())))
    if not h.node_up() or (pid and not _pid_alive(pid)):
        return f"the node went down within {seconds:g} s after {vsn} was {what}"
    ok, why = run_health(h, vsn, check, timeout)
    return None if ok else f"health check ({check[0]}) failed {seconds:g} s after {vsn} was {what}: {why}"


def _after_settle_failure(h, vsn, old, pid, why, timeout, base, stage="settle"):
    """The node failed its settle window (or the upgrade failed with the node in an unknown state): bring the
    host back to ``old`` (hot over the relup while the node still runs, else OLD made permanent again and
    started cold) and say what happened."""
    if pid and _pid_alive(pid) and h.node_up():
        rv = _revert_or_recover(h, old, timeout, f"hot upgrade to {vsn}: {why}")
    else:
        if h.node_up():        # something (a service manager) started it again on the new release
            stop_node(h, timeout)
        rv = _recover_dead_node(h, old, f"hot upgrade to {vsn}: {why}", timeout=max(30, timeout),
                                when=(f"after the commit, so {old} was made permanent again" if stage == "settle"
                                      else f"during the upgrade; {old} is permanent again"))
    reverted = bool(rv.get("reverted"))
    outcome = f"reverted to {old} ({rv.get('mode')})" if reverted else f"node runs {rv.get('host_version')}"
    msg = rv.get("msg") or f"hot upgrade to {vsn}: {why}; {outcome}"
    out = dict(base, **{k: v for k, v in rv.items() if k != "msg"})
    out.update(msg=msg, stage=stage, reverted=reverted, host_version=rv.get("host_version"), changed=True)
    out.pop("permanent", None)
    return out


def already_there(h, vsn, a, recorded):
    """A rerun of a deploy the host already runs (hot or cold): refused if the package is not the one ``vsn``
    was installed from (``recorded``) or does not match its sha256; else nothing to do but prune."""
    if recorded not in (None, a.sha256):
        raise OpFailed(f"{vsn} already runs from another package (sha256 {recorded}); publish a new version",
                       host_version=vsn)
    got = sha256_file(a.package) if os.path.isfile(a.package) else None
    if got != a.sha256:
        raise OpFailed(f"package {a.package} refused: sha256 is {got}, expected {a.sha256}; nothing changed",
                       host_version=vsn)
    res = {"changed": False, "version": vsn, "host_version": vsn, "from": vsn}
    if a.keep:
        res["removed"] = do_prune(h, a.keep)
    return res
