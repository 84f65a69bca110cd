-- replay.lua - wrk: retries of the preloaded completed keys
-- (bench-replay-1 .. N, N the first script argument).
local keys = 1000

function init(args)
  keys = tonumber(args[1]) or keys
end

wrk.method = "POST"
wrk.body = '{"amount":10.50,"currency":"USD","customer_id":"cust-bench"}'
wrk.headers["Content-Type"] = "application/json"

function request()
  wrk.headers["Idempotency-Key"] = "bench-replay-" .. math.random(1, keys)
  return wrk.format()
end
