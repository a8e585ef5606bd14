#!/usr/bin/env bash
# Build the student edition of the book (no worked solutions, no instructor guide) into
# _build/student/html, next to the full edition in _build/html:
#
#   bash .ci/build_student_edition.sh                    # as the README's build
#   bash .ci/build_student_edition.sh --config _build/_config.offline.yml -W -n --keep-going
#                                                        # offline, as .ci/run builds the full book
#
# `python -m flowbook.instructor student-book` copies the book into a temporary folder with every cell
# tagged `solution` removed, the instructor guide replaced by a note and no Colab launch links (they
# would open the full notebooks on GitHub); jupyter-book builds that copy, and the copy is deleted.
# --config names the configuration to start from (default: _config.yml); every other argument goes to
# `jupyter-book build`. The sources are never modified.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PY=${FLOWBOOK_PYTHON:-$ROOT/.venv/bin/python}
JB=${FLOWBOOK_JUPYTER_BOOK:-$ROOT/.venv/bin/jupyter-book}
OUT=$ROOT/_build/student

config=()
build_args=()
while [[ $# -gt 0 ]]; do
  case $1 in
    --config) config=(--config "$(realpath "$2")"); shift 2 ;;
    --config=*) config=(--config "$(realpath "${1#--config=}")"); shift ;;
    *) build_args+=("$1"); shift ;;
  esac
done

work=$(mktemp -d "${TMPDIR:-/tmp}/flowbook-student.XXXXXX")
trap 'rm -rf "$work"' EXIT
"$PY" -m flowbook.instructor student-book --root "$ROOT" --out "$work/book" ${config[@]+"${config[@]}"}
"$JB" build "$work/book" ${build_args[@]+"${build_args[@]}"}
rm -rf "$OUT/html"
mkdir -p "$OUT"
cp -r "$work/book/_build/html" "$OUT/html"
echo "student edition: $OUT/html/index.html"
