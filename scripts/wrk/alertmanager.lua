local counter = 0
local tid = 0
setup = function(thread) thread:set("tid", tid); tid = tid + 1 end
request = function()
  counter = counter + 1
  local n = tid * 100000000 + counter
  local body = '[{"labels":{"alertname":"APIResponseTime","service":"api","severity":"critical","n":"' .. n .. '"},"annotations":{"summary":"API response time > 5000ms"},"startsAt":"2026-01-10T14:23:00Z"}]'
  return wrk.format("POST", "/api/v2/alerts", {["Content-Type"]="application/json"}, body)
end
