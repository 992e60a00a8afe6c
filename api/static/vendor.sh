#!/usr/bin/env bash
# Refresh api/static/vendor/ from the npm registry. The vendored files are committed, so
# the console is served entirely by the app (no CDN) and needs no build at install time;
# run this only to upgrade a library after changing its version in package.json.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
version="$(node -p "require('$here/package.json').dependencies.uplot")"
(cd "$tmp" && npm pack --silent "uplot@$version" >/dev/null && tar xzf uplot-*.tgz)
cp "$tmp/package/dist/uPlot.esm.js" "$tmp/package/dist/uPlot.min.css" "$here/vendor/"
cp "$tmp/package/LICENSE" "$here/vendor/uPlot.LICENSE"
echo "vendored uplot $version into $here/vendor/"
