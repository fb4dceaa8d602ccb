"""OpenAI's Batch API on llmq: upload a JSONL file of requests, run it on the batch lane,
wait, read the output file (the SDK's own calls, pointed at llmq's front door).

Run against a stack started with `llmq local up`:
    python examples/openai_batch.py
"""

from __future__ import annotations

import io
import json
import os
import time

from openai import OpenAI

client = OpenAI(
    base_url=os.environ.get("LLMQ_API_URL", "http://127.0.0.1:28080/v1"),
    api_key=os.environ.get("LLMQ_API_KEY", "unused on loopback"),
)

reviews = ["Loved it.", "It broke on day two.", "Does the job.", "Never again."]
lines = [
    {
        "custom_id": f"review-{n}",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {
            "model": "smollm2-135m",
            "messages": [
                {"role": "system", "content": "Answer positive, negative or neutral."},
                {"role": "user", "content": review},
            ],
            "max_tokens": 4,
            "temperature": 0,
        },
    }
    for n, review in enumerate(reviews)
]
text = "\n".join(json.dumps(line) for line in lines)
upload = client.files.create(file=("reviews.jsonl", io.BytesIO(text.encode())), purpose="batch")
batch = client.batches.create(
    input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h"
)
while batch.status not in ("completed", "failed", "expired", "cancelled"):
    time.sleep(1)
    batch = client.batches.retrieve(batch.id)
    print(batch.status, batch.request_counts)
if batch.output_file_id:
    for raw in client.files.content(batch.output_file_id).text.splitlines():
        line = json.loads(raw)  # in any order: match by custom_id
        answer = line["response"]["body"]["choices"][0]["message"]["content"]
        print(line["custom_id"], answer)
