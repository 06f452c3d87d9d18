-- wrk script: POST a valid lead with a fresh event_id and email each time (threads seeded apart).
local counter = 0
local threads = {}

function setup(thread)
  thread:set("tid", #threads + 1)
  table.insert(threads, thread)
end

function init(args)
  math.randomseed(os.time() * 100 + (tid or 0))
end

local function uuid4()
  local template = "xxxxxxxx-xxxx-4xxx-yxxx-xxxxxxxxxxxx"
  return (template:gsub("[xy]", function(c)
    local v = (c == "x") and math.random(0, 15) or math.random(8, 11)
    return string.format("%x", v)
  end))
end

request = function()
  counter = counter + 1
  local id = uuid4()
  local body = '{"event_id":"' .. id .. '","full_name":"Bench Buyer","email":"bench.' .. id
    .. '@example.com","phone":"+351912345678","utm_source":"bench","utm_medium":"cpc",'
    .. '"utm_campaign":"load-test","marketing_consent":true,"analytics_consent":true,'
    .. '"consent_method":"modal","consent_version":"1.0"}'
  return wrk.format("POST", "/v1/leads", {["Content-Type"] = "application/json"}, body)
end
