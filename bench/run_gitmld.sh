#!/usr/bin/env bash
# gitmld runner for ../shared/anchor-bench (made from its runner_template.sh): the same steps,
# inputs and accounting as run_lfs.sh / run_dvc.sh. Run it through the anchor's run_all.sh:
#   cd ../shared/anchor-bench && BENCH_RUNNERS_DIR=$PWD/../../main/bench \
#     BENCH_SYSTEMS="lfs dvc gitmld" ./run_all.sh 1GiB 2
# Three daemons play three hosts: the author's (add/push), a clone host (clone1 with an empty
# cache, clone2 on the same host: gitmld's default host cache), and one for the *_shared steps
# whose cache is the CACHE dir lib.sh passes. Each is started on first use by the filter
# (autostart) and stopped in sys_teardown by the pid in its lock file.
set -euo pipefail
BENCH_SYSTEM=gitmld
ANCHOR_BENCH=${ANCHOR_BENCH:-$(cd "$(dirname "$0")/../../shared/anchor-bench" && pwd)}
GITMLD_ROOT=$(cd "$(dirname "$0")/.." && pwd)
GITMLD=$GITMLD_ROOT/.venv/bin/gitmld
source "$ANCHOR_BENCH/lib.sh"

BUCKET=bench-gitmld
RUN_DIRS=()

host_env() {  # host_env NAME CACHE_DIR: point gitmld at the daemon of one simulated host
  local dir=$WORK/run/$1
  mkdir -p "$dir"; chmod 700 "$dir"
  export GITMLD_SOCKET=$dir/daemon.sock GITMLD_CACHE_DIR=$2
  RUN_DIRS+=("$dir")
}
stop_host() {  # stop the daemon of a socket dir, by the pid it wrote in its lock file
  local lock=$1/daemon.lock pid
  [ -f "$lock" ] || return 0
  pid=$(head -n1 "$lock" 2>/dev/null || true)
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 0
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 1 600); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
  kill -9 "$pid" 2>/dev/null || true
}

sys_setup() {
  "$PY" "$BENCH_DIR/benchlib.py" mkbucket "$BUCKET"
  "$GITMLD" install --global >/dev/null
}
sys_teardown() {
  local d
  for d in "$WORK"/run/*; do [ -d "$d" ] && stop_host "$d"; done
}
sys_init() {  # WORK ORIGIN REPO
  host_env author "$WORK/author-cache"
  git init -q --bare "$2"
  git init -q "$1" && cd "$1"
  git remote add origin "file://$2"
  "$GITMLD" install >/dev/null
  "$GITMLD" track '*.safetensors' >/dev/null
  git config -f .gitmldconfig gitmld.url "s3://$BUCKET/$RUN_ID/$3"
  git config -f .gitmldconfig gitmld.endpoint "$S3_ENDPOINT"
  git add .gitattributes .gitmldconfig
}
sys_add() { host_env author "$WORK/author-cache"; cd "$1"; shift; git add "$@"; }
sys_push() { host_env author "$WORK/author-cache"; git -C "$1" push -q origin main; }
clone_on() {  # clone_on HOST CACHE ORIGIN DEST
  # lib.sh deletes the caches between phases: a daemon whose cache vanished is restarted
  [ -d "$2" ] || stop_host "$WORK/run/$1"
  mkdir -p "$2"
  host_env "$1" "$2"
  git clone -q "file://$3" "$4"
}
sys_clone() { clone_on clonehost "$WORK/caches/host" "$1" "$2"; }
sys_clone_shared() { clone_on sharedhost "$3" "$1" "$2"; }
sys_server_bytes() { "$PY" "$BENCH_DIR/benchlib.py" s3bytes "$BUCKET" "$RUN_ID/$1/" | cut -d' ' -f1; }

bench_main "$@"
