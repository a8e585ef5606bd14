#!/usr/bin/env bash
# Vendor the JavaScript the book loads from CDNs (MathJax 3, require.js, the ipywidgets HTML
# manager) into the git-ignored folder _vendor/, so that the book can be tested in a browser
# without network access. Only the CI/test build uses it (see .ci/offline_config.py); the published
# book loads the same libraries from their CDNs.
#
#   bash .ci/vendor.sh [DEST]      # DEST defaults to _vendor; idempotent
set -euo pipefail
cd "$(dirname "$0")/.."
DEST=${1:-_vendor}
MATHJAX=mathjax@3.2.2
HTML_MANAGER=@jupyter-widgets/html-manager@1.0.6   # the version myst-nb references for ipywidgets 8
REQUIREJS=requirejs@2.3.4

if [[ -f "$DEST/.complete" && "$(cat "$DEST/.complete")" == "$MATHJAX $HTML_MANAGER $REQUIREJS" ]]; then
  echo "vendor: $DEST is up to date"
  exit 0
fi
command -v npm >/dev/null || { echo "vendor: npm is missing; install it (apt-get install -y npm)" >&2; exit 1; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
npm install --no-save --no-audit --no-fund --ignore-scripts --loglevel=error --prefix "$work" \
  "$MATHJAX" "$HTML_MANAGER" "$REQUIREJS" >/dev/null
nm=$work/node_modules

rm -rf "$DEST"
mkdir -p "$DEST/mathjax/output" "$DEST/widgets/html-manager"
# The combined TeX+MathML component with CommonHTML output, plus what it loads on demand:
# TeX extensions (input/), fonts (output/chtml/), the menu, accessibility and speech modules.
cp "$nm/mathjax/es5/tex-mml-chtml.js" "$DEST/mathjax/"
cp -r "$nm/mathjax/es5/input" "$nm/mathjax/es5/ui" "$nm/mathjax/es5/a11y" "$nm/mathjax/es5/adaptors" \
      "$nm/mathjax/es5/sre" "$DEST/mathjax/"
cp -r "$nm/mathjax/es5/output/chtml" "$nm/mathjax/es5/output/chtml.js" "$DEST/mathjax/output/"
cp "$nm/requirejs/require.js" "$DEST/widgets/require.js"
# embed-amd.js loads its chunks (*.embed.js) and fonts from its own folder.
find "$nm/@jupyter-widgets/html-manager/dist" -maxdepth 1 -type f ! -name '*.map' \
  -exec cp {} "$DEST/widgets/html-manager/" \;
# embed-amd.js loads its chunks and icon fonts from "@jupyter-widgets/html-manager/dist/" relative to
# the page (require.js resolves its module id against the page's folder). Widgets live in chapter
# pages only, so a copy goes where chapters/*.html look for it.
mkdir -p "$DEST/chapters/@jupyter-widgets/html-manager/dist"
find "$DEST/widgets/html-manager" -type f ! -name 'embed*.js' ! -name 'libembed*.js' \
  -exec cp {} "$DEST/chapters/@jupyter-widgets/html-manager/dist/" \;
echo "$MATHJAX $HTML_MANAGER $REQUIREJS" > "$DEST/.complete"
echo "vendor: wrote $(du -sh "$DEST" | cut -f1) to $DEST"
