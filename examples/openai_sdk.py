"""Any OpenAI app can use llmq: the OpenAI SDK pointed at llmq's front door.

Run against a stack started with `llmq local up` (its front door serves tenant `default` on
127.0.0.1:28080 without keys; elsewhere pass a key made by `llmq keys new TENANT`):
    python examples/openai_sdk.py
"""

from __future__ import annotations

import os

from openai import OpenAI
from openai.types.chat import ChatCompletionFunctionToolParam
from openai.types.responses import FunctionToolParam

client = OpenAI(
    base_url=os.environ.get("LLMQ_API_URL", "http://127.0.0.1:28080/v1"),
    api_key=os.environ.get("LLMQ_API_KEY", "unused on loopback"),
)

# A whole answer; llmq's extras (cache, route, timings) ride along in `llmq`.
answer = client.chat.completions.create(
    model="smollm2-135m",
    messages=[{"role": "user", "content": "What is the capital of France?"}],
    max_tokens=32,
    temperature=0,
)
print(answer.choices[0].message.content, (answer.model_extra or {}).get("llmq"))

# The same, streamed token by token (several tokens per chunk), with the usage at the end.
stream = client.chat.completions.create(
    model="smollm2-135m",
    messages=[{"role": "user", "content": "Name three primary colours."}],
    max_tokens=48,
    temperature=0,
    stream=True,
    stream_options={"include_usage": True},
    extra_headers={"X-Llmq-Lane": "interactive"},
)
for chunk in stream:
    if chunk.choices:
        print(chunk.choices[0].delta.content or "", end="", flush=True)
    elif chunk.usage is not None:
        print(f"\n[{chunk.usage.completion_tokens} tokens]")

# JSON that follows a schema: the engine writes nothing else (it parses unless max_tokens cuts it).
city = client.chat.completions.create(
    model="smollm2-135m",
    messages=[{"role": "user", "content": "Which city is the capital of France?"}],
    max_tokens=48,
    temperature=0,
    response_format={
        "type": "json_schema",
        "json_schema": {
            "name": "city",
            "schema": {
                "type": "object",
                "properties": {"city": {"type": "string", "maxLength": 40}},
                "required": ["city"],
                "additionalProperties": False,
            },
        },
    },
)
print(city.choices[0].message.content)

# A text completion (the legacy API, as vLLM's server serves it): the prompt is continued as
# it is, with no chat template; vLLM's sampling extensions ride in extra_body.
text = client.completions.create(
    model="smollm2-135m",
    prompt="The three primary colours are",
    max_tokens=16,
    temperature=0,
    extra_body={"top_k": 20, "repetition_penalty": 1.1},
)
print(text.choices[0].text)

# The Responses API, for text: instructions and input, answered as a `response`.
reply = client.responses.create(
    model="smollm2-135m",
    instructions="Answer in one short sentence.",
    input="Why is the sky blue?",
    max_output_tokens=48,
    temperature=0,
)
print(reply.output_text, f"[{reply.status}]")

# It is stored: the next one continues its conversation (not its instructions).
follow_up = client.responses.create(
    model="smollm2-135m",
    previous_response_id=reply.id,
    input="And at sunset?",
    max_output_tokens=48,
    temperature=0,
)
print(follow_up.output_text, f"[{follow_up.status}]")
client.responses.delete(reply.id)  # kept 30 days unless deleted (or store=False)

# Tool calls: a named function's call (or "required"), its arguments held to its schema.
place: dict[str, object] = {
    "type": "object",
    "properties": {"city": {"type": "string", "maxLength": 32}},
    "required": ["city"],
    "additionalProperties": False,
}
weather: ChatCompletionFunctionToolParam = {
    "type": "function",
    "function": {"name": "get_weather", "parameters": place},
}
called = client.chat.completions.create(
    model="smollm2-135m",
    messages=[{"role": "user", "content": "What is the weather in Paris?"}],
    tools=[weather],
    tool_choice={"type": "function", "function": {"name": "get_weather"}},
    max_tokens=32,
    temperature=0,
)
for call in called.choices[0].message.tool_calls or []:
    if call.type == "function":
        print(call.function.name, call.function.arguments)

# The same through the Responses API: function tools are flat, the call is an output item,
# and its output continues the stored response.
flat: FunctionToolParam = {
    "type": "function",
    "name": "get_weather",
    "parameters": place,
    "strict": True,
}
asked = client.responses.create(
    model="smollm2-135m",
    input="What is the weather in Paris?",
    tools=[flat],
    tool_choice={"type": "function", "name": "get_weather"},
    max_output_tokens=32,
    temperature=0,
)
for item in asked.output:
    if item.type == "function_call":
        print(item.name, item.arguments)
        told = client.responses.create(
            model="smollm2-135m",
            previous_response_id=asked.id,
            input=[{"type": "function_call_output", "call_id": item.call_id, "output": "sunny"}],
            max_output_tokens=32,
            temperature=0,
        )
        print(told.output_text, f"[{told.status}]")
        print([i.type for i in client.responses.input_items.list(told.id, order="asc")])
