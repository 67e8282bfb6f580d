#!/usr/bin/env bash
# The patched Burn Flex backend as a maintained patch: crates/patched/burn-flex is burn-flex 0.22.1 as published
# on crates.io plus docs/upstream/burn-flex.diff (see crates/patched/burn-flex/PATCHED.md).
#
#   bash scripts/flex-patch.sh check   # CI: the vendored copy must equal crate + diff (exit 1 and the difference if not)
#   bash scripts/flex-patch.sh diff    # after editing the vendored copy: rewrite docs/upstream/burn-flex.diff
#   bash scripts/flex-patch.sh apply   # rebuild the vendored copy from crate + diff (keeps tilt's own files)
#
# The crate is downloaded once from crates.io (or taken from cargo's cache) and its SHA-256 checked.
set -euo pipefail
cd "$(dirname "$0")/.."

VERSION=0.22.1
SHA256=7e05d08ef48d738fadf13f8689b634f8b396d5a8cbb27d0a87f61e163d241846
VENDORED=crates/patched/burn-flex
DIFF=docs/upstream/burn-flex.diff
# Upstream files the vendored copy leaves out (long design documents, the crate's lockfile, cargo's VCS note) and
# tilt's own files in it.
LEFT_OUT=(ACKNOWLEDGMENTS.md ARCHITECTURE.md BENCHMARKS.md COMPARISON.md Cargo.lock .cargo_vcs_info.json)
OWN=(PATCHED.md rustfmt.toml)

mode="${1:-check}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

crate="$work/burn-flex-$VERSION.crate"
cached="$(ls "${CARGO_HOME:-$HOME/.cargo}"/registry/cache/*/burn-flex-$VERSION.crate 2>/dev/null | head -n 1 || true)"
if [ -n "$cached" ]; then
  cp "$cached" "$crate"
else
  curl -sSfL --retry 3 -o "$crate" "https://static.crates.io/crates/burn-flex/burn-flex-$VERSION.crate"
fi
echo "$SHA256  $crate" | sha256sum -c --quiet - || { echo "burn-flex-$VERSION.crate: unexpected SHA-256" >&2; exit 1; }

# a/: the published crate without the left-out files.
mkdir -p "$work/x"
tar xzf "$crate" -C "$work/x"
mv "$work/x/burn-flex-$VERSION" "$work/a"
for f in "${LEFT_OUT[@]}"; do rm -f "$work/a/$f"; done

# b/: the vendored copy without tilt's own files.
cp -r "$VENDORED" "$work/b"
for f in "${OWN[@]}"; do rm -f "$work/b/$f"; done

case "$mode" in
  check)
    cp -r "$work/a" "$work/applied"
    (cd "$work/applied" && patch -p1 -s --no-backup-if-mismatch < "$OLDPWD/$DIFF")
    if ! diff -r "$work/applied" "$work/b" > "$work/mismatch"; then
      echo "$VENDORED differs from burn-flex $VERSION + $DIFF:" >&2
      head -n 100 "$work/mismatch" >&2
      echo "(edit the vendored copy, then run: bash scripts/flex-patch.sh diff)" >&2
      exit 1
    fi
    echo "$VENDORED = burn-flex $VERSION + $DIFF ($(grep -c '^+++ ' "$DIFF") files changed)"
    ;;
  diff)
    # Timestamps dropped from the headers so that the file changes only when the code does.
    (cd "$work" && diff -ruN a b || true) | sed -E 's/^(---|\+\+\+) ([^\t]*)\t.*/\1 \2/' > "$DIFF"
    echo "wrote $DIFF ($(grep -c '^+++ ' "$DIFF") files changed)"
    ;;
  apply)
    (cd "$work/a" && patch -p1 -s --no-backup-if-mismatch < "$OLDPWD/$DIFF")
    for f in "${OWN[@]}"; do cp "$VENDORED/$f" "$work/a/$f"; done
    rm -rf "$VENDORED"
    cp -r "$work/a" "$VENDORED"
    echo "rebuilt $VENDORED from burn-flex $VERSION + $DIFF"
    ;;
  *)
    echo "usage: bash scripts/flex-patch.sh check|diff|apply" >&2
    exit 2
    ;;
esac
