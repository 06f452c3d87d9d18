-- wrk script: POST pre-signed Stripe events read from one file per thread (path prefix in $WEBHOOK_EVENTS).
-- Each line is "<Stripe-Signature>\t<body>"; a thread that runs out starts over (the bench sizes the files so
-- that does not happen, and reports it if it did).
local threads = {}

function setup(thread)
  thread:set("tid", #threads)
  table.insert(threads, thread)
end

function init(args)
  requests = {}
  for line in io.lines(os.getenv("WEBHOOK_EVENTS") .. "." .. tid) do
    local tab = line:find("\t", 1, true)
    requests[#requests + 1] = wrk.format("POST", "/v1/webhooks/stripe", {
      ["Content-Type"] = "application/json",
      ["Stripe-Signature"] = line:sub(1, tab - 1),
    }, line:sub(tab + 1))
  end
  index = 0
end

request = function()
  index = index % #requests + 1
  return requests[index]
end
