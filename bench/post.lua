-- wrk script of `make bench`: POST one request body over and over (closed loop).
-- Environment: BENCH_BODY = file with the body (required); BENCH_LIMIT = stop each thread
-- after that many answers (0 or unset: run for wrk's --duration). Prints one JSON line,
-- prefixed with "BENCH_JSON ", with the counts wrk keeps.
local path = os.getenv("BENCH_BODY")
local file = assert(io.open(path, "rb"), "cannot read BENCH_BODY " .. tostring(path))
wrk.method = "POST"
wrk.body = file:read("*a")
file:close()
wrk.headers["Content-Type"] = "application/json"

local limit = tonumber(os.getenv("BENCH_LIMIT") or "0") or 0
if limit > 0 then
  local answered = 0
  response = function(status, headers, body)
    answered = answered + 1
    if answered >= limit then
      wrk.thread:stop()
    end
  end
end

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests": %d, "duration_us": %d, "bytes": %d, "connect": %d, ' ..
    '"read": %d, "write": %d, "status": %d, "timeout": %d, "latency_p50_us": %d, ' ..
    '"latency_p99_us": %d}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write,
    e.status, e.timeout, latency:percentile(50), latency:percentile(99)))
end
