#!/usr/bin/env bash
# Installs everything difflab needs on a fresh Debian-like machine, idempotently, saying what
# each step does and roughly how long it takes ("already installed" when there is nothing to do):
#   1. the Fashion-MNIST data (Debian package dataset-fashion-mnist, with apt-get);
#   2. a virtual environment in .venv;
#   3. PyTorch, the CPU build where it lies on disk (installed before the package, so that pip
#      does not fetch a multi-GB CUDA build to satisfy difflab's torch requirement);
#   4. difflab itself (editable) with its test extras;
#   5. a `difflab` launcher in /usr/local/bin (as root, or with sudo): a five-line shell script
#      that runs this checkout's .venv/bin/difflab, so that `difflab` works in any shell without
#      activating .venv. A file there that is not difflab's launcher (no marker line) is left
#      alone; without root or sudo the step says what to type instead;
#   6. Debian's chromium (apt-get), the browser the web app's tests drive headless through
#      Playwright; without apt-get or root it is skipped with a note (those tests then skip).
#
#   bash scripts/setup.sh                   all of it
#   bash scripts/setup.sh --launcher-only   only step 5 (after the others)
#   DIFFLAB_BIN_DIR=DIR                      put the launcher in DIR instead of /usr/local/bin
#   PYTHON=python3.12                        the interpreter .venv is made from (default python3)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd -P)
START=$SECONDS

say() { printf 'difflab setup: %s\n' "$*"; }
as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"
  elif command -v sudo >/dev/null 2>&1; then sudo "$@"
  else say "error: '$*' needs root, and there is no sudo here; run this as root"; return 1
  fi
}
# A launcher is difflab's own when it carries this line; nothing else is ever overwritten.
MARKER="# difflab-launcher: written by scripts/setup.sh"
BIN_DIR=${DIFFLAB_BIN_DIR:-/usr/local/bin}
PATH_HINT="export PATH=\"$ROOT/.venv/bin:\$PATH\""

# ------------------------------------------------------------------------------- launcher
sh_quote() { printf "'%s'" "$(printf '%s' "$1" | sed "s/'/'\\\\''/g")"; }

launcher_text() {
  local exe
  exe=$(sh_quote "$ROOT/.venv/bin/difflab")
  printf '%s\n' "#!/bin/sh" "$MARKER; it runs the difflab of" \
    "# $ROOT/.venv. Delete this file to remove it." \
    "[ -x $exe ] || { echo \"difflab: $ROOT/.venv is gone; run bash $ROOT/scripts/setup.sh\" >&2; exit 127; }" \
    "exec $exe \"\$@\""
}

no_launcher() {
  say "without the launcher: in a shell, type  $PATH_HINT  (once per shell) and then"
  say "  difflab's commands work as the README prints them"
}

install_launcher() {
  local target="$BIN_DIR/difflab" tmp was=""
  if [ ! -x .venv/bin/difflab ]; then
    say "error: no .venv/bin/difflab yet: run  bash scripts/setup.sh  first"
    return 1
  fi
  if [ -L "$target" ] || { [ -e "$target" ] && ! grep -qsF "$MARKER" "$target"; }; then
    say "launcher: $target exists and is not difflab's launcher (no marker line): left alone"
    no_launcher
    return 0
  elif [ ! -d "$BIN_DIR" ]; then
    say "launcher: there is no folder $BIN_DIR to put it in"
    no_launcher
    return 0
  fi
  tmp=$(mktemp)
  launcher_text >"$tmp"
  if [ -e "$target" ] && cmp -s "$tmp" "$target"; then
    say "launcher $target: already installed (runs $ROOT/.venv/bin/difflab)"
  else
    if [ -e "$target" ]; then
      was=" (replacing the launcher of $(sed -n 3p "$target" | sed 's/^# //; s/\.venv\..*$/.venv/'))"
    fi
    if [ -w "$BIN_DIR" ]; then
      install -m 0755 "$tmp" "$target"
    elif command -v sudo >/dev/null 2>&1 && { say "writing the launcher $target with sudo…"; \
        sudo install -m 0755 "$tmp" "$target"; }; then
      :
    else
      say "launcher: cannot write to $BIN_DIR (not root, no sudo): no launcher installed"
      rm -f "$tmp"
      no_launcher
      return 0
    fi
    say "installed the launcher $target$was: a five-line shell script that runs"
    say "  $ROOT/.venv/bin/difflab, so \`difflab\` works from any directory (delete it to remove it)"
  fi
  rm -f "$tmp"
  case ":$PATH:" in
    *":$BIN_DIR:"*) ;;
    *) say "note: $BIN_DIR is not on this shell's PATH: add it, or type  $PATH_HINT" ;;
  esac
}

if [ "${1:-}" = "--launcher-only" ]; then
  install_launcher
  exit
elif [ $# -gt 0 ]; then
  say "error: unknown argument '$1'; usage: bash scripts/setup.sh [--launcher-only]"
  exit 2
fi

# ------------------------------------------------------------------------------- 1. data
if dpkg -s dataset-fashion-mnist >/dev/null 2>&1; then
  say "Fashion-MNIST data (Debian package dataset-fashion-mnist): already installed"
else
  if ! command -v apt-get >/dev/null 2>&1; then
    say "error: the Fashion-MNIST data comes as the Debian package dataset-fashion-mnist, and"
    say "  this machine has no apt-get: install that package by other means, then run this again"
    exit 1
  fi
  say "installing the Fashion-MNIST data: apt-get update, then the Debian package"
  say "  dataset-fashion-mnist (about a minute)…"
  as_root apt-get update
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y dataset-fashion-mnist
fi

# ------------------------------------------------------------------------------- 2. .venv
PY=${PYTHON:-python3}
if [ -x .venv/bin/python ]; then
  say "virtual environment .venv: already there ($(.venv/bin/python -V))"
else
  say "creating the virtual environment .venv with $PY ($("$PY" -V 2>&1)) (seconds)…"
  "$PY" -m venv .venv
fi

# ------------------------------------------------------------------------------- 3. PyTorch
PIP=(.venv/bin/pip install --progress-bar on)
if version=$(.venv/bin/python -c "import torch; print(torch.__version__)" 2>/dev/null); then
  say "PyTorch $version: already installed"
else
  say "installing PyTorch 2.13 CPU build into .venv (a few minutes)…"
  if ! "${PIP[@]}" torch==2.13.0; then
    say "torch 2.13.0 is not available here: installing the newest torch>=2.4 instead"
    say "  (a few minutes; a CUDA build is several GB)…"
    "${PIP[@]}" "torch>=2.4"
  fi
fi

# ------------------------------------------------------------------------------- 4. difflab
# Installed when difflab imports from this checkout's src/ at pyproject.toml's version, with its
# console script, and every requirement of pyproject.toml (dependencies + the test extra) is
# met; a requirement added to pyproject.toml later makes the step run again.
installed() {
  .venv/bin/python -I - "$ROOT" <<'EOF'
import importlib.metadata as md
import sys
import tomllib
from pathlib import Path

try:
    from packaging.requirements import Requirement
except ImportError:
    from pip._vendor.packaging.requirements import Requirement

root = Path(sys.argv[1])
project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
problems = []
try:
    import difflab
except ImportError as e:
    problems.append(f"difflab does not import ({e})")
else:
    if Path(difflab.__file__).resolve() != root / "src" / "difflab" / "__init__.py":
        problems.append(f"difflab imports from {difflab.__file__}, not this checkout")
    if md.version("difflab") != project["version"]:
        problems.append(f"difflab {md.version('difflab')} installed, {project['version']} here")
if not (root / ".venv" / "bin" / "difflab").is_file():
    problems.append("no .venv/bin/difflab")
for text in project["dependencies"] + project["optional-dependencies"]["test"]:
    req = Requirement(text)
    try:
        have = md.version(req.name)
    except md.PackageNotFoundError:
        problems.append(f"{req.name} missing")
        continue
    if not req.specifier.contains(have, prereleases=True):
        problems.append(f"{req.name} {have} installed, {req.specifier} wanted")
if problems:
    print("; ".join(problems[:4]) + ("; ..." if len(problems) > 4 else ""))
    sys.exit(1)
EOF
}
if why=$(installed 2>&1); then
  say "difflab (editable, from src/) and its test tools: already installed"
else
  say "installing difflab (editable, from src/) with its dependencies and test tools into .venv"
  say "  (${why:-first install}; about a minute, seconds when the dependencies are there)…"
  # pip warns about the constraints file's location on every run; the rest is its progress.
  "${PIP[@]}" -e ".[test]" 2>&1 | { grep --line-buffered -v "^WARNING: Location" || true; }
fi

# ------------------------------------------------------------------------------- 5. launcher
install_launcher

# ------------------------------------------------------------------------------- 6. chromium
# The web app's browser tests (tests/web) drive Debian's chromium through Playwright; Playwright's
# own browser download comes from a CDN that is often unreachable, so it is not used. Optional:
# anything that stops this step says so, and setup goes on (the browser tests then skip).
if command -v chromium >/dev/null 2>&1; then
  say "chromium (for the web app's browser tests): already installed"
elif ! command -v apt-get >/dev/null 2>&1; then
  say "chromium: this machine has no apt-get; the web app's browser tests will skip"
  say "  (install a chromium that is on PATH as \`chromium\` to run them)"
else
  say "installing chromium (Debian package) for the web app's browser tests (a minute or two)…"
  if ! { as_root apt-get update && as_root env DEBIAN_FRONTEND=noninteractive \
      apt-get install -y chromium; }; then
    say "chromium could not be installed (see above); the web app's browser tests will skip"
  fi
fi

say "done in $((SECONDS - START)) s: $(.venv/bin/python -c "import difflab, sys, torch
print(f'difflab {difflab.__version__}, torch {torch.__version__}, Python {sys.version.split()[0]} in .venv')")"
