#!/usr/bin/env bash
# Profile ngx_http_wsgi_module under load and print the top entries.
#
# One nginx process (worker_processes 1; master_process off; daemon off) with the module
# serves bench/apps/suite.py on a free 127.0.0.1 port; wrk drives the hello-world workload
# (/hello) for PROFILE_SECONDS; the profile covers the load only, not Python's start-up.
#
#   bench/profile.sh              perf if the CPU's counters work (perf stat -e instructions),
#                                 else valgrind --tool=callgrind
#   bench/profile.sh --callgrind  always callgrind (exact instruction counts, ~50x slower)
#   bench/profile.sh --perf       always perf record -g (falls back to the cpu-clock
#                                 software event when there are no hardware counters)
#
# Environment (all optional):
#   PROFILE_PATH=/hello      workload path of bench/apps/suite.py (/64k, /sleep, /stream, ...)
#   PROFILE_SECONDS=20       seconds of load (callgrind) / of sampling (perf)
#   WSGI_THREADS=            wsgi_threads for the run (unset: the module's default, 16; 0: inline)
#   NGINX=/usr/sbin/nginx    nginx binary
#   MODULE=build/debian/ngx_http_wsgi_module.so   module built for that nginx
#   TOP=30                   entries to print
#
# Output stays in build/bench/profile/ (nginx.conf, error.log, callgrind.out or perf.data,
# report.txt). See bench/PROFILING.md for the commands by hand and how to read the result.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=$ROOT/build/bench/profile
NGINX=${NGINX:-/usr/sbin/nginx}
MODULE=${MODULE:-$ROOT/build/debian/ngx_http_wsgi_module.so}
PROFILE_PATH=${PROFILE_PATH:-/hello}
PROFILE_SECONDS=${PROFILE_SECONDS:-20}
TOP=${TOP:-30}
MODE=auto
case "${1:-}" in
  --callgrind) MODE=callgrind ;;
  --perf) MODE=perf ;;
  "") ;;
  -h|--help) sed -n '2,27p' "$0"; exit 0 ;;
  *) echo "usage: $0 [--callgrind|--perf]" >&2; exit 2 ;;
esac

for tool in wrk python3; do
  command -v "$tool" >/dev/null || { echo "$tool is not installed (apt-get install $tool)" >&2; exit 1; }
done
[ -x "$NGINX" ] || { echo "nginx binary $NGINX not found" >&2; exit 1; }
[ -f "$MODULE" ] || { echo "module $MODULE not found (make build-debian)" >&2; exit 1; }

if [ "$MODE" = auto ]; then
  if command -v perf >/dev/null && perf stat -x, -e instructions true 2>&1 >/dev/null \
       | grep -q '^[0-9]'; then
    MODE=perf
  else
    MODE=callgrind
  fi
fi
if [ "$MODE" = callgrind ]; then
  command -v valgrind >/dev/null || { echo "valgrind is not installed (apt-get install valgrind)" >&2; exit 1; }
else
  command -v perf >/dev/null || { echo "perf is not installed (apt-get install linux-perf)" >&2; exit 1; }
fi

rm -rf "$OUT"
mkdir -p "$OUT"/logs "$OUT"/tmp
PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
THREADS_LINE=""
[ -n "${WSGI_THREADS:-}" ] && THREADS_LINE="wsgi_threads $WSGI_THREADS;"

# The same data file run.py makes, for PROFILE_PATH=/file.
if [ "$PROFILE_PATH" = /file ] && [ ! -f "$ROOT/build/bench/data/file-10m.bin" ]; then
  mkdir -p "$ROOT/build/bench/data"
  head -c $((10 * 1024 * 1024)) /dev/urandom > "$ROOT/build/bench/data/file-10m.bin"
fi

cat > "$OUT/nginx.conf" <<EOF
# written by bench/profile.sh: one process, in the foreground, so a profiler sees everything
load_module $MODULE;
worker_processes 1;
master_process off;
daemon off;
pid $OUT/nginx.pid;
error_log $OUT/logs/error.log warn;
events { worker_connections 1024; }
http {
    access_log off;
    client_max_body_size 4m;
    client_body_buffer_size 2m;
    client_body_temp_path $OUT/tmp;
    proxy_temp_path $OUT/tmp;
    fastcgi_temp_path $OUT/tmp;
    uwsgi_temp_path $OUT/tmp;
    scgi_temp_path $OUT/tmp;
    wsgi_python_path $ROOT/bench/apps;
    $THREADS_LINE
    server {
        listen 127.0.0.1:$PORT;
        location / { wsgi_app $ROOT/bench/apps/suite.py; }
    }
}
EOF

NGINX_PID=""
cleanup() {
  if [ -n "$NGINX_PID" ] && kill -0 "$NGINX_PID" 2>/dev/null; then
    kill -TERM "$NGINX_PID" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$NGINX_PID" 2>/dev/null || break; sleep 0.2; done
    kill -KILL "$NGINX_PID" 2>/dev/null || true
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

wait_ready() {   # the port answers 200 on the workload path, or fail after $1 seconds
  python3 - "$PORT" "$PROFILE_PATH" "$1" "$NGINX_PID" <<'PY'
import os, sys, time, urllib.request
port, path, limit, pid = sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4])
deadline = time.time() + limit
while time.time() < deadline:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        sys.exit("nginx exited: see build/bench/profile/logs/error.log")
    try:
        data = b"b" * 1048576 if path == "/echo" else None
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", data=data, timeout=30) as r:
            if r.status == 200:
                sys.exit(0)
    except OSError:
        pass
    time.sleep(0.2)
sys.exit(f"not ready after {limit:.0f}s")
PY
}

BODY_ENV=0
[ "$PROFILE_PATH" = /echo ] && BODY_ENV=1048576
URL="http://127.0.0.1:$PORT$PROFILE_PATH"
echo "profiling $URL with $MODE, ${PROFILE_SECONDS}s of load (output in ${OUT#$ROOT/})"

if [ "$MODE" = callgrind ]; then
  # --instr-atstart=no: Python's start-up and the imports are not counted; instrumentation
  # is switched on once the server answers, and off again when wrk is done.
  valgrind --tool=callgrind --instr-atstart=no --separate-threads=no \
      --callgrind-out-file="$OUT/callgrind.out" --log-file="$OUT/valgrind.log" \
      "$NGINX" -p "$OUT" -e "$OUT/logs/error.log" -c "$OUT/nginx.conf" &
  NGINX_PID=$!
  wait_ready 180
  callgrind_control -i on "$NGINX_PID" >/dev/null 2>&1
  BENCH_BODY_BYTES=$BODY_ENV wrk -t1 -c8 -d"${PROFILE_SECONDS}s" --timeout 30s \
      -s "$ROOT/bench/wrk/report.lua" "$URL" | grep -E 'Requests/sec|Latency  |requests in' || true
  callgrind_control -i off "$NGINX_PID" >/dev/null 2>&1
  # Exit normally so callgrind writes its file. Under valgrind the signal can land on one of
  # the module's Python threads, and nginx sees the flag only when its event loop wakes up:
  # a connection to the port wakes it.
  kill -QUIT "$NGINX_PID"
  for i in $(seq 1 300); do
    kill -0 "$NGINX_PID" 2>/dev/null || break
    [ $((i % 5)) = 0 ] && { (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null || true; }
    sleep 0.2
  done
  if kill -0 "$NGINX_PID" 2>/dev/null; then
    echo "nginx under valgrind did not exit after SIGQUIT; stopping it" >&2
  else
    NGINX_PID=""
  fi
  [ -s "$OUT/callgrind.out" ] || { echo "no callgrind output (see $OUT/valgrind.log)" >&2; exit 1; }
  top_entries() {   # the total, then the first $TOP function lines of callgrind_annotate
    awk -v top="$TOP" '/PROGRAM TOTALS/ { print; next }
        /file:function/ { getline; on = 1; n = 0; next }
        on && NF && n < top { print; n++ }'
  }
  {
    echo "== self cost (instructions spent in the function itself), top $TOP"
    callgrind_annotate --inclusive=no "$OUT/callgrind.out" 2>/dev/null | top_entries
    echo
    echo "== inclusive cost (the function and what it calls), top $TOP"
    callgrind_annotate --inclusive=yes "$OUT/callgrind.out" 2>/dev/null | top_entries
  } > "$OUT/report.txt"
else
  "$NGINX" -p "$OUT" -e "$OUT/logs/error.log" -c "$OUT/nginx.conf" &
  NGINX_PID=$!
  wait_ready 60
  EVENT=()
  perf stat -x, -e cycles true 2>&1 >/dev/null | grep -q '^[0-9]' || EVENT=(-e cpu-clock)
  # Warm-up, then sample the nginx process (all its threads) while wrk runs.
  BENCH_BODY_BYTES=$BODY_ENV wrk -t2 -c64 -d2s "$URL" >/dev/null
  BENCH_BODY_BYTES=$BODY_ENV wrk -t2 -c64 -d"$((PROFILE_SECONDS + 2))s" \
      -s "$ROOT/bench/wrk/report.lua" "$URL" > "$OUT/wrk.txt" &
  WRK_PID=$!
  sleep 1
  perf record "${EVENT[@]}" -g -F 999 -p "$NGINX_PID" -o "$OUT/perf.data" \
      -- sleep "$PROFILE_SECONDS" 2> "$OUT/perf-record.log"
  wait "$WRK_PID" || true
  grep -E 'Requests/sec|Latency  |requests in' "$OUT/wrk.txt" || true
  report() {   # perf report's lines without comments and trailing filler columns
    perf report -i "$OUT/perf.data" --stdio -g none "$@" 2>/dev/null \
      | sed -E 's/[[:space:]]+-[[:space:]]+-[[:space:]]*$//; s/[[:space:]]+$//'
  }
  firstn() { awk -v top="$TOP" '!/^#/ && NF && n < top { print; n++ }'; }
  {
    echo "== self (samples in the function itself), top $TOP"
    report --no-children --sort dso,symbol --percent-limit 0.3 | firstn
    echo
    echo "== self, user space only (nginx, the module, libpython, libc), top $TOP"
    report --no-children --sort dso,symbol --percent-limit 0.1 | grep -v '\[k\]' | firstn
    echo
    echo "== children (the function and what it calls), top $TOP"
    report --children --sort symbol --percent-limit 2 | firstn
  } > "$OUT/report.txt"
fi
cat "$OUT/report.txt"
echo
echo "full data: ${OUT#$ROOT/}/$([ "$MODE" = callgrind ] && echo callgrind.out || echo perf.data);" \
     "report: ${OUT#$ROOT/}/report.txt"
