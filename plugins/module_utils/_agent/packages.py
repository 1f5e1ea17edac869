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
from .names import check_vsn, ENV_KEY_RE
from .erlterms import parse_rel, TermError, valid_lib
from .files import (check_links, check_member, lchown_tree_at, package_damaged, READ_ERRORS, rmtree, safe_extract,
                    safe_open_dir, safe_read, safe_rename, safe_rmtree, safe_write, sha256_file)
from .state import drop_stale_staging, Lock


def _lstat_at(root, rel):
    """lstat of ROOT/rel through a no-follow opened parent, or None."""
    parts = rel.split("/")
    try:
        fd = safe_open_dir(root, "/".join(parts[:-1]))
    except OpFailed:
        return None
    try:
        return os.lstat(parts[-1], dir_fd=fd)
    except OSError:
        return None
    finally:
        os.close(fd)


def _write_private(root, rel, data, mode, owner=None, strip=False):
    """Write bytes `data` to ROOT/rel (no-follow temp file + rename, ``files.safe_write``) with `mode` and,
    when we are root, `owner` (uid, gid; None: root's); True when it changed.  A regular file with the same
    content (with `strip`: ignoring surrounding whitespace), mode and owner is left alone."""
    owner = tuple(owner) if owner is not None else (0, 0)
    st = _lstat_at(root, rel)
    if st is not None and stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) == mode \
            and (os.geteuid() != 0 or (st.st_uid, st.st_gid) == owner):
        old = safe_read(root, rel)
        if old is not None and (old.strip() == data.strip() if strip else old == data):
            return False
    safe_write(root, rel, data, owner=owner, mode=mode)
    return True


def copy_tree_nofollow(src_root, src_rel, dst_root, dst_rel, owner=None, only_missing=False, uid_only=None):
    """Copy the tree SRC_ROOT/src_rel to DST_ROOT/dst_rel through no-follow dir fds on both sides: symlinks
    are copied as links, regular files by content (O_NOFOLLOW), nothing else; no setuid/setgid bits; new
    entries chowned to ``owner`` (fchown/lchown on what was created).  ``only_missing``: entries already
    at the destination are kept.  ``uid_only``: source files not owned by that uid are skipped (a hard link
    the node's user planted to someone else's file is never copied).  Returns the paths created."""
    made = []
    sfd = safe_open_dir(src_root, src_rel)
    try:
        dfd = safe_open_dir(dst_root, dst_rel, create=True, mode=0o755, owner=owner)
    except BaseException:
        os.close(sfd)
        raise
    try:
        for name in sorted(os.listdir(sfd)):
            st = os.lstat(name, dir_fd=sfd)
            if only_missing and _lstat_at(dst_root, f"{dst_rel}/{name}") is not None and not stat.S_ISDIR(st.st_mode):
                continue
            if stat.S_ISDIR(st.st_mode):
                made += copy_tree_nofollow(src_root, f"{src_rel}/{name}", dst_root, f"{dst_rel}/{name}", owner,
                                           only_missing, uid_only)
            elif stat.S_ISLNK(st.st_mode):
                os.symlink(os.readlink(name, dir_fd=sfd), name, dir_fd=dfd)
                if owner is not None and os.geteuid() == 0:
                    os.chown(name, *owner, dir_fd=dfd, follow_symlinks=False)
                made.append(f"{dst_rel}/{name}")
            elif stat.S_ISREG(st.st_mode):
                fin = os.open(name, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0), dir_fd=sfd)
                with os.fdopen(fin, "rb") as fi:
                    fst = os.fstat(fin)  # what was opened, not what lstat saw (the tree may change meanwhile)
                    if not stat.S_ISREG(fst.st_mode) or (uid_only is not None and fst.st_uid != uid_only):
                        continue
                    safe_write(dst_root, f"{dst_rel}/{name}", fi.read(), owner=owner,
                               mode=stat.S_IMODE(fst.st_mode) & 0o755 | 0o600)
                made.append(f"{dst_rel}/{name}")
    finally:
        os.close(sfd)
        os.close(dfd)
    return made


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
            if not isinstance(k, str) or not ENV_KEY_RE.fullmatch(k):
                raise BadInput(f"hotswap_env {k!r}: a name is letters, digits and _ (not starting with a digit), "
                               f"nothing else around it; nothing changed")
            if isinstance(v, bool) or not isinstance(v, (str, int)) or any(c in str(v) for c in "\n\r\0"):
                raise BadInput(f"hotswap_env {k}: the value must be one line of text (no newline, carriage return "
                               f"or NUL; a number is fine), and is passed exactly as given; nothing changed")
        env = {k: str(v) for k, v in env.items()}
        h.ensure_hs()
        text = "".join(f"{k}={v}\n" for k, v in sorted(env.items()))
        if _write_private(h.hs, "env", text.encode("utf-8"), 0o600):
            changed.append("env")
    if cookie:
        if not isinstance(cookie, str) or any(c in cookie for c in "\n\r\0"):
            raise BadInput("the cookie must be one line of text")
        h.ensure_hs()
        if _write_private(h.hs, "cookie", cookie.encode("utf-8"), 0o400):
            changed.append("cookie")
    return changed


def store_package(h, path, sha, name):
    """Verify an uploaded package and keep it as STATE/packages/SHA256-NAME (0600: a full tarball holds the
    release's default cookie); returns that path."""
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
    os.makedirs(os.path.dirname(dest), mode=0o700, exist_ok=True)
    try:
        os.chmod(path, 0o600)
        os.replace(path, dest)
    except OSError as e:
        if e.errno != errno.EXDEV:
            raise
        # uploaded to another filesystem (a temp dir): copy beside the destination, then rename
        tmp = dest + ".part"
        shutil.copyfile(path, tmp)
        os.chmod(tmp, 0o600)
        os.replace(tmp, dest)
        os.unlink(path)
    return dest


def move_in(src_root, src_rel, dst_root, dst_rel, owner=None):
    """Move the staged SRC_ROOT/src_rel (root's, trusted) to DST_ROOT/dst_rel through no-follow dir fds: a
    rename, or when the two are on different filesystems (the agent's directory is beside the root, which may
    be a mount point of its own) a no-follow copy to a temp name beside the destination, chowned to
    ``owner``, renamed into place; the staged copy is removed then."""
    try:
        safe_rename(src_root, src_rel, dst_root, dst_rel)
        return
    except OSError as e:
        if e.errno != errno.EXDEV:
            raise
    parent, _sep, name = dst_rel.rpartition("/")
    tmp = f"{parent}/.{name}.hotswap-new" if parent else f".{name}.hotswap-new"
    src = os.path.join(src_root, src_rel)
    st = os.lstat(src)
    safe_rmtree(dst_root, tmp)
    try:
        if stat.S_ISDIR(st.st_mode):
            copy_tree_nofollow(src_root, src_rel, dst_root, tmp, owner=owner)
        elif stat.S_ISLNK(st.st_mode):
            fd = safe_open_dir(dst_root, parent)
            try:
                os.symlink(os.readlink(src), tmp.rpartition("/")[2], dir_fd=fd)
                if owner is not None and os.geteuid() == 0:
                    os.chown(tmp.rpartition("/")[2], *owner, dir_fd=fd, follow_symlinks=False)
            finally:
                os.close(fd)
        else:
            with open(src, "rb") as fh:
                safe_write(dst_root, tmp, fh.read(), owner=owner, mode=stat.S_IMODE(st.st_mode) & 0o755)
        safe_rename(dst_root, tmp, dst_root, dst_rel)
    except BaseException:
        safe_rmtree(dst_root, tmp)
        raise
    rmtree(src)


def _referenced_libs(rels, skip_vsn=None):
    return {os.path.basename(d.rstrip("/")) for r in rels or [] if r["version"] != skip_vsn for _ign, _ign, d in r["libs"]}


def _remove_files_of(h, vsn, rels, lib_names):
    """Python removal of a release's dirs not used by any other release."""
    keep = _referenced_libs(rels, skip_vsn=vsn)
    removed = []
    for ln in lib_names:
        if ln not in keep and valid_lib(*ln.rpartition("-")[::2]) and os.path.isdir(h.p("lib", ln)):
            safe_rmtree(h.root, "lib/" + ln)
            removed.append("lib/" + ln)
    for x in (f"releases/{check_vsn(vsn)}", f"releases/{h.app}-{vsn}.rel"):
        if os.path.lexists(h.p(x)):
            safe_rmtree(h.root, x)
            removed.append(x)
    return removed


def package_rel(tf, members, rel_name, app, vsn):
    """The .rel member ``rel_name`` of an open package, parsed and checked to describe ``app`` ``vsn``."""
    relm = next(m for m, r in members if r == rel_name)
    try:
        rel = parse_rel(tf.extractfile(relm).read().decode("utf-8"))
    except (TermError, ValueError, UnicodeDecodeError, AttributeError) as e:
        raise PackageRefused(f"package refused: {rel_name} unreadable ({e}); nothing changed")
    if rel["version"] != vsn or rel["name"] != app:
        raise PackageRefused(f"package refused: {rel_name} describes {rel['name']} {rel['version']}, "
                             f"expected {app} {vsn}; nothing changed")
    return rel


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
    drop_stale_staging(h)
    tf, members = open_verified(package, sha, lambda m: check_member(m, h.app, vsn))
    with tf:
        names = {rel for _ign, rel in members}
        top_rel = f"releases/{h.app}-{vsn}.rel"
        if top_rel not in names:
            raise PackageRefused(f"package refused: {top_rel} missing (release_handler format); nothing changed")
        if not any(n.startswith(f"releases/{vsn}/") for n in names):
            raise PackageRefused(f"package refused: releases/{vsn}/ missing; nothing changed")
        rel = package_rel(tf, members, top_rel, h.app, vsn)
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
                safe_rmtree(h.root, x)
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
    """Bytes free where the package lands: the least of the agent's directory and the root (two filesystems
    when the root is a mount point of its own), None when neither can be asked."""
    free = []
    for d in (h.hs, h.root):
        try:
            st = os.statvfs(d)
            free.append(st.f_bavail * st.f_frsize)
        except OSError:
            continue
    return min(free) if free else None


def _unpack_into_root(h, tf, members, staging, pkg_libs, referenced, vsn, top_rel, moved, cleaned):
    """Extract into a private staging dir, then rename into the root through no-follow dir fds (a planted
    link in lib/ or releases/ is refused, never followed); on any error, what was moved is taken out again
    and the staging dir removed."""
    rmtree(staging)
    st = os.path.basename(staging)
    try:
        os.makedirs(staging, mode=0o700)
        safe_extract(tf, members, staging)
        uid, gid = h.tree_owner()
        lchown_tree_at(h.hs, st, uid, gid, top=False)
        for ln in pkg_libs:
            dst = f"lib/{ln}"
            if os.path.lexists(h.p(dst)):
                if ln in referenced:
                    continue  # never overwrite a lib dir another release uses
                safe_rmtree(h.root, dst)
                cleaned.append(dst)
            move_in(h.hs, f"{st}/{dst}", h.root, dst, (uid, gid))
            moved.append(h.p(dst))
        for x in (f"releases/{vsn}", top_rel):
            move_in(h.hs, f"{st}/{x}", h.root, x, (uid, gid))
            moved.append(h.p(x))
        keep_package_bin(h, st, vsn)
    except BaseException:
        for x in moved:
            safe_rmtree(h.root, x)
        del moved[:]
        raise
    finally:
        rmtree(staging)


def keep_package_bin(h, st, vsn):
    """The version's start scripts from its package (staged in the agent's ST/bin) become the agent's
    bin/VSN, root's: made ROOT/bin when VSN becomes the release that boots (bins.boot_bin)."""
    if _lstat_at(h.hs, f"{st}/bin") is None:
        return
    dst = os.path.join(h.hs, "bin", vsn)
    os.close(safe_open_dir(h.hs, "bin", create=True, mode=0o700))
    rmtree(dst + ".tmp")
    copy_tree_nofollow(h.hs, f"{st}/bin", h.hs, f"bin/{vsn}.tmp")
    rmtree(dst)
    os.rename(dst + ".tmp", dst)


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
        safe_rmtree(h.root, x)


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
