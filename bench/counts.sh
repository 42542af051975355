#!/usr/bin/env bash
# Per-request kernel figures of the module under load: context switches, futex calls and
# wake-ups, write(2) calls (the Python threads' eventfd signals: nginx sends responses with
# writev), epoll_wait calls. nginx with 2 workers serves bench/apps/suite.py; wrk drives
# one workload; the figures cover the workers (every thread) during the measured run only.
#
#   bench/counts.sh                  the default configuration, inline, wsgi_threads 1
#   MODES="default 4" bench/counts.sh
#
# Environment (all optional):
#   COUNT_PATH=/hello   workload path of bench/apps/suite.py
#   COUNT_SECONDS=5     seconds of measured load (after 1 s of warm-up)
#   MODES="default 0 1" wsgi_threads of each run ("default": the directive left out)
#   NGINX, MODULE       as for bench/profile.sh
#
# Context switches come from /proc/PID/task/*/status (voluntary + involuntary, after minus
# before); futex, write and epoll_wait from perf's syscall tracepoints (perf stat -p).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
NGINX=${NGINX:-/usr/sbin/nginx}
MODULE=${MODULE:-$ROOT/build/debian/ngx_http_wsgi_module.so}
COUNT_PATH=${COUNT_PATH:-/hello}
COUNT_SECONDS=${COUNT_SECONDS:-5}
MODES=${MODES:-default 0 1}

for tool in wrk perf python3 curl; do
  command -v "$tool" >/dev/null || { echo "$tool is not installed" >&2; exit 1; }
done
[ -f "$MODULE" ] || { echo "module $MODULE not found (make build-debian)" >&2; exit 1; }

switches() {   # voluntary + involuntary context switches of every thread of the given pids
  local total=0 p f v
  for p in "$@"; do
    for f in /proc/"$p"/task/*/status; do
      v=$(awk '/ctxt_switches/ { s += $2 } END { print s + 0 }' "$f" 2>/dev/null || echo 0)
      total=$((total + v))
    done
  done
  echo "$total"
}

printf '%-8s %8s %8s %9s %8s %8s %8s %8s\n' mode req/s "cs/req" "futex/req" "wakes/req" \
  "write/req" "epoll/req" requests
for mode in $MODES; do
  OUT=$(mktemp -d "${TMPDIR:-/tmp}/ngx-wsgi-counts.XXXXXX")
  chmod 755 "$OUT"   # the workers (not root) write temp files under it
  mkdir -p "$OUT/logs" "$OUT/tmp"
  PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  THREADS_LINE=""
  [ "$mode" != default ] && THREADS_LINE="wsgi_threads $mode;"
  cat > "$OUT/nginx.conf" <<EOF
load_module $MODULE;
worker_processes 2;
pid $OUT/nginx.pid;
error_log $OUT/logs/error.log warn;
events { worker_connections 1024; }
http {
    access_log off;
    client_body_temp_path $OUT/tmp;
    wsgi_python_path $ROOT/bench/apps;
    $THREADS_LINE
    server {
        listen 127.0.0.1:$PORT;
        location / { wsgi_app $ROOT/bench/apps/suite.py; }
    }
}
EOF
  "$NGINX" -p "$OUT" -c "$OUT/nginx.conf"
  URL=http://127.0.0.1:$PORT$COUNT_PATH
  for _ in $(seq 100); do curl -fs -o /dev/null "$URL" && break; sleep 0.1; done
  wrk -t2 -c64 -d1s "$URL" >/dev/null
  mapfile -t workers < <(pgrep -P "$(cat "$OUT/nginx.pid")")
  pids=$(IFS=,; echo "${workers[*]}")
  before=$(switches "${workers[@]}")
  wrk -t2 -c64 -d"${COUNT_SECONDS}s" "$URL" > "$OUT/wrk.txt" &
  WRK=$!
  perf stat -x, -o "$OUT/perf.txt" -p "$pids" \
    -e syscalls:sys_enter_futex -e syscalls:sys_enter_write -e syscalls:sys_enter_epoll_wait \
    -e syscalls:sys_enter_futex --filter 'op == 129 || op == 138 || op == 1 || op == 10' \
    -- sleep "$COUNT_SECONDS" 2>/dev/null
  wait "$WRK"
  after=$(switches "${workers[@]}")
  kill -QUIT "$(cat "$OUT/nginx.pid")"
  python3 - "$mode" "$OUT/wrk.txt" "$OUT/perf.txt" "$before" "$after" <<'PY'
import re, sys
mode, wrk, perf, before, after = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
text = open(wrk).read()
reqs = int(re.search(r"(\d+) requests in", text).group(1))
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
counts = [int(line.split(",")[0]) for line in open(perf)
          if line and line[0].isdigit()]
futex, write, epoll, wakes = counts[:4]
print(f"{mode:<8} {rps:8.0f} {(after - before) / reqs:8.2f} {futex / reqs:9.2f} "
      f"{wakes / reqs:8.2f} {write / reqs:8.2f} {epoll / reqs:8.2f} {reqs:8d}")
PY
  for _ in $(seq 50); do [ -e "$OUT/nginx.pid" ] || break; sleep 0.1; done
  rm -rf "$OUT"
done
