#!/usr/bin/env bash
# Any Kafka client can use llmq: publish JSON to llmq.requests, read llmq.results.
# Here with kcat against the local stack (`llmq local up`).
set -euo pipefail
broker=${LLMQ_KAFKA_BOOTSTRAP:-127.0.0.1:29092}
id="kcat-$(date +%s)-$$"
replies=$(mktemp)

# 1) Listen first: replies are keyed by correlation id on llmq.results.
kcat -C -b "$broker" -t llmq.results -o end -u -q -f '%k\t%s\n' >"$replies" 2>/dev/null &
listener=$!
trap 'kill "$listener" 2>/dev/null; rm -f "$replies"' EXIT
sleep 2

# 2) Publish a request: an OpenAI chat body inside llmq's envelope (one line: kcat -P
#    sends each input line as its own record).
body='{"messages": [{"role": "user", "content": "What is the capital of France?"}], '
body+='"max_tokens": 32, "temperature": 0}'
echo "{\"correlation_id\": \"$id\", \"tenant\": \"demo\", \"body\": $body}" \
  | kcat -P -b "$broker" -t llmq.requests -k "$id"

# 3) Wait for our reply (up to a minute).
for _ in $(seq 120); do
  if line=$(grep -m1 "^$id	" "$replies"); then
    printf '%s\n' "${line#*	}"
    exit 0
  fi
  sleep 0.5
done
echo "no reply for $id within 60 s" >&2
exit 1
