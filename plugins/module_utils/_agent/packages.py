"""Packages: the node's settings (env and cookie, private files), storing an uploaded package, verifying
and opening it, unpacking an upgrade package into the root (space check, undo), and `unpack`.
"""

import errno
import os
import re
import shutil
import stat
import tarfile

from .errors import BadInput, OpFailed, PackageRefused
from .names import ENV_KEY_RE
from .erlterms import parse_rel, TermError
from .files import check_links, check_member, chown_tree, package_damaged, READ_ERRORS, rmtree, safe_extract, sha256_file
from .state import Lock


def _write_private(path, data, mode, owner=(0, 0), strip=False):
    """Write bytes `data` to `path` (temp file + rename) with `mode` and, when we are root, `owner`
    (uid, gid); True when it changed.  A regular file with the same content (with `strip`: ignoring
    surrounding whitespace), mode and owner is left alone."""
    try:
        st = os.lstat(path)
        if stat.S_ISREG(st.st_mode):
            with open(path, "rb") as fh:
                old = fh.read()
            if (old.strip() == data.strip() if strip else old == data) and stat.S_IMODE(st.st_mode) == mode \
                    and (os.geteuid() != 0 or (st.st_uid, st.st_gid) == tuple(owner)):
                return False
    except OSError:
        pass
    tmp = path + ".hotswap-tmp"
    if os.path.lexists(tmp):
        os.unlink(tmp)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.write(fd, data)
        os.fchmod(fd, mode)
        if os.geteuid() == 0:
            os.fchown(fd, *owner)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    return True


def apply_settings(h, settings):
    """Write the node's environment (.hotswap/env, 0600) and cookie (.hotswap/cookie, 0400) when they
    differ; never echoes either.  Returns the names of the files that changed."""
    if not isinstance(settings, dict):
        raise BadInput("settings must be a JSON object")
    changed = []
    env, cookie = settings.get("env"), settings.get("cookie")
    if env:
        if not isinstance(env, dict):
            raise BadInput("settings env must be an object of NAME: value")
        for k, v in env.items():
            if not ENV_KEY_RE.match(str(k)) or any(c in str(v) for c in "\n\r\0"):
                raise BadInput(f"hotswap_env {k!r}: names are letters, digits and _; values are one line")
        h.ensure_hs()
        text = "".join(f"{k}={v}\n" for k, v in sorted(env.items()))
        if _write_private(os.path.join(h.hs, "env"), text.encode("utf-8"), 0o600):
            changed.append("env")
    if cookie:
        if not isinstance(cookie, str) or any(c in cookie for c in "\n\r\0"):
            raise BadInput("the cookie must be one line of text")
        h.ensure_hs()
        if _write_private(os.path.join(h.hs, "cookie"), cookie.encode("utf-8"), 0o400):
            changed.append("cookie")
    return changed


def store_package(h, path, sha, name):
    """Verify an uploaded package and keep it as .hotswap/packages/SHA256-NAME (0644); returns that path."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,200}", name or ""):
        raise BadInput(f"--store-package {name!r} is not a plain file name")
    dest = os.path.join(h.hs, "packages", f"{sha}-{name}")
    if os.path.abspath(path) == dest:
        return dest
    if os.path.isfile(dest) and sha256_file(dest) == sha:
        os.unlink(path)
        return dest
    got = sha256_file(path) if os.path.isfile(path) else None
    if got != sha:
        raise OpFailed(f"package {path} refused: sha256 is {got}, expected {sha}; nothing changed", changed=False)
    os.makedirs(os.path.dirname(dest), mode=0o755, exist_ok=True)
    try:
        os.chmod(path, 0o644)
        os.replace(path, dest)
    except OSError as e:
        if e.errno != errno.EXDEV:
            raise
        # uploaded to another filesystem (a temp dir): copy beside the destination, then rename
        tmp = dest + ".part"
        shutil.copyfile(path, tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, dest)
        os.unlink(path)
    return dest


def _referenced_libs(rels, skip_vsn=None):
    return {os.path.basename(d.rstrip("/")) for r in rels or [] if r["version"] != skip_vsn for _ign, _ign, d in r["libs"]}


def _remove_files_of(h, vsn, rels, lib_names):
    """Python removal of a release's dirs not used by any other release."""
    keep = _referenced_libs(rels, skip_vsn=vsn)
    removed = []
    for ln in lib_names:
        if ln not in keep and os.path.isdir(h.p("lib", ln)):
            rmtree(h.p("lib", ln))
            removed.append("lib/" + ln)
    for x in (h.p("releases", vsn), h.p("releases", f"{h.app}-{vsn}.rel")):
        if os.path.lexists(x):
            rmtree(x)
            removed.append(os.path.relpath(x, h.root))
    return removed


def open_verified(package, sha, check):
    """Verify a package's sha256 FIRST, then open it and check every entry with ``check`` (which raises
    for an unsafe entry and returns the entry's path in the root, or None to skip it).
    Returns (tarfile, [(member, path)]); the caller closes the tarfile."""
    if not os.path.isfile(package):
        raise OpFailed(f"package {package} does not exist; nothing changed")
    got = sha256_file(package)
    if got != sha:
        raise OpFailed(f"package {package} refused: sha256 is {got}, expected {sha}; nothing changed",
                       sha256_actual=got)
    try:
        tf = tarfile.open(package, "r:*")
    except READ_ERRORS as e:
        raise package_damaged(package, e) from None
    except OSError as e:
        raise OpFailed(f"package {package} is not a readable tar archive ({e}); nothing changed")
    try:
        members = [(m, rel) for m in tf.getmembers() for rel in [check(m)] if rel]
        check_links(members)
    except READ_ERRORS as e:
        tf.close()
        raise package_damaged(package, e) from None
    except BaseException:
        tf.close()
        raise
    return tf, members


def prepare_unpack(h, package, sha, vsn, node_up, running=None):
    """Verify + stage + move the package into the root.  Returns a dict:
    {"changed", "noop", "rel_file" (to register, or None), "moved": [...], "cleaned": [...]}.
    Registration with release_handler is the caller's job (rpc or write_releases)."""
    tf, members = open_verified(package, sha, lambda m: check_member(m, h.app, vsn))
    with tf:
        names = {rel for _ign, rel in members}
        top_rel = f"releases/{h.app}-{vsn}.rel"
        if top_rel not in names:
            raise PackageRefused(f"package refused: {top_rel} missing (release_handler format); nothing changed")
        if not any(n.startswith(f"releases/{vsn}/") for n in names):
            raise PackageRefused(f"package refused: releases/{vsn}/ missing; nothing changed")
        relm = next(m for m, rel in members if rel == top_rel)
        try:
            rel = parse_rel(tf.extractfile(relm).read().decode("utf-8"))
        except (TermError, ValueError, UnicodeDecodeError, AttributeError) as e:
            raise PackageRefused(f"package refused: {top_rel} unreadable ({e}); nothing changed")
        if rel["version"] != vsn or rel["name"] != h.app:
            raise PackageRefused(f"package refused: {top_rel} describes {rel['name']} {rel['version']}, "
                                 f"expected {h.app} {vsn}; nothing changed")
        if not os.path.isdir(h.p("erts-" + rel["erts"])):
            raise OpFailed(f"package needs ERTS {rel['erts']} which {h.root} lacks: not hot-upgradable, "
                           f"use the cold path; nothing changed")
        lib_names = [f"{a}-{v}" for a, v in rel["apps"]]
        pkg_libs = sorted({rel_.split("/")[1] for rel_ in names if rel_.startswith("lib/") and rel_.count("/") >= 1
                           and rel_ != "lib"})
        rels = h.releases()
        entry = next((r for r in rels or [] if r["version"] == vsn), None)
        recorded = h.sha_record(vsn)
        cleaned = []
        if entry is not None:
            installed = entry["status"] in ("permanent", "current") or running == vsn
            if recorded == sha or (recorded is None and installed):
                missing = [ln for ln in lib_names if not os.path.isdir(h.p("lib", ln))]
                if not missing and os.path.isdir(h.p("releases", vsn)):
                    return {"changed": False, "noop": True, "rel_file": None, "moved": [], "cleaned": [],
                            "status": entry["status"]}
            if installed:
                raise OpFailed(f"{vsn} is installed ({entry['status']}) from another package "
                               f"(sha256 {recorded}); a running release cannot be replaced: "
                               f"publish a new version", sha256_recorded=recorded)
            # stale unpack (other checksum or missing dirs): remove so it can be retried
            if node_up:
                r = h.rpc("remove", remove=[vsn], timeout=60)
                if not r.get("ok"):
                    raise OpFailed(f"cannot remove stale unpacked {vsn}: {r.get('error')}")
                cleaned.append(f"release_handler:remove_release({vsn})")
                rels = h.releases()
            else:
                rels = [r for r in rels if r["version"] != vsn]
                h.write_releases(rels)
            cleaned += _remove_files_of(h, vsn, rels, set(lib_names) | set(pkg_libs))
        elif os.path.lexists(h.p("releases", vsn)) or os.path.lexists(h.p("releases", f"{h.app}-{vsn}.rel")):
            cleaned += _remove_files_of(h, vsn, rels, set(pkg_libs))
        h.set_sha_record(vsn, None)

        referenced = _referenced_libs(rels)
        need, free = _space_needed(members), _space_free(h)
        if free is not None and need > free:
            raise OpFailed(f"no space left on device while unpacking {vsn} into {h.root}: it needs about "
                           f"{need // 1024} KB, {free // 1024} KB are free; nothing changed",
                           space_needed_kb=need // 1024, space_free_kb=free // 1024, cleaned=cleaned)
        staging = os.path.join(h.hs, f"staging-{os.getpid()}")
        moved = []
        try:
            _unpack_into_root(h, tf, members, staging, pkg_libs, referenced, vsn, top_rel, moved, cleaned)
        except OSError as e:
            if e.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            raise OpFailed(f"no space left on device while unpacking {vsn} into {h.root} ({e.strerror}); "
                           f"partial files removed; nothing changed", cleaned=cleaned) from None
        missing = [ln for ln in lib_names if not os.path.isdir(h.p("lib", ln))]
        if missing:
            for x in moved:
                rmtree(x)
            raise OpFailed(f"package refused: the release needs lib dirs that are neither on the host nor in "
                           f"the package: {', '.join(missing)}; nothing changed")
        return {"changed": True, "noop": False, "rel_file": h.p(top_rel), "moved": moved, "cleaned": cleaned,
                "rel": rel}


def _space_needed(members, block=4096):
    """Bytes the members take on disk (each file, and each hard link -- extracted as a copy -- rounded up to a
    block, a block per dir/symlink) + slack."""
    need = 64 * 1024
    sizes = {_rel: m.size for m, _rel in members if m.isfile()}
    for m, _rel in members:
        size = m.size if m.isfile() else sizes.get("/".join(x for x in m.linkname.split("/") if x not in ("", ".")), 0) \
            if m.islnk() else 0  # a hard link is extracted as a copy of its file
        need += ((size + block - 1) // block) * block if size else block
    return need


def _space_free(h):
    for d in (h.hs, h.root):
        try:
            st = os.statvfs(d)
            return st.f_bavail * st.f_frsize
        except OSError:
            continue
    return None


def _unpack_into_root(h, tf, members, staging, pkg_libs, referenced, vsn, top_rel, moved, cleaned):
    """Extract into a private staging dir, then rename into the root; on any error, what was
    moved is taken out again and the staging dir removed."""
    rmtree(staging)
    try:
        os.makedirs(staging, mode=0o700)
        safe_extract(tf, members, staging)
        uid, gid = h.owner()
        chown_tree(staging, uid, gid)
        for ln in pkg_libs:
            dst = h.p("lib", ln)
            if os.path.lexists(dst):
                if ln in referenced:
                    continue  # never overwrite a lib dir another release uses
                rmtree(dst)
                cleaned.append("lib/" + ln)
            os.rename(os.path.join(staging, "lib", ln), dst)
            moved.append(dst)
        os.rename(os.path.join(staging, "releases", vsn), h.p("releases", vsn))
        moved.append(h.p("releases", vsn))
        os.rename(os.path.join(staging, top_rel), h.p(top_rel))
        moved.append(h.p(top_rel))
    except BaseException:
        for x in moved:
            rmtree(x)
        del moved[:]
        raise
    finally:
        rmtree(staging)


def register_offline(h, vsn, rel):
    """Node down: add the release to RELEASES as release_handler:set_unpacked would."""
    rels = h.releases()
    if rels is None:
        raise OpFailed(f"{h.rel_dir}/RELEASES is missing: first-install must create it before upgrades")
    relative = all(not d.startswith("/") for r in rels for _ign, _ign, d in r["libs"]) and bool(rels)
    libs = [(a, v, f"lib/{a}-{v}" if relative else h.p("lib", f"{a}-{v}")) for a, v in rel["apps"]]
    rels.insert(0, {"name": rel["name"], "version": vsn, "erts": rel["erts"], "libs": libs, "status": "unpacked"})
    h.write_releases(rels)


def undo_unpack(h, prep):
    """Take the files an unpack placed back out of the root (the version can then be unpacked again)."""
    for x in prep.get("moved", []):
        rmtree(x)


def cmd_unpack(h, a):
    """unpack --package P --sha256 S --version V: verify the upgrade package and place its release in the
    root (registered with release_handler when the node is up, in RELEASES when it is down)."""
    vsn = a.version
    up = h.node_up()
    with Lock(h, "unpack"):
        prep = prepare_unpack(h, a.package, a.sha256, vsn, up)
        if prep["noop"]:
            return {"changed": False, "version": vsn, "status": prep["status"]}
        if up:
            r = h.rpc("unpack", vsn=vsn, rel_file=prep["rel_file"], timeout=60)
            if not r.get("ok"):
                undo_unpack(h, prep)
                raise OpFailed(f"release_handler refused {vsn}: {r.get('error')}; files removed again, "
                               f"nothing changed", node=r)
        else:
            try:
                register_offline(h, vsn, prep["rel"])
            except BaseException:
                undo_unpack(h, prep)
                raise
        h.set_sha_record(vsn, a.sha256)
        return {"changed": True, "version": vsn, "cleaned": prep["cleaned"], "registered": "rpc" if up else "file"}
