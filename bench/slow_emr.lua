-- bench/slow_emr.lua — an EMR page that takes 2 ms (a real EMR's order), for the latency rows
-- of bench/run and bench/ab. Loaded by an HAProxy frontend (`http-request use-service
-- lua.slow_emr`); the upstream nginx proxies /patients/P001/notes to it, so every contender
-- (and "direct") reaches the slow page through the same upstream. core.msleep yields: the
-- 2 ms are a wait, not CPU.
local delay_ms = tonumber(os.getenv("SLOW_EMR_MS") or "2")
local head = "<!doctype html><html><head><meta charset=utf-8><title>notes</title></head><body><pre>"
local tail = "</pre></body></html>\n"
local body = head .. string.rep("x", 1024 - #head - #tail) .. tail

core.register_service("slow_emr", "http", function(applet)
  core.msleep(delay_ms)
  applet:set_status(200)
  applet:add_header("content-type", "text/html")
  applet:add_header("content-length", tostring(#body))
  applet:start_response()
  applet:send(body)
end)
