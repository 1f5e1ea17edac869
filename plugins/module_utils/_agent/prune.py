"""Pruning: old releases beyond --keep (never the permanent, running, booted or rollback one) and stale
uploads, over release_handler while the node runs, from the files when it is down.
"""

import os
import time

from .errors import BadInput, OpFailed
from .names import valid_version, vsn_key
from .erlterms import permanent_version
from .files import rmtree, safe_rmtree
from .state import drop_stale_staging, Lock
from .packages import _remove_files_of


def _drop_stale_uploads(h, age_s=3600):
    """Uploads a failed or interrupted run left in .hotswap/ (.upload-*.part, older than an hour)."""
    try:
        names = os.listdir(h.hs)
    except OSError:
        return
    for n in names:
        f = os.path.join(h.hs, n)
        try:
            if n.startswith(".upload-") and n.endswith(".part") and time.time() - os.lstat(f).st_mtime > age_s:
                os.unlink(f)
        except OSError:
            pass


def do_prune(h, keep):
    """Remove releases beyond the newest ``keep`` (never the permanent, running, booted or previous one);
    returns the versions removed."""
    _drop_stale_uploads(h)
    drop_stale_staging(h)
    rels = h.releases()
    if not rels:
        return []
    up = h.node_up()
    perm = permanent_version(rels)
    protected = {perm}
    pid, boot = h.os_pid() if up else (None, None)
    rec = h.installed_record()
    if up:
        protected.add(boot)  # its consolidated dir stays on the code path
        if rec:
            protected.add(rec.get("version"))
    if perm:
        older = sorted((r["version"] for r in rels if vsn_key(r["version"]) < vsn_key(perm)), key=vsn_key)
        if older:
            protected.add(older[-1])  # rollback target
    cands = sorted((r["version"] for r in rels if r["version"] not in protected), key=vsn_key)
    remove = []
    total = len(rels)
    for v in cands:
        if total <= keep:
            break
        remove.append(v)
        total -= 1
    if not remove:
        return []
    if up:
        r = h.rpc("remove", remove=remove, timeout=60)
        # the node's reply becomes paths: only versions we asked to remove, each a valid version
        removed = [v for v in r.get("removed") or [] if v in remove and valid_version(v)]
        for v in removed:
            safe_rmtree(h.root, f"releases/{h.app}-{v}.rel")
            rmtree(os.path.join(h.hs, "bin", v))
            h.set_sha_record(v, None)
            h.set_full_sha(v, None)
        if not r.get("ok"):
            raise OpFailed(f"prune: {r.get('error')}", removed=removed)
        return removed
    for v in remove:
        entry = next(r for r in rels if r["version"] == v)
        rels = [r for r in rels if r["version"] != v]
        _remove_files_of(h, v, rels, [os.path.basename(d.rstrip("/")) for _ign, _ign, d in entry["libs"]])
        h.write_releases(rels)
        h.set_sha_record(v, None)
        h.set_full_sha(v, None)
        rmtree(os.path.join(h.hs, "bin", v))
    return remove


def cmd_prune(h, a):
    """prune --keep N: remove old releases (see ``do_prune``)."""
    if a.keep is None:
        raise BadInput("prune needs --keep N")
    if a.keep < 1:
        raise BadInput("--keep must be >= 1")
    with Lock(h, "prune"):
        removed = do_prune(h, a.keep)
        return {"changed": bool(removed), "removed": removed}
