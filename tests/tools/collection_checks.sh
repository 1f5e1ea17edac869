#!/usr/bin/env bash
# The collection checks of `make collection-checks` (README "Testing", docs/execution-environment.md),
# on the collection tarball `ansible-galaxy collection build` makes from the tracked files:
#   1. galaxy-importer (its ansible-doc and ansible-lint passes; container and network parts off);
#   2. antsibull-docs lint-collection-docs --plugin-docs;
#   3. ansible-builder create on meta/execution-environment.yml, and ansible-builder introspect reading
#      the collection's dependency files the way an EE build that includes beam.hotswap does.
# Usage: collection_checks.sh TOOLS_BIN (the bin directory of the venv holding the pinned tools).
# Every tool must be there: a missing one fails the run, nothing is skipped.
set -euo pipefail

tools_bin=${1:?usage: collection_checks.sh TOOLS_BIN}
repo=$(pwd)
fail() { echo "collection-checks: FAIL: $*" >&2; exit 1; }

for tool in python ansible ansible-galaxy ansible-doc ansible-lint ansible-builder antsibull-docs; do
  [ -x "$tools_bin/$tool" ] || fail "$tools_bin/$tool is missing (make collection-checks installs the tools)"
done
"$tools_bin/python" -c 'import galaxy_importer' 2>/dev/null || fail "galaxy-importer is not installed in $tools_bin/.."

# The tools and nothing else: not the project venv's ansible, not the checkout's collection link.
export PATH="$tools_bin:$PATH"
unset ANSIBLE_COLLECTIONS_PATH ANSIBLE_COLLECTIONS_PATHS ANSIBLE_CONFIG PYTHONPATH
for v in $(compgen -e); do
  case $v in GALAXY_IMPORTER_*) unset "$v" ;; esac
done

tmp=$(mktemp -d -t beam-hotswap-checks.XXXXXX)
trap 'rm -rf "$tmp"' EXIT

start=$SECONDS
step_start=$SECONDS
step() {
  echo "collection-checks: $1 took $((SECONDS - step_start)) s"
  step_start=$SECONDS
}

# --- the tarball, built from what git lists (tracked and new files, not ignored ones: no venvs, no output)
mkdir -p "$tmp/src" "$tmp/dist"
git ls-files -z --cached --others --exclude-standard | tar --null -T - -cf - | tar -xf - -C "$tmp/src"
ansible-galaxy collection build "$tmp/src" --output-path "$tmp/dist" >/dev/null
tarballs=("$tmp"/dist/beam-hotswap-*.tar.gz)
if [ ${#tarballs[@]} -ne 1 ] || [ ! -f "${tarballs[0]}" ]; then
  fail "ansible-galaxy collection build made no single beam-hotswap tarball"
fi
tarball=${tarballs[0]}
coll=$tmp/collections/ansible_collections/beam/hotswap
mkdir -p "$coll"
tar -xzf "$tarball" -C "$coll"
step "ansible-galaxy collection build ($(basename "$tarball"))"

# --- galaxy-importer: exit status 0 is not enough, it logs lint findings and skipped passes as warnings
mkdir -p "$tmp/importer"
rc=0
(
  cd "$tmp/importer"
  GALAXY_IMPORTER_CONFIG="$repo/tests/tools/galaxy-importer.cfg" GALAXY_IMPORTER_TMP_ROOT_DIR="$tmp" \
    GALAXY_IMPORTER_ANSIBLE_LOCAL_TMP="$tmp/ansible-tmp" python -m galaxy_importer.main "$tarball"
) >"$tmp/importer.log" 2>&1 || rc=$?
grep -v '^Loading ' "$tmp/importer.log" | sed 's/^/  galaxy-importer| /'
[ "$rc" -eq 0 ] || fail "galaxy-importer exited with $rc"
if grep -Eq '^(WARNING|ERROR|CRITICAL):' "$tmp/importer.log"; then
  fail "galaxy-importer reported warnings or errors (above)"
fi
for line in 'Getting doc strings via ansible-doc' '...ansible-lint run complete' 'Importer processing completed successfully'; do
  grep -qxF "$line" "$tmp/importer.log" || fail "galaxy-importer's log lacks '$line': a pass did not run"
done
python - "$tmp/importer/importer_result.json" "$coll" <<'PY' || fail "galaxy-importer's result lacks documentation (above)"
import json, os, sys

result = json.load(open(sys.argv[1]))
coll = sys.argv[2]
missing = []
for c in result["docs_blob"]["contents"]:
    kind, name = c["content_type"], c["content_name"]
    if kind in ("module", "filter") or (kind == "test" and os.path.exists(os.path.join(coll, "plugins/test", name + ".yml"))):
        if not c.get("doc_strings"):
            missing.append("%s %s: no documentation from ansible-doc" % (kind, name))
    if kind == "role" and not c.get("readme_html"):
        missing.append("role %s: no README" % name)
for m in missing:
    print("collection-checks: " + m, file=sys.stderr)
sys.exit(1 if missing else 0)
PY
step "galaxy-importer (ansible-doc, ansible-lint)"

# --- antsibull-docs: the docs of every plugin, module and role (through ansible-doc), links and markup
antsibull-docs lint-collection-docs --plugin-docs "$coll" || fail "antsibull-docs lint-collection-docs reported problems (above)"
step "antsibull-docs lint-collection-docs --plugin-docs"

# --- ansible-builder: the EE build context. The paths in meta/execution-environment.yml are relative to the
# collection root (what introspection expects), so the definition is used from the unpacked tarball's root.
ee=$tmp/ee-src
ctx=$tmp/ee-context
cp -r "$coll" "$ee"
cp "$ee/meta/execution-environment.yml" "$ee/execution-environment.yml"
ansible-builder create -f "$ee/execution-environment.yml" -c "$ctx" --output-filename Containerfile >/dev/null \
  || fail "ansible-builder create failed on meta/execution-environment.yml"
[ -s "$ctx/Containerfile" ] || fail "ansible-builder create wrote no Containerfile"
cmp -s "$ctx/_build/requirements.txt" "$coll/meta/ee-requirements.txt" \
  || fail "the build context's _build/requirements.txt is not meta/ee-requirements.txt"
cmp -s "$ctx/_build/bindep.txt" "$coll/meta/ee-bindep.txt" \
  || fail "the build context's _build/bindep.txt is not meta/ee-bindep.txt"
for ref in 'COPY _build/requirements.txt' 'COPY _build/bindep.txt' 'ansible-core>=2.19,<2.20' \
  'COPY _build/beam.hotswap/ /usr/share/ansible/collections/ansible_collections/beam/hotswap/'; do
  grep -qF "$ref" "$ctx/Containerfile" || fail "the Containerfile lacks '$ref'"
done
# the collection the image gets: every file of the tarball under meta/, plugins/, roles/, playbooks/, and
# loadable by ansible-doc from there
python - "$coll/FILES.json" "$ctx/_build/beam.hotswap" <<'PY' || fail "the build context's copy of the collection is incomplete"
import json, os, sys

files = [f["name"] for f in json.load(open(sys.argv[1]))["files"] if f["ftype"] == "file"]
wanted = [f for f in files if f.split("/")[0] in ("meta", "plugins", "roles", "playbooks")] + ["MANIFEST.json", "FILES.json"]
missing = [f for f in wanted if not os.path.isfile(os.path.join(sys.argv[2], f))]
for f in missing:
    print("collection-checks: not in the EE build context: " + f, file=sys.stderr)
sys.exit(1 if missing or len(wanted) < 10 else 0)
PY
mkdir -p "$tmp/ee-collections/ansible_collections/beam"
ln -s "$ctx/_build/beam.hotswap" "$tmp/ee-collections/ansible_collections/beam/hotswap"
ANSIBLE_COLLECTIONS_PATH="$tmp/ee-collections" ansible-doc -t module beam.hotswap.release >/dev/null \
  || fail "ansible-doc cannot load beam.hotswap.release from the EE build context's copy"
# an EE that includes beam.hotswap from elsewhere: ansible-builder reads these dependency files from the
# installed collection (introspection), which galaxy-importer checked above as well
ansible-builder introspect "$tmp/collections" >"$tmp/introspect.yml" || fail "ansible-builder introspect failed"
for dep in jinja2 'openssh-client [platform:dpkg]' 'openssh-clients [platform:rpm]'; do
  grep -qF "$dep" "$tmp/introspect.yml" || { cat "$tmp/introspect.yml"; fail "ansible-builder introspect does not list '$dep'"; }
done
step "ansible-builder create + introspect"
echo "collection-checks: all passed in $((SECONDS - start)) s"
