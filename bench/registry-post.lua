-- wrk script for bench/registry.sh: POST an AdmissionReview to /mutate, one at a time.
-- REVIEW_FILE holds the review with the placeholder __IMAGE__ in the container's image.
-- IMAGE_PREFIX set: request k uses image IMAGE_PREFIX..k (a new tag each time: cold lookups),
-- and the thread stops after COUNT responses. IMAGE set: every request uses that image.
local f = assert(io.open(os.getenv("REVIEW_FILE"), "rb"))
local template = f:read("*a")
f:close()
local prefix = os.getenv("IMAGE_PREFIX")
local fixed = os.getenv("IMAGE") or ""
local count = tonumber(os.getenv("COUNT") or "0")
local sent, done_n = 0, 0

local function body_for(image)
  return (template:gsub("__IMAGE__", image))
end

local fixed_body = body_for(fixed)

function request()
  local body = fixed_body
  if prefix then
    body = body_for(prefix .. tostring(sent))
    sent = sent + 1
  end
  return wrk.format("POST", nil, {["Content-Type"] = "application/json"}, body)
end

function response(status, headers, body)
  if status ~= 200 or not body:find('"patch"', 1, true) then
    io.stderr:write("unexpected answer: " .. status .. " " .. body:sub(1, 300) .. "\n")
  end
  done_n = done_n + 1
  if prefix and done_n >= count then
    wrk.thread:stop()
  end
end

function done(summary, latency, requests)
  io.write(string.format(
    "RESULT requests=%d p50_ms=%.3f p99_ms=%.3f mean_ms=%.3f errors=%d\n",
    summary.requests, latency:percentile(50) / 1000, latency:percentile(99) / 1000,
    latency.mean / 1000,
    summary.errors.connect + summary.errors.read + summary.errors.write
      + summary.errors.timeout + summary.errors.status))
end
