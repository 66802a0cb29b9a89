-- wrk script: spread kv-counter requests over 1,000 keys.
request = function()
  return wrk.format("GET", "/count/k" .. math.random(1, 1000))
end
