-- Copied verbatim from shared/bench/chunks.lua (the project may not read ../shared at run
-- time); keep the two in sync if either changes.
-- wrk script: GET chunk paths from a pre-shuffled list, one per line.
-- usage: wrk -t1 -c8 -d15s --latency -s chunks.lua http://127.0.0.1:PORT -- urls.txt
-- Each thread walks the list from its own offset (deterministic, no RNG cost).
local paths = {}
local i = 0
local counter = 0
function setup(thread)
  thread:set("tid", counter)
  counter = counter + 1
end
function init(args)
  local f = assert(io.open(args[1], "r"))
  for line in f:lines() do paths[#paths + 1] = line end
  f:close()
  i = ((tid or 0) * 7919) % #paths
end
function request()
  i = i % #paths + 1
  return wrk.format("GET", paths[i], {["Origin"] = "http://localhost:8080"})
end
