#!/usr/bin/env bash
# Re-vendor the third-party browser code from the npm registry at the pinned versions below
# (`npm pack` checks each tarball against the registry's integrity hash), keeping each
# package's licence beside its files, and write VENDOR.txt with every file's SHA-256.
# Nothing is fetched at run time: the backend serves these files itself (SPEC 8 and 16).
# To upgrade: change a version here, run this script, run `make test`, commit the result.
set -euo pipefail
cd "$(dirname "$0")/.."

WEB=alice/web/static/vendor
TESTS=tests/browser/vendor
# destination  package  version  files (paths inside the tarball's package/)
PINS=(
  "$WEB swagger-ui-dist 5.35.0 swagger-ui-bundle.js swagger-ui.css favicon-32x32.png LICENSE NOTICE swagger-ui-bundle.js.LICENSE.txt"
  "$WEB redoc 2.5.4 bundles/redoc.standalone.js LICENSE"
  "$WEB marked 18.2.1 lib/marked.esm.js LICENSE"
  "$WEB dompurify 3.4.18 dist/purify.es.mjs LICENSE"
  "$TESTS axe-core 4.14.1 axe.min.js LICENSE LICENSE-3RD-PARTY.txt"
)

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for pin in "${PINS[@]}"; do
  read -r dest name version files <<<"$pin"
  out="$dest/$name-$version"
  rm -rf "$dest/$name"-*
  mkdir -p "$out"
  (cd "$work" && npm pack --silent "$name@$version" >/dev/null)
  tar -xzf "$work/$name-$version.tgz" -C "$work"
  for f in $files; do
    cp "$work/package/$f" "$out/$(basename "$f")"
  done
  rm -rf "$work/package"
  licence=$(cd "$work" && npm view --silent "$name@$version" license)
  sums=$(cd "$out" && sha256sum -- *)
  printf '# %s %s from the npm registry, licence: %s\n%s\n' "$name" "$version" "$licence" "$sums" \
    >"$out/VENDOR.txt"
  echo "vendored $name $version into $out"
done
