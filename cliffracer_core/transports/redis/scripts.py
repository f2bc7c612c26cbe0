"""The Lua script that routes a message, in one round trip and atomically.

Keys (``P`` is the transport's prefix, ``cliffracer:`` by default; pub/sub channels ignore the
database number, so every key and channel carries it):

``P s:<subject>``              the pub/sub channel of a subject (subscriptions without a group)
``P i:<client>``               the pub/sub channel of a client's inboxes (``_INBOX.<client>.<n>``)
``P gm:<queue> <pattern>``     the set of a queue group's members (client ids)
``P g:<client>:<queue> <pattern>``  the list of messages waiting for one member of a group
``P bx:<subject>``             the set of groups bound to an exact subject
``P bw``                       the set of groups bound to a pattern with wildcards
``P rr``                       a counter that takes the members of a group in turn

A queue name has no white space, so ``<queue> <pattern>`` names one group. The script pushes
to one live member of one group of each queue name whose pattern matches the subject (NATS
semantics: ``*`` one token, ``>`` one or more), members in turn, publishes on the subject's
channel, and returns how many got the message: 0 means no responders. A member is live while
its connection subscribes to its inbox channel (Redis drops that the moment the connection
goes); a dead member is dropped from its group, a group without members from the bindings, so
nothing is pushed where nobody reads, and a member's list expires ``ttl`` ms after the last push.
Lists per member rather than per group: one member popping a batch cannot take a burst that
NATS would have spread over the group.

It reads keys it was not given (the bindings and members of the subject's groups) and asks
``PUBSUB NUMSUB``: fine on one Redis server (or a primary with replicas), not on Redis Cluster.
"""

# Durable streams, in the same script as routing (a plain publish on a stream's subjects is
# stored too, as JetStream stores it). Keys, ``S`` a stream and ``C`` a durable consumer:
# ``xn`` hash S -> configuration (JSON); ``x:S`` hash inc (incarnation), last (sequence),
# bytes; ``xm:S`` a Redis stream of the messages, entry ids ``0-<sequence>``; ``xd:S:<inc>:<id>``
# a message id within the duplicate window; ``xks:S`` set of consumers; ``xk:S:C`` hash filter,
# ack_wait (ms), next (sequence), gen (which life of the consumer); ``xp:S:C`` hash sequence ->
# deliveries of what is delivered and not settled; ``xq:S:C`` sorted set sequence -> when it
# may be delivered again (ms): ack wait ahead while held (its holder renews it), the delay of a
# nak; ``xw:S`` the channel that wakes the stream's attachments.
STREAM_FUNCTIONS = r"""
local function key(kind, name) return prefix .. kind .. ":" .. name end

local function now_ms()
  local t = redis.call("TIME")
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function now_s()
  local t = redis.call("TIME")
  return tonumber(t[1]) + tonumber(t[2]) / 1000000
end

local function config_of(name)
  local raw = redis.call("HGET", prefix .. "xn", name)
  if not raw then return nil end
  return cjson.decode(raw)
end

local function sequence_of(id) return tonumber(string.match(id, "^0%-(%d+)$")) end

local function fields_of(item)
  local result = {seq = sequence_of(item[1])}
  local fields = item[2]
  for i = 1, #fields, 2 do result[fields[i]] = fields[i + 1] end
  return result
end

local function entry(name, seq)
  local found = redis.call("XRANGE", key("xm", name), "0-" .. seq, "0-" .. seq)
  if #found == 0 then return nil end
  return fields_of(found[1])
end

local function first_entry(name)
  local found = redis.call("XRANGE", key("xm", name), "-", "+", "COUNT", 1)
  if #found == 0 then return nil end
  return fields_of(found[1])
end

local function remove(name, seq)
  local found = entry(name, seq)
  if not found then return end
  redis.call("XDEL", key("xm", name), "0-" .. seq)
  redis.call("HINCRBY", key("x", name), "bytes", -tonumber(found.z))
end

local function trim(name, config, now)
  local meta = key("x", name)
  while true do
    local first = first_entry(name)
    if not first then break end
    local bytes = tonumber(redis.call("HGET", meta, "bytes") or 0)
    local count = redis.call("XLEN", key("xm", name))
    if (config.max_age > 0 and tonumber(first.t) <= now - config.max_age)
      or (config.max_msgs ~= -1 and count > config.max_msgs)
      or (config.max_bytes ~= -1 and bytes > config.max_bytes) then
      remove(name, first.seq)
    else
      break
    end
  end
end

local function consumer_key(name, consumer) return key("xk", name .. ":" .. consumer) end
local function pending_key(name, consumer) return key("xp", name .. ":" .. consumer) end
local function due_key(name, consumer) return key("xq", name .. ":" .. consumer) end

local function wanted(name, seq, subject_parts)
  for _, consumer in ipairs(redis.call("SMEMBERS", key("xks", name))) do
    local ck = consumer_key(name, consumer)
    local filter = redis.call("HGET", ck, "filter")
    if filter and matches(filter, subject_parts) then
      if seq >= tonumber(redis.call("HGET", ck, "next"))
        or redis.call("HEXISTS", pending_key(name, consumer), seq) == 1 then
        return true
      end
    end
  end
  return false
end

local function store_in(name, config, message_subject, message, msgid)
  local meta = key("x", name)
  local now = now_s()
  trim(name, config, now)
  local dedupe = nil
  if msgid ~= "" then
    dedupe = prefix .. "xd:" .. name .. ":" .. redis.call("HGET", meta, "inc") .. ":" .. msgid
    local seen = redis.call("GET", dedupe)
    if seen then return {"stored", tonumber(seen)} end
  end
  local size
  if config.storage == "memory" then
    size = #message_subject + header_bytes + body_bytes + 16
  else
    size = 30 + #message_subject + body_bytes
    if header_bytes > 0 then size = size + 4 + header_bytes end
  end
  local count = redis.call("XLEN", key("xm", name))
  local bytes = tonumber(redis.call("HGET", meta, "bytes") or 0)
  local refusal = nil
  if config.max_msg_size ~= -1 and header_bytes + body_bytes > config.max_msg_size then
    refusal = "message size exceeds maximum allowed"
  elseif config.discard == "new" then
    if config.max_msgs ~= -1 and count >= config.max_msgs then
      refusal = "maximum messages exceeded"
    elseif config.max_bytes ~= -1 and bytes + size > config.max_bytes then
      refusal = "maximum bytes exceeded"
    end
  end
  if refusal then return {"refused", refusal} end
  local seq = redis.call("HINCRBY", meta, "last", 1)
  redis.call("XADD", key("xm", name), "0-" .. seq, "e", message, "s", message_subject,
    "t", string.format("%.6f", now), "z", size)
  redis.call("HINCRBY", meta, "bytes", size)
  if dedupe then
    redis.call("SET", dedupe, seq, "PX", math.max(1, math.floor(config.duplicate_window * 1000)))
  end
  if config.max_msgs_per_subject ~= -1 then
    local same = {}
    for _, item in ipairs(redis.call("XRANGE", key("xm", name), "-", "+")) do
      local found = fields_of(item)
      if found.s == message_subject then same[#same + 1] = found.seq end
    end
    for i = 1, #same - config.max_msgs_per_subject do remove(name, same[i]) end
  end
  if config.retention == "interest" and not wanted(name, seq, split(message_subject)) then
    remove(name, seq)
  end
  trim(name, config, now)
  redis.call("PUBLISH", key("xw", name), "")
  return {"stored", seq}
end

local function capture(message_subject, message, id)
  local names = redis.call("HGETALL", prefix .. "xn")
  local subject_parts = split(message_subject)
  for i = 1, #names, 2 do
    local config = cjson.decode(names[i + 1])
    for _, pattern in ipairs(config.subjects) do
      if matches(pattern, subject_parts) then
        return store_in(names[i], config, message_subject, message, id)
      end
    end
  end
  return nil
end

local function ensure_consumer(name, consumer, filter, ack_wait, update)
  local ck = consumer_key(name, consumer)
  if redis.call("EXISTS", ck) == 0 then
    redis.call("HSET", ck, "filter", filter, "ack_wait", ack_wait, "next", 1,
      "gen", redis.call("INCR", prefix .. "xgen"))
    redis.call("SADD", key("xks", name), consumer)
  elseif update then
    redis.call("HSET", ck, "filter", filter, "ack_wait", ack_wait)
  end
  return redis.call("HGET", ck, "gen")
end

local function drop_consumer(name, consumer)
  redis.call("DEL", consumer_key(name, consumer), pending_key(name, consumer),
    due_key(name, consumer))
  return redis.call("SREM", key("xks", name), consumer)
end

local function next_delivery(name, consumer, filter, ack_wait)
  local config = config_of(name)
  if not config then return {"nostream"} end
  trim(name, config, now_s())
  local gen = ensure_consumer(name, consumer, filter, ack_wait, false)
  local inc = redis.call("HGET", key("x", name), "inc")
  local ck = consumer_key(name, consumer)
  local wait_ms = tonumber(redis.call("HGET", ck, "ack_wait"))
  local pk, qk = pending_key(name, consumer), due_key(name, consumer)
  local now = now_ms()
  while true do
    local due = redis.call("ZRANGEBYSCORE", qk, "-inf", now, "LIMIT", 0, 1)
    if #due == 0 then break end
    local seq = tonumber(due[1])
    local found = entry(name, seq)
    if found then
      local delivered = redis.call("HINCRBY", pk, seq, 1)
      redis.call("ZADD", qk, now + wait_ms, seq)
      return {"message", inc, gen, seq, delivered, found.e, found.t}
    end
    redis.call("HDEL", pk, seq)
    redis.call("ZREM", qk, seq)
  end
  local pattern = redis.call("HGET", ck, "filter")
  local cursor = tonumber(redis.call("HGET", ck, "next"))
  local first = first_entry(name)
  if first and first.seq > cursor then cursor = first.seq end
  while true do
    local batch = redis.call("XRANGE", key("xm", name), "0-" .. cursor, "+", "COUNT", 100)
    if #batch == 0 then break end
    for _, item in ipairs(batch) do
      local found = fields_of(item)
      cursor = found.seq + 1
      if matches(pattern, split(found.s)) then
        redis.call("HSET", ck, "next", cursor)
        redis.call("HSET", pk, found.seq, 1)
        redis.call("ZADD", qk, now + wait_ms, found.seq)
        return {"message", inc, gen, found.seq, 1, found.e, found.t}
      end
    end
  end
  redis.call("HSET", ck, "next", cursor)
  local earliest = redis.call("ZRANGE", qk, 0, 0, "WITHSCORES")
  if #earliest > 0 then return {"wait", inc, gen, tonumber(earliest[2]) - now} end
  return {"idle", inc, gen}
end

local function settle(name, consumer, gen, outcome, seq, delivered, delay)
  local ck = consumer_key(name, consumer)
  if redis.call("HGET", ck, "gen") ~= gen then return 0 end
  local pk, qk = pending_key(name, consumer), due_key(name, consumer)
  local current = redis.call("HGET", pk, seq)
  if not current then return 0 end
  if outcome == "ack" or outcome == "term" then
    redis.call("HDEL", pk, seq)
    redis.call("ZREM", qk, seq)
    local config = config_of(name)
    if config and config.retention ~= "limits" then
      local found = entry(name, seq)
      if found and not wanted(name, tonumber(seq), split(found.s)) then remove(name, seq) end
    end
    return 1
  end
  if outcome == "renew" then
    redis.call("ZADD", qk, now_ms() + tonumber(redis.call("HGET", ck, "ack_wait")), seq)
    return 1
  end
  if tonumber(current) ~= tonumber(delivered) then return 0 end
  if outcome == "nak" then
    redis.call("ZADD", qk, now_ms() + tonumber(delay), seq)
    redis.call("PUBLISH", key("xw", name), "")
  else
    redis.call("ZADD", qk, now_ms() + tonumber(redis.call("HGET", ck, "ack_wait")), seq)
  end
  return 1
end

local function consumer_state(name, consumer)
  local ck = consumer_key(name, consumer)
  if redis.call("EXISTS", ck) == 0 then return {} end
  local pattern = redis.call("HGET", ck, "filter")
  local cursor = tonumber(redis.call("HGET", ck, "next"))
  local pending = 0
  for _, item in ipairs(redis.call("XRANGE", key("xm", name), "0-" .. cursor, "+")) do
    local found = fields_of(item)
    if matches(pattern, split(found.s)) then pending = pending + 1 end
  end
  local counts = redis.call("HVALS", pending_key(name, consumer))
  local redelivered = 0
  for _, count in ipairs(counts) do
    if tonumber(count) > 1 then redelivered = redelivered + 1 end
  end
  return {consumer, pattern, pending, #counts, redelivered}
end

local function stream_command(command)
  local name = ARGV[3]
  local config = config_of(name)
  if command == "create" then
    if config then return 0 end  -- another process created it meanwhile: keep what it holds
    for _, consumer in ipairs(redis.call("SMEMBERS", key("xks", name))) do
      drop_consumer(name, consumer)
    end
    redis.call("DEL", key("x", name), key("xm", name), key("xks", name))
    redis.call("HSET", prefix .. "xn", name, ARGV[4])
    redis.call("HSET", key("x", name), "inc", ARGV[5], "last", 0, "bytes", 0)
    redis.call("PUBLISH", key("xw", name), "")
    return 1
  end
  if command == "delete_stream" then
    if not config then return 0 end
    for _, consumer in ipairs(redis.call("SMEMBERS", key("xks", name))) do
      drop_consumer(name, consumer)
    end
    redis.call("DEL", key("x", name), key("xm", name), key("xks", name))
    redis.call("HDEL", prefix .. "xn", name)
    redis.call("PUBLISH", key("xw", name), "")
    return 1
  end
  if not config then return {"nostream"} end
  if command == "update" then
    redis.call("HSET", prefix .. "xn", name, ARGV[4])
    trim(name, cjson.decode(ARGV[4]), now_s())
    return 1
  end
  if command == "state" then
    trim(name, config, now_s())
    local meta = key("x", name)
    return {"state", redis.call("HGET", meta, "inc"), redis.call("XLEN", key("xm", name)),
      tonumber(redis.call("HGET", meta, "bytes") or 0), redis.call("SCARD", key("xks", name))}
  end
  if command == "stored" then
    trim(name, config, now_s())
    local found = entry(name, ARGV[4])
    if not found then return {} end
    return {found.e, found.t}
  end
  if command == "attach" then
    local consumers = key("xks", name)
    if redis.call("SISMEMBER", consumers, ARGV[4]) == 0 and config.max_consumers > 0
      and redis.call("SCARD", consumers) >= config.max_consumers then
      return {"refused", "maximum consumers limit reached"}
    end
    local gen = ensure_consumer(name, ARGV[4], ARGV[5], ARGV[6], true)
    return {"ok", redis.call("HGET", key("x", name), "inc"), gen}
  end
  if command == "next" then return next_delivery(name, ARGV[4], ARGV[5], ARGV[6]) end
  if command == "settle" then
    return settle(name, ARGV[4], ARGV[5], ARGV[6], ARGV[7], ARGV[8], ARGV[9])
  end
  if command == "consumer_state" then return consumer_state(name, ARGV[4]) end
  if command == "consumers" then return redis.call("SMEMBERS", key("xks", name)) end
  if command == "delete_consumer" then
    local found = drop_consumer(name, ARGV[4])
    redis.call("PUBLISH", key("xw", name), "")
    return found
  end
  return redis.error_reply("unknown command " .. command)
end
"""


PUBLISH = (
    r"""
local mode, prefix, subject = ARGV[1], ARGV[2], ARGV[3]
local envelope, ttl, msgid = ARGV[4], ARGV[5], ARGV[6]
-- The bytes of the message's headers as NATS sends them, and of its body (for stream limits).
local header_bytes, body_bytes = tonumber(ARGV[7] or 0), tonumber(ARGV[8] or 0)

local function split(text)
  local tokens = {}
  for token in string.gmatch(text, "[^.]+") do tokens[#tokens + 1] = token end
  return tokens
end

local parts = split(subject)

local function matches(pattern, tokens_of)
  local subject_parts = tokens_of or parts
  local tokens = split(pattern)
  for index, token in ipairs(tokens) do
    if token == ">" then return #subject_parts >= index end
    if index > #subject_parts then return false end
    if token ~= "*" and token ~= subject_parts[index] then return false end
  end
  return #subject_parts == #tokens
end

-- Queue groups and broadcast

local delivered = 0
local served = {}

local function push(group, binding)
  local queue = string.match(group, "^([^ ]*) ")
  if served[queue] then return end
  local members_key = prefix .. "gm:" .. group
  local members = redis.call("SMEMBERS", members_key)
  local count = #members
  if count > 0 then
    -- The round-robin counter lives an hour from its first turn, then starts again from
    -- zero: nothing of a prefix outlives its use (a test's, a benchmark's).
    local turn = redis.call("INCR", prefix .. "rr")
    if turn == 1 then redis.call("PEXPIRE", prefix .. "rr", 3600000) end
    local start = turn % count
    for offset = 0, count - 1 do
      local member = members[(start + offset) % count + 1]
      if redis.call("PUBSUB", "NUMSUB", prefix .. "i:" .. member)[2] > 0 then
        local list = prefix .. "g:" .. member .. ":" .. group
        redis.call("RPUSH", list, envelope)
        redis.call("PEXPIRE", list, ttl)
        served[queue] = true
        delivered = delivered + 1
        return
      end
      redis.call("SREM", members_key, member)
    end
  end
  redis.call("SREM", binding, group)
end

local function route()
  local exact = prefix .. "bx:" .. subject
  for _, group in ipairs(redis.call("SMEMBERS", exact)) do push(group, exact) end
  local wild = prefix .. "bw"
  for _, group in ipairs(redis.call("SMEMBERS", wild)) do
    if matches(string.match(group, "^[^ ]* (.*)$")) then push(group, wild) end
  end
  return delivered + redis.call("PUBLISH", prefix .. "s:" .. subject, envelope)
end
"""
    + STREAM_FUNCTIONS
    + r"""
if mode == "publish" then
  local count = route()
  if redis.call("HLEN", prefix .. "xn") > 0 then
    capture(subject, envelope, msgid)  -- a stream keeps what is published on its subjects
  end
  return count
end
if mode == "store" then
  route()
  return capture(subject, envelope, msgid) or {"nostream"}
end
return stream_command(mode)
"""
)

# A member (ARGV[2]) leaves groups (ARGV[3:]); a group left without members is unbound.
LEAVE = r"""
local prefix, member = ARGV[1], ARGV[2]
for index = 3, #ARGV do
  local group = ARGV[index]
  local members_key = prefix .. "gm:" .. group
  redis.call("SREM", members_key, member)
  if redis.call("SCARD", members_key) == 0 then
    local pattern = string.match(group, "^[^ ]* (.*)$")
    if string.find(pattern, "[*>]") then
      redis.call("SREM", prefix .. "bw", group)
    else
      redis.call("SREM", prefix .. "bx:" .. pattern, group)
    end
  end
end
return 0
"""
