-- mixed.lua - wrk: 90% new payments, 10% retries of this thread's recent
-- keys, and 1% of requests reusing the key just sent (a concurrent
-- duplicate with the other connections' traffic). Counts the answers.
local counter = 0
local prefix = ""
local recent = {}
statuses = {}

function setup(thread)
  thread:set("tid", tostring(math.random(1, 1e9)))
  table.insert(threads, thread)
end
threads = {}

function init(args)
  prefix = "mix-" .. (args[1] or "run") .. "-" .. tid .. "-"
end

wrk.method = "POST"
wrk.body = '{"amount":10.50,"currency":"USD","customer_id":"cust-bench"}'
wrk.headers["Content-Type"] = "application/json"

function request()
  local r = math.random(1, 100)
  local key
  if r == 1 and counter > 0 then
    key = prefix .. counter                      -- the key just sent, again
  elseif r <= 11 and #recent > 0 then
    key = recent[math.random(1, #recent)]        -- a retry of a recent key
  else
    counter = counter + 1
    key = prefix .. counter
    recent[(counter % 200) + 1] = key
  end
  wrk.headers["Idempotency-Key"] = key
  return wrk.format()
end

function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
end

function done(summary, latency, requests)
  local total = {}
  for _, t in ipairs(threads) do
    local s = t:get("statuses")
    for k, v in pairs(s) do total[k] = (total[k] or 0) + v end
  end
  local parts = {}
  for k, v in pairs(total) do table.insert(parts, string.format('"%d":%d', k, v)) end
  io.write("OUTCOMES {" .. table.concat(parts, ",") .. "}\n")
end
