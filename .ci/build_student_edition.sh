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
# would open the full notebooks on GitHub); the step below makes the copy's intro and navigation true
# for the edition; jupyter-book builds that copy, and the copy is deleted.
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
# Make the copy true for this edition: the markdown pages' passages between `<!-- edition: full -->`
# and `<!-- edition: student ... -->` (the intro's Colab buttons and instructor guide) give way to the
# student text in the comment; the instructor page, now a note, gets a title that says what it is; and
# the navigation bar loses its links to the repository, which holds the solutions.
"$PY" - "$work/book" <<'PY'
import re
import sys
from pathlib import Path

import yaml

book = Path(sys.argv[1])
EDITION = re.compile(r"<!-- edition: full -->\n(.*?)<!-- edition: student\n(.*?)-->\n<!-- edition: end -->\n",
                     flags=re.S)
for page in sorted(book.glob("*.md")):
    text = page.read_text(encoding="utf-8")
    if "<!-- edition:" not in text:
        continue
    swapped = EDITION.sub(lambda m: m.group(2), text)
    if "<!-- edition:" in swapped:
        sys.exit(f"{page.name}: an edition block is not of the form <!-- edition: full -->, text, "
                 "<!-- edition: student, text, -->, <!-- edition: end --> (each marker on its own line)")
    page.write_text(swapped, encoding="utf-8")
note = book / "instructor.md"
text = note.read_text(encoding="utf-8")
if not text.startswith("# Instructor guide\n"):
    sys.exit("the student edition's instructor.md does not start with '# Instructor guide': "
             "update .ci/build_student_edition.sh to the new note")
note.write_text("# About this student edition\n" + text.split("\n", 1)[1], encoding="utf-8")
config = book / "_config.yml"
cfg = yaml.safe_load(config.read_text(encoding="utf-8"))
html = cfg.setdefault("html", {})
html["use_repository_button"] = html["use_issues_button"] = html["use_edit_page_button"] = False
config.write_text(config.read_text(encoding="utf-8").split("\n", 1)[0] + "\n"
                  + yaml.safe_dump(cfg, sort_keys=False, allow_unicode=True), encoding="utf-8")
PY
"$JB" build "$work/book" ${build_args[@]+"${build_args[@]}"}
rm -rf "$OUT/html"
mkdir -p "$OUT"
cp -r "$work/book/_build/html" "$OUT/html"
echo "student edition: $OUT/html/index.html"
