local counter = 0
local tid = 0
setup = function(thread) thread:set("tid", tid); tid = tid + 1 end
request = function()
  counter = counter + 1
  local n = tid * 100000000 + counter
  local inc = "PBENCH" .. (n % 50)
  local kind = "incident.acknowledged"
  if counter <= 50 and tid == 0 then kind = "incident.triggered" end
  local body = '{"event":{"id":"bench-' .. n .. '","event_type":"' .. kind .. '","resource_type":"incident","occurred_at":"2024-03-14T14:23:00.000Z","agent":{"summary":"sarah"},"data":{"id":"' .. inc .. '","type":"incident","title":"API response time > 5000ms","status":"triggered","urgency":"high","service":{"summary":"api"}}}}'
  return wrk.format("POST", "/webhooks/pagerduty", {["Content-Type"]="application/json"}, body)
end
