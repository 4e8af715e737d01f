# Sourced by the serving benchmarks: start_service LOG ARGS... runs `$NG serve ARGS --port $PORT` in
# the background (stderr to LOG), sets $server to its pid and returns once /readyz answers 200
# (or the service has exited).
start_service() {
  local log=$1; shift
  "$NG" serve "$@" --port "$PORT" --log-level warning 2> "$log" &
  server=$!
  until python3 -c "import httpx, sys; sys.exit(httpx.get('http://127.0.0.1:$PORT/readyz').status_code != 200)" 2>/dev/null; do
    kill -0 "$server" 2>/dev/null || break
    sleep 1
  done
}
