-- wrk script for bench/webhook.sh: POST the AdmissionReview in $REVIEW_FILE to /mutate.
-- $DELAY_MS > 0 paces each connection (one request, then that many ms of pause).
local f = assert(io.open(os.getenv("REVIEW_FILE"), "rb"))
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = "application/json"

-- Each pause is drawn uniformly from [DELAY_MS/2, 3*DELAY_MS/2]: with a fixed pause every
-- connection stays in phase with the others and requests arrive in bursts of one per connection.
local delay_ms = tonumber(os.getenv("DELAY_MS") or "0")
if delay_ms > 0 then
  math.randomseed(os.time())
  function delay()
    return math.random(math.floor(delay_ms / 2), math.floor(delay_ms * 3 / 2))
  end
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "RESULT rps=%.0f p50_ms=%.3f p99_ms=%.3f requests=%d socket_errors=%d http_errors=%d\n",
    summary.requests / (summary.duration / 1e6),
    latency:percentile(50) / 1000, latency:percentile(99) / 1000,
    summary.requests, e.connect + e.read + e.write + e.timeout, e.status))
end
