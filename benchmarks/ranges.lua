-- wrk script: GET byte ranges of files from a pre-shuffled list, "path<TAB>first-last" a line.
-- usage: wrk -t1 -c8 -d15s --latency -s ranges.lua http://127.0.0.1:PORT -- ranges.txt
-- Each thread walks the list from its own offset, as chunks.lua does.
local paths = {}
local ranges = {}
local i = 0
local counter = 0
function setup(thread)
  thread:set("tid", counter)
  counter = counter + 1
end
function init(args)
  local f = assert(io.open(args[1], "r"))
  for line in f:lines() do
    local p, r = line:match("^(%S+)\t(%S+)$")
    paths[#paths + 1] = p
    ranges[#ranges + 1] = r
  end
  f:close()
  i = ((tid or 0) * 7919) % #paths
end
function request()
  i = i % #paths + 1
  return wrk.format("GET", paths[i], {["Origin"] = "http://localhost:8080", ["Range"] = "bytes=" .. ranges[i]})
end
