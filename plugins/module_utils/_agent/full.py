"""Full releases: first install, the cold switch with its revert, and rollback to a release the host
holds (hot over the relup's down edge when it exists, cold otherwise).
"""

import json
import os
import stat

from .errors import now_ms, OpFailed, PackageRefused
from .erlterms import parse_rel, permanent_version, TermError
from .files import (check_full_member, lchown_tree_at, rmtree, safe_extract, safe_open_dir, safe_read, safe_rmtree,
                    safe_write)
from .state import (check_first_install_root, drop_stale_staging, installed_by_agent, Lock, _make_permanent_offline,
                    _rel_libs, _releases_entry, running_and_permanent)
from .reads import relup_edges
from .packages import (copy_tree_nofollow, _lstat_at, move_in, open_verified, package_rel, _referenced_libs, _space_free,
                       _space_needed, _write_private)
from .bins import save_bin, swap_bin
from .health import parse_check
from .service import _gate, start_node, start_timeout, stop_node
from .prune import do_prune
from .hot import _settle, already_there, do_revert, fault_point


def stage_full(h, package, sha, vsn, owner):
    """Verify the sha256 FIRST, check every entry, extract into a private staging dir.
    Returns {"staging", "rel", "members"}; the caller removes the staging dir."""
    tf, members = open_verified(package, sha, lambda m: check_full_member(m, h.app, vsn))
    with tf:
        names = {rel for _ign, rel in members}
        rel_name = f"releases/{vsn}/{h.app}.rel"
        for need in (rel_name, f"bin/{h.app}"):
            if need not in names:
                raise PackageRefused(f"package refused: {need} missing (not a full `mix release` tarball of "
                                     f"{h.app} {vsn}); nothing changed")
        rel = package_rel(tf, members, rel_name, h.app, vsn)
        pkg_libs = {r.split("/")[1] for r in names if r.startswith("lib/")}
        h.ensure_hs()
        drop_stale_staging(h)
        need, free = _space_needed(members), _space_free(h)
        if free is not None and need > free:
            raise OpFailed(f"no space left on device for {h.app} {vsn} in {h.hs} / {h.root}: the full release needs "
                           f"about {need // 1024} KB, {free // 1024} KB are free; nothing changed",
                           space_needed_kb=need // 1024, space_free_kb=free // 1024, changed=False)
        staging = os.path.join(h.hs, f"staging-{os.getpid()}")
        rmtree(staging)
        os.makedirs(staging, mode=0o700)
        try:
            safe_extract(tf, members, staging)
            # the staged entries become the node user's (lchown, no link followed); staging itself stays root's 0700
            lchown_tree_at(h.hs, os.path.basename(staging), *owner, top=False)
        except BaseException:
            rmtree(staging)
            raise
    return {"staging": staging, "rel": rel, "pkg_libs": sorted(pkg_libs),
            "erts_dirs": sorted({r.split("/")[0] for r in names if r.startswith("erts-")})}


def install_cookie(h, owner):
    """The agent's cookie (written by the module) -> releases/COOKIE, 0400, owned by the node's user; without
    one, the packaged releases/COOKIE is kept but made 0400 too (read no-follow, rewritten through a fresh
    file).  Never printed or journalled.  Returns True when the file changed."""
    src = os.path.join(h.hs, "cookie")
    data = None
    if os.path.isfile(src):
        with open(src, "rb") as fh:
            data = fh.read().strip()
    if not data:
        packaged = safe_read(h.root, "releases/COOKIE", limit=1 << 16)
        if not packaged or not packaged.strip():
            return False
        return _write_private(h.root, "releases/COOKIE", packaged, 0o400, owner)
    return _write_private(h.root, "releases/COOKIE", data, 0o400, owner, strip=True)


def place_release(h, stage, vsn, rels, owner):
    """Move what the root lacks from the staged full release: new erts-*, new lib dirs,
    releases/VSN/ (bin/ is swapped later, when the node is down).  A lib dir that a release
    in RELEASES uses is never touched.  Returns the list of paths placed."""
    st = os.path.basename(stage["staging"])
    referenced = _referenced_libs(rels)
    placed = []
    for e in stage["erts_dirs"]:
        if _lstat_at(h.root, e) is None:
            move_in(h.hs, f"{st}/{e}", h.root, e, owner)
            placed.append(e)
    for d in ("lib", "releases"):
        os.close(safe_open_dir(h.root, d, create=True, mode=0o755, owner=owner))
    for ln in stage["pkg_libs"]:
        dst = f"lib/{ln}"
        if _lstat_at(h.root, dst) is not None:
            if ln in referenced:
                continue
            safe_rmtree(h.root, dst)  # left over from an unregistered attempt
        move_in(h.hs, f"{st}/{dst}", h.root, dst, owner)
        placed.append(dst)
    rdir = f"releases/{vsn}"
    registered = any(r["version"] == vsn for r in rels or [])
    have = _lstat_at(h.root, rdir)
    if have is not None and stat.S_ISDIR(have.st_mode) and registered:
        # keep what release_handler unpacked (relup...), add what the full release has on top
        placed += copy_tree_nofollow(h.hs, f"{st}/{rdir}", h.root, rdir, owner=owner, only_missing=True)
    else:
        safe_rmtree(h.root, rdir)
        move_in(h.hs, f"{st}/{rdir}", h.root, rdir, owner)
        placed.append(rdir)
    missing = [ln for ln in _rel_libs(stage["rel"]) if not os.path.isdir(h.p("lib", ln))]
    if missing:
        raise OpFailed(f"the release needs lib dirs that are neither on the host nor in the package: "
                       f"{', '.join(missing)}")
    if not os.path.isdir(h.p(f"erts-{stage['rel']['erts']}")) and stage["erts_dirs"]:
        raise OpFailed(f"the release needs erts-{stage['rel']['erts']}, which the package does not hold")
    return placed


def cmd_first_install(h, a):
    """first-install --package P --sha256 S --version V: place a full release into a new or empty root, write
    its boot files and the service, start it and health-check it; a failed first install leaves nothing
    running and can be retried."""
    vsn = a.version
    check = parse_check(a.check)
    with Lock(h, "first-install"):
        h.ensure_hs()
        pending = os.path.join(h.hs, "first-install.json")
        retry = os.path.exists(pending)
        rels = h.releases() if os.path.isdir(h.root) and not os.path.islink(h.root) else None
        perm = permanent_version(rels)
        installed = installed_by_agent(h) or rels is not None or os.path.lexists(h.p("bin", h.app))
        if installed and not retry:
            raise OpFailed(f"{h.app} is already installed in {h.root} ({perm or 'recorded by the agent in ' + h.hs}): "
                           f"use hot/cold", host_version=perm)
        if h.node_up():
            raise OpFailed(f"a node named {h.node_name()} is already running: stop it before a first install",
                           host_version=perm)
        owner = h.tree_owner()
        check_first_install_root(h, owner, retry)
        t0 = now_ms()
        stage = stage_full(h, a.package, a.sha256, vsn, owner)
        try:
            check_first_install_root(h, owner, retry, create=True)
            safe_write(h.hs, "first-install.json", json.dumps({"version": vsn, "sha256": a.sha256, "root": h.root}),
                       mode=0o600)
            st = os.path.basename(stage["staging"])
            for name in sorted(os.listdir(stage["staging"])):  # bin, erts-*, lib, releases
                _merge_move(h, st, name, owner)
        finally:
            rmtree(stage["staging"])
        rel = stage["rel"]
        # RELEASES before the node ever starts (relocatable, as create_RELEASES("", ...) writes it)
        h.write_releases([_releases_entry(h, rel, "permanent")])
        h.write_owned(os.path.join(h.rel_dir, "start_erl.data"), f"{rel['erts']} {vsn}\n")
        install_cookie(h, owner)
        os.close(safe_open_dir(h.root, "tmp", create=True, mode=0o750, owner=owner))
        save_bin(h, vsn)
        h.set_full_sha(vsn, a.sha256)
        place_ms = round(now_ms() - t0, 1)
        t_start = now_ms()
        stage_name = "start"
        try:
            started = start_node(h, start_timeout(a.timeout))
            stage_name = "health"
            ok, why = _gate(h, vsn, check, a.timeout, started)
            if not ok:
                raise OpFailed(f"health check ({check[0]}) failed: {why}")
        except OpFailed as e:
            try:
                stop_node(h, a.timeout)
            except OpFailed as e2:
                raise OpFailed(f"first install of {vsn} failed at {stage_name}: {e.msg}; and the node did not "
                               f"stop: {e2.msg}", stage=stage_name, changed=True, node_up=h.node_up())
            raise OpFailed(f"first install of {vsn} failed at {stage_name}: {e.msg}; node stopped, files left "
                           f"in {h.root} (re-run first-install or fix and `start`)",
                           stage=stage_name, changed=True, node_up=False, host_version=None)
        os.unlink(pending)
        return {"changed": True, "version": vsn, "from": None, "host_version": started.get("running"),
                "permanent": vsn, "start_ms": round(now_ms() - t_start, 1), "place_ms": place_ms,
                "os_pid": started.get("os_pid"), "service_manager": h.service_manager,
                "retried": retry}


def _merge_move(h, st, rel, owner=None):
    """Move the staged STAGING/rel (st: the staging dir's name in the agent's directory) to ROOT/rel through
    no-follow dir fds; directories on both sides are merged, anything else at ROOT/rel is replaced (a planted
    link is removed, never followed)."""
    src = os.lstat(os.path.join(h.hs, st, rel))
    dst = _lstat_at(h.root, rel)
    if stat.S_ISDIR(src.st_mode) and dst is not None and stat.S_ISDIR(dst.st_mode):
        for name in os.listdir(os.path.join(h.hs, st, rel)):
            _merge_move(h, st, f"{rel}/{name}", owner)
        return
    if dst is not None:
        safe_rmtree(h.root, rel)
    move_in(h.hs, f"{st}/{rel}", h.root, rel, owner)


def _restore_files(h, backup):
    for name in ("RELEASES", "start_erl.data"):
        b = os.path.join(backup, name)
        if os.path.exists(b):
            with open(b, encoding="utf-8") as fh:
                h.write_owned(os.path.join(h.rel_dir, name), fh.read())


def cold_switch(h, target, prev, check, timeout, owner, new_bin=None, was_up=None, settle=0):
    """Stop the node, make `target` the release that boots (RELEASES permanent + start_erl.data,
    bin/), start, health-gate, then watch it for ``settle`` seconds (alive, and healthy at the end).
    On failure: stop, restore RELEASES/start_erl.data/bin and start `prev` again (when the node was
    up before).  Returns the result dict or raises OpFailed."""
    rels = h.releases()
    entry = next((r for r in rels or [] if r["version"] == target), None)
    if entry is None:
        raise OpFailed(f"{target} is not registered in RELEASES")
    up = h.node_up() if was_up is None else was_up
    backup = os.path.join(h.hs, "cold-backup")
    rmtree(backup)
    os.makedirs(backup, mode=0o700)
    for name in ("RELEASES", "start_erl.data"):
        data = safe_read(h.root, f"releases/{name}", limit=16 << 20)  # never through a planted link
        if data is not None:
            safe_write(backup, name, data, mode=0o600)
    prev_bin = save_bin(h, prev)
    bin_src = new_bin or os.path.join(h.hs, "bin", target)
    t_down = now_ms()
    stopped = stop_node(h, timeout) if up else {"changed": False}
    stage = "switch"
    bin_swapped = False
    try:
        _make_permanent_offline(h, target)
        bin_swapped = swap_bin(h, bin_src, owner)
        if new_bin:
            save_bin(h, target, force=True)
        install_cookie(h, owner)
        stage = "start"
        started = start_node(h, start_timeout(timeout))
        stage = "health"
        ok, why = _gate(h, target, check, timeout, started)
        if not ok:
            raise OpFailed(f"health check ({check[0]}) failed: {why}")
        if settle and settle > 0:
            stage = "settle"
            fault_point(h, "after_start")
            why = _settle(h, target, started.get("os_pid"), settle, check, timeout, what="started")
            if why:
                raise OpFailed(why)
    except OpFailed as e:
        err = f"cold switch to {target} failed at {stage}: {e.msg}"
        info = {"stage": stage, "changed": True, "from": prev, "bin_swapped": bin_swapped}
        try:
            stop_node(h, timeout)
            _restore_files(h, backup)
            if bin_swapped and prev_bin:
                swap_bin(h, prev_bin, owner)
            if not up or prev == target:
                raise OpFailed(f"{err}; files restored ({prev} permanent), node left down",
                               reverted=True, host_version=prev, node_up=False, **info)
            back = start_node(h, start_timeout(timeout))
            ok = back.get("running") == prev
        except OpFailed as e2:
            if e2.extra.get("reverted"):
                raise
            raise OpFailed(f"{err}; RESTORING {prev} FAILED: {e2.msg}", reverted=False,
                           host_version=None, node_up=h.node_up(), **info)
        raise OpFailed(f"{err}; " + (f"reverted to {prev} (cold, state lost)" if ok
                                     else f"restarted but the node runs {back.get('running')}"),
                       reverted=ok, host_version=back.get("running"), os_pid=back.get("os_pid"),
                       downtime_ms=round(now_ms() - t_down, 1), **info)
    return {"changed": True, "from": prev, "version": target, "host_version": started.get("running"),
            "permanent": target, "mode": "cold", "downtime_ms": round(now_ms() - t_down, 1) if up else None,
            "start_ms": started.get("boot_ms"), "stop_ms": stopped.get("stop_ms"),
            "os_pid": started.get("os_pid"), "bin_swapped": bin_swapped, "state_lost": bool(up),
            "service_manager": h.service_manager}


def cmd_cold(h, a):
    """cold --package P --sha256 S --version V: stop the node, switch the root to V from its full tarball,
    start it and health-check it; on failure switch back to the release it had and start that."""
    vsn = a.version
    check = parse_check(a.check)
    with Lock(h, "cold"):
        rels = h.releases()
        if rels is None:
            raise OpFailed(f"no release is installed in {h.root} (releases/RELEASES is missing): use first-install")
        running, perm, up, _pid = running_and_permanent(h, rels)
        if up and running != perm:
            raise OpFailed(f"{running} runs but {perm} is permanent (an uncommitted hot install): "
                           f"commit or revert it first", host_version=running)
        if up and perm == vsn:
            return already_there(h, vsn, a, h.full_sha(vsn))
        owner = h.tree_owner()
        t0 = now_ms()
        stage = stage_full(h, a.package, a.sha256, vsn, owner)
        try:
            entry = next((r for r in rels if r["version"] == vsn), None)
            if entry is not None and entry["status"] in ("permanent", "current") and perm != vsn:
                raise OpFailed(f"{vsn} is {entry['status']} in RELEASES but {perm} is permanent")
            placed = place_release(h, stage, vsn, rels, owner)
            if entry is None:
                relative = all(not d.startswith("/") for r in rels for _ign, _ign, d in r["libs"])
                rels.insert(0, _releases_entry(h, stage["rel"], "unpacked", relative))
                h.write_releases(rels)
            h.set_full_sha(vsn, a.sha256)
            prep_ms = round(now_ms() - t0, 1)
            res = cold_switch(h, vsn, perm, check, a.timeout, owner, settle=a.settle,
                              new_bin=os.path.join(stage["staging"], "bin"), was_up=up)
        except OpFailed as e:
            e.extra.setdefault("version", vsn)
            e.extra.setdefault("from", perm)
            e.extra.setdefault("host_version", perm if not e.extra.get("changed") else None)
            raise
        finally:
            rmtree(stage["staging"])
        res.update(prep_ms=prep_ms, placed=placed)
        if a.keep:
            res["removed"] = do_prune(h, a.keep)
        return res


def _register_from_disk(h, vsn, rels):
    """A release whose files are on disk (releases/VSN/APP.rel + its lib dirs) but that RELEASES
    no longer lists: add it back as `old` so it can be booted."""
    raw = safe_read(h.root, f"releases/{vsn}/{h.app}.rel", limit=1 << 20)
    try:
        rel = parse_rel(raw.decode("utf-8")) if raw is not None else None
    except (TermError, ValueError, UnicodeDecodeError):
        rel = None
    if rel is None:
        return None
    if rel["version"] != vsn or rel["name"] != h.app:
        return None
    if any(not os.path.isdir(h.p("lib", ln)) for ln in _rel_libs(rel)) or not os.path.isdir(h.p(f"erts-{rel['erts']}")):
        return None
    relative = all(not d.startswith("/") for r in rels for _ign, _ign, d in r["libs"])
    entry = _releases_entry(h, rel, "old", relative)
    rels.append(entry)
    h.write_releases(rels)
    return entry


def cmd_rollback(h, a):
    """rollback --mode hot: over the relup's down edge (cold if that attempt fails, as revert does);
    refused, with nothing changed, when the relup has no down edge to OLD or the node is down (the plan
    decided hot; the agent does not quietly go cold instead).  rollback --mode cold: a cold switch to OLD
    using only what is on disk, ending with OLD running, healthy and permanent."""
    target = a.version
    with Lock(h, "rollback"):
        rels = h.releases()
        if rels is None:
            raise OpFailed(f"no release is installed in {h.root}")
        running, perm, up, _pid = running_and_permanent(h, rels)
        down = []
        if up:
            try:
                with open(h.p("releases", running, "relup"), encoding="utf-8") as fh:
                    down = relup_edges(fh.read())[1]
            except (OSError, TermError, ValueError, UnicodeDecodeError):
                down = []
        if a.mode == "hot" and up and target in down:
            res = do_revert(h, target, a.timeout, "hot", old_code=a)
            res.setdefault("from", running)
            if not res.get("reverted"):
                raise OpFailed(f"rollback to {target} failed; node runs {res.get('host_version')}", **res)
            return dict(res, version=target)
        if up and running != perm:
            # an uncommitted hot install: the permanent release is what a restart boots anyway
            perm = perm or running
        if up and running == target and perm == target:
            return {"changed": False, "version": target, "host_version": target, "mode": "cold", "reverted": True}
        if a.mode == "hot":
            why = f"the relup of {running} has no down edge to {target}" if up else "the node is down"
            raise OpFailed(f"a hot rollback to {target} is not possible: {why}; nothing changed (roll back with "
                           f"hotswap_mode=cold or auto)", changed=False, host_version=running if up else perm)
        if not any(r["version"] == target for r in rels) and _register_from_disk(h, target, rels) is None:
            raise OpFailed(f"{target} is not on this host (RELEASES lists {', '.join(r['version'] for r in rels)}, "
                           f"and releases/{target}/ is incomplete or missing)")
        res = cold_switch(h, target, perm, parse_check(a.check), a.timeout, h.tree_owner(), was_up=up,
                          settle=a.settle)
        return dict(res, reverted=True, node_was_up=up)
