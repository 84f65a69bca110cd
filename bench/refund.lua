-- refund.lua - wrk: every request a refund of 0.01 with a key of its own,
-- of the payments listed in the file args[2] (one transaction id a line),
-- taken in turn: the threads start at different places in the list, so
-- refunds of one payment (which queue on its row) rarely meet.
local counter = 0
local prefix = ""
local txns = {}
local start = 0

function setup(thread)
  thread:set("tid", tostring(math.random(1, 1e9)))
end

function init(args)
  prefix = "wrk-refund-" .. (args[1] or "run") .. "-" .. tid .. "-"
  for line in io.lines(args[2]) do
    txns[#txns + 1] = line
  end
  start = math.random(0, #txns - 1)
end

wrk.method = "POST"
wrk.body = '{"amount":0.01}'
wrk.headers["Content-Type"] = "application/json"

function request()
  counter = counter + 1
  wrk.headers["Idempotency-Key"] = prefix .. counter
  local txn = txns[(start + counter) % #txns + 1]
  return wrk.format(nil, "/api/v1/payments/" .. txn .. "/refunds")
end
