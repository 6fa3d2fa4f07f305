#!/usr/bin/env bash
# Cheap checks of the tracked tree that fail CI (make hygiene):
#   - TODO, FIXME and XXX in common/, mirror/ and test/ only with an issue reference ("#12",
#     "issue 12"),
#   - no commented-out C code: a comment line in common/, mirror/ or test/ that is a C statement
#     (examples in a comment are indented under its text and are not counted),
#   - no trailing white space in source, build and documentation files,
#   - every test/fuzz/fuzz_*.c has seeds in test/fuzz/corpus/<name>/ (or is in NO_CORPUS).
# Then, where the `duplicates` command is installed, it reports repeated code (never fails).
set -euo pipefail
cd "$(dirname "$0")/.."

# Fuzz targets that have no seed corpus on purpose, by name.
NO_CORPUS=()

fail=0
problem() {
    echo "hygiene: $*" >&2
    fail=1
}

# What git tracks of the code and its documentation; seeds and fixtures are data.
files() {
    git ls-files -z -- "$@" ':!test/fuzz/corpus' ':!test/fixtures'
}

# TODO/FIXME/XXX without an issue reference.
if out=$(files common mirror test | xargs -0 grep -nIwE 'TODO|FIXME|XXX' |
         grep -vE '#[0-9]+|[Ii]ssue [0-9]+'); then
    problem "TODO/FIXME/XXX without an issue reference (#N or issue N):"
    echo "$out" >&2
fi

# Commented-out C code.
read -r -d '' COMMENTED_CODE <<'EOF' || true
import re
import sys

# A statement, a declaration with an initialiser or a control line, as code writes them.
CODE = re.compile(r"""^(
      (return|break|continue|goto)\b.*;
    | (if|for|while|switch)\s*\(.*[){;]
    | [A-Za-z_][\w.\->\[\]]*\s*(\(.*\)|[-+*/|&]?=\s*[^=].*|\+\+|--);
    | (static\s+|const\s+|struct\s+|unsigned\s+)*[A-Za-z_]\w*\s+\**[A-Za-z_]\w*(\[.*\])?\s*=.*;
    | [{}]\s*(else\b.*)?
    )$""", re.X)

def comments(text):
    """(line number, text) of every line inside a comment, strings and characters skipped."""
    i, n, line = 0, len(text), 1
    while i < n:
        c = text[i]
        if c == "\n":
            line += 1
        elif c in "\"'":
            j = i + 1
            while j < n and text[j] != c:
                j += 2 if text[j] == "\\" else 1
            line += text.count("\n", i, j)
            i = j
        elif text.startswith("//", i):
            j = text.find("\n", i)
            j = n if j < 0 else j
            yield line, text[i + 2:j]
            i = j
            continue
        elif text.startswith("/*", i):
            j = text.find("*/", i + 2)
            j = n if j < 0 else j
            for k, part in enumerate(text[i + 2:j].split("\n")):
                yield line + k, part
            line += text.count("\n", i, j)
            i = j + 2
            continue
        i += 1

bad = 0
for path in sys.argv[1:]:
    with open(path, encoding="utf-8", errors="replace") as f:
        text = f.read()
    for no, part in comments(text):
        # One space after the comment's leader is its text; deeper is an indented example.
        body = re.sub(r"^\s*\*?", "", part, count=1)
        if body.startswith("  ") or not body.strip():
            continue
        if CODE.match(body.strip()):
            print("%s:%d:%s" % (path, no, part))
            bad += 1
sys.exit(1 if bad else 0)
EOF
if ! out=$(files 'common/*.[ch]' 'mirror/*.[ch]' 'test/*.[ch]' |
           xargs -0 python3 -c "$COMMENTED_CODE"); then
    problem "commented-out code (delete it; an example belongs indented under the comment's text):"
    echo "$out" >&2
fi

# Trailing white space.
if out=$(files '*.c' '*.h' '*.py' '*.sh' '*.js' '*.md' '*.yml' '*.yaml' Makefile '.ci/*' |
         xargs -0 grep -nIE '[[:space:]]+$'); then
    problem "trailing white space:"
    echo "$out" >&2
fi

# A seed corpus for every fuzz target.
for src in $(git ls-files 'test/fuzz/fuzz_*.c'); do
    name=$(basename "$src" .c)
    [[ " ${NO_CORPUS[*]} " == *" $name "* ]] && continue
    [ -n "$(git ls-files "test/fuzz/corpus/$name/" | head -n 1)" ] ||
        problem "$src has no seeds in test/fuzz/corpus/$name/ (add some, or list it in NO_CORPUS)"
done

# Repeated code: a report to read, not a verdict.
if command -v duplicates >/dev/null 2>&1; then
    echo "hygiene: duplicates (report only)"
    duplicates --most 10 || true
fi

[ $fail -eq 0 ] && echo "hygiene: ok"
exit $fail
