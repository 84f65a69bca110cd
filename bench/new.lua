-- new.lua - wrk: every request a new payment with a key of its own.
local counter = 0
local prefix = ""

function setup(thread)
  thread:set("tid", tostring(math.random(1, 1e9)))
end

function init(args)
  prefix = "wrk-" .. (args[1] or "run") .. "-" .. tid .. "-"
end

wrk.method = "POST"
wrk.body = '{"amount":10.50,"currency":"USD","customer_id":"cust-bench"}'
wrk.headers["Content-Type"] = "application/json"

function request()
  counter = counter + 1
  wrk.headers["Idempotency-Key"] = prefix .. counter
  return wrk.format()
end
