#!/usr/bin/env bash
# Set-up and everyday commands. Each one creates .venv on first use (Python 3.11+).
#   ./dev.sh repro   install, then `dvc repro` the whole pipeline
#   ./dev.sh install the environment alone (`install dev,team`: what `test` installs)
#   ./dev.sh test    install, then run the test suite (`test -m fast`: the inner loop)
#   ./dev.sh lint    ruff on the code, mypy on the library
#   ./dev.sh lock    requirements*.lock again from pyproject.toml (hashes; then commit them)
#   ./dev.sh demo    a tiny offline run of the whole pipeline on generated data (minutes)
#   ./dev.sh runs    the MLflow runs per DVC experiment
#   ./dev.sh leaderboard  the DVC experiments as rows: changed params, each variant's figure
#   ./dev.sh ui      the MLflow UI over the project's store, on 127.0.0.1:5000 (PORT=...)
#   ./dev.sh server  a shared MLflow tracking server on PostgreSQL (docs/teams.md)
#   ./dev.sh plots   `dvc plots show` (or `plots diff REV`) as a page that works offline
#   ./dev.sh browser install Debian's chromium + chromedriver (for the browser tests)
#   ./dev.sh postgres install Debian's postgresql (for ./dev.sh server and its tests)
#   ./dev.sh keras   the lecture's Keras (the `bench` extra) in .venv-keras: the parity test
#   ./dev.sh bench   the benchmarks in bench/ (by hand; slow); `bench speed ...`: one of them
#   ./dev.sh ray-sweep  a `dvc exp run -S` grid fanned out on Ray (the `team` extra; docs/teams.md)
set -euo pipefail
cd "$(dirname "$0")"
VENV=${RNNLAB_VENV:-.venv}

find_python() {
  for py in "${PYTHON:-}" python3.11 python3.12 python3.13 python3; do
    [ -n "$py" ] || continue
    if command -v "$py" >/dev/null 2>&1 &&
       "$py" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
      echo "$py"; return 0
    fi
  done
  echo "error: rnnlab needs Python 3.11 or newer (set PYTHON=/path/to/python3.11)" >&2
  return 1
}

# install [EXTRAS]: rnnlab (editable) and its locked environment, once. requirements.lock
# pins every package of the main install with its hashes, requirements-dev.lock adds the
# `dev` and `team` extras (the suite's); torch is the one package they leave out (pinned
# exactly in pyproject.toml: its wheel differs by platform, CPU or CUDA) and goes in first.
# The stamp lists the extras installed since pyproject.toml or the lock last changed.
install() {
  local extras=${1:-} stamp="$VENV/.installed" have="" lockfile=requirements.lock
  case ",$extras," in *,dev,*|*,team,*) lockfile=requirements-dev.lock ;; esac
  if [ -f "$stamp" ] && [ "$stamp" -nt pyproject.toml ] && [ "$stamp" -nt "$lockfile" ]; then
    have=$(cat "$stamp")
    if [ -z "$(comm -13 <(tr , '\n' <<<"$have" | sort -u) <(tr , '\n' <<<"$extras" | sort -u))" ]
    then return 0; fi
  fi
  if [ ! -x "$VENV/bin/python" ]; then
    "$(find_python)" -m venv "$VENV"
  fi
  "$VENV/bin/python" -m pip install --quiet --upgrade pip
  local torch_pin
  torch_pin=$("$VENV/bin/python" -c 'import tomllib; print(next(d for d in tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"] if d.startswith("torch==")))')
  "$VENV/bin/python" -m pip install --quiet "$torch_pin"
  "$VENV/bin/python" -m pip install --quiet --require-hashes --no-deps -r "$lockfile"
  "$VENV/bin/python" -m pip install --quiet --no-deps -e .
  "$VENV/bin/python" -m pip check >&2 || echo "warning: pip check found the conflicts above" >&2
  # Compile the C++ recurrences now (about a minute, once per machine; cached in
  # ~/.cache/rnnlab) rather than inside the first training stage, where the compiler's
  # 1.7 GB would count as that stage's memory and its minute as its first epoch. A failed
  # build is one warning naming the cause (training then runs the slower Python loops);
  # with RNNLAB_REQUIRE_CPP=1 (CI) it stops the install.
  echo "compiling rnnlab's C++ recurrences (once per machine, about a minute)" >&2
  "$VENV/bin/python" -c 'import sys; from rnnlab.nn import fused; sys.exit(not fused.available())' ||
    { [ "${RNNLAB_REQUIRE_CPP:-}" != 1 ] || return 1; }
  tr , '\n' <<<"$have,$extras" | sed '/^$/d' | sort -u | paste -sd, > "$stamp"
}

# lock: requirements.lock and requirements-dev.lock again from pyproject.toml's ranges
# (pip-tools in a throwaway venv; newest versions that fit, every hash of each release).
lock() {
  local tools=.venv-lock
  [ -x "$tools/bin/pip-compile" ] || { "$(find_python)" -m venv "$tools" &&
    "$tools/bin/python" -m pip install --quiet --upgrade pip "pip-tools==7.7.0"; }
  local common=(--quiet --generate-hashes --strip-extras --unsafe-package torch --no-header
                --no-emit-index-url --no-emit-find-links --annotation-style=line)
  "$tools/bin/pip-compile" "${common[@]}" -o requirements.lock pyproject.toml
  "$tools/bin/pip-compile" "${common[@]}" --extra dev --extra team \
    -o requirements-dev.lock pyproject.toml
  sha256sum requirements.lock requirements-dev.lock
}

# apt_install WHAT PACKAGE...: Debian packages, as root or with password-less sudo.
apt_install() {
  local what=$1 sudo=""; shift
  if [ "$(id -u)" != 0 ]; then
    if sudo -n true 2>/dev/null; then sudo="sudo -n"; else
      echo "$what: not root and no password-less sudo; install $* yourself" \
           "(the tests that need them skip without them)" >&2; return 1; fi
  fi
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@" >/dev/null
  $sudo apt-get clean   # the downloaded .deb files: hundreds of MB of disk, no longer needed
}

# Debian's chromium and chromedriver (tests/test_browser.py drives them with Selenium).
install_browser() {
  if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then return 0; fi
  apt_install browser chromium chromium-driver
}

# Debian's postgresql (initdb, pg_ctl) for `./dev.sh server` and tests/test_team_server.py;
# a fresh install puts them under /usr/lib/postgresql/<version>/bin only, not on PATH.
install_postgres() {
  if command -v initdb >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1
  then return 0; fi
  apt_install postgres postgresql
}

# The lecture's own Keras stack (tensorflow-cpu, keras: pyproject's `bench` extra) in a
# venv of its own, so the main install stays small; tests/test_keras_parity.py and
# bench/ find it through RNNLAB_KERAS_PYTHON, which `./dev.sh test` sets when it exists.
KERAS_VENV=.venv-keras
install_keras() {
  if [ ! -x "$KERAS_VENV/bin/python" ]; then "$(find_python)" -m venv "$KERAS_VENV"; fi
  local pins
  pins=$("$(find_python)" -c 'import tomllib; print(" ".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["optional-dependencies"]["bench"]))')
  "$KERAS_VENV/bin/python" -m pip install --quiet --upgrade pip
  rm -f "$KERAS_VENV/.installed"
  # shellcheck disable=SC2086
  "$KERAS_VENV/bin/python" -m pip install --quiet $pins
  touch "$KERAS_VENV/.installed"   # only a finished install is used (a full disk can stop one)
}
if [ -z "${RNNLAB_KERAS_PYTHON:-}" ] && [ -f "$KERAS_VENV/.installed" ]; then
  export RNNLAB_KERAS_PYTHON="$PWD/$KERAS_VENV/bin/python"
fi

# Stage commands call `python` and queue workers call `dvc`: both from this venv.
export PATH="$PWD/$VENV/bin:$PATH"
export MLFLOW_DISABLE_TELEMETRY=true DVC_NO_ANALYTICS=1

cmd=${1:-help}
[ $# -gt 0 ] && shift
case "$cmd" in
  install) install "${1:-}" ;;   # `install dev,team`: the extras `./dev.sh test` uses
  lock)    lock ;;
  lint)    install dev,team; ruff check src stages tests bench && mypy ;;
  repro)   install; dvc repro "$@" ;;
  # Two workers (`-n 0`: one process); a module's tests, and all that read the tiny
  # pipeline, share a worker (tests/conftest.py), so each shared fixture is built once.
  test)    install dev,team; python -m pytest -n 2 --dist loadgroup --no-loadscope-reorder "$@" ;;
  demo)    install; exec rnnlab-demo "$@" ;;
  runs)    install; exec rnnlab-runs "$@" ;;
  leaderboard) install; exec rnnlab-leaderboard "$@" ;;
  ray-sweep) install dev,team; exec rnnlab-ray-sweep "$@" ;;
  ui)      install; exec rnnlab-ui "$@" ;;
  server)  install dev,team; exec rnnlab-server "$@" ;;
  plots)   install; exec rnnlab-plots "$@" ;;
  browser) install_browser ;;
  postgres) install_postgres ;;
  keras)   install_keras ;;
  bench)   install dev   # `bench NAME ARGS`: bench/bench_NAME.py alone; else all but ab, fidelity, gpu
    if [ $# -gt 0 ] && [ -f "bench/bench_$1.py" ]; then b=$1; shift; python "bench/bench_$b.py" "$@"
    else for b in bench/bench_*.py; do
      case "$b" in bench/bench_ab.py|bench/bench_fidelity.py|bench/bench_gpu.py) ;;
        *) python "$b" "$@" ;; esac
    done; fi ;;
  *) sed -n '2,/^set -euo/{/^#/p}' "$0" | sed 's/^# \{0,1\}//'; [ "$cmd" = help ] ;;
esac
