"""Drives a running `canon serve` with the official `openai` client (tier 2 of the server tests).

    python openai_client.py BASE_URL EMBEDDINGS_JSONL

EMBEDDINGS_JSONL: `canon embed` output for the texts below; the server's embeddings must equal it.
Exits non-zero with a message on the first failed check.
"""

import json
import sys

from openai import BadRequestError, NotFoundError, OpenAI

base, ref_path = sys.argv[1], sys.argv[2]
c = OpenAI(base_url=base, api_key="unused")


def check(cond, msg):
    if not cond:
        sys.exit(f"check failed: {msg}")


# Twice: the second answer, like the streamed one below, reuses the cached prompt (whose last
# position is then recomputed in a one-row pass), so the two are comparable bit for bit.
for _ in range(2):
    r = c.chat.completions.create(model="smollm2", messages=[{"role": "system", "content": "Be terse."}, {"role": "user", "content": "Name three primes."}], max_tokens=24, temperature=0)
text = r.choices[0].message.content
check(isinstance(text, str) and text, "chat content")
check(r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens, "usage adds up")
check(r.choices[0].finish_reason in ("stop", "length"), "finish reason")

s = c.chat.completions.create(model="smollm2", messages=[{"role": "system", "content": "Be terse."}, {"role": "user", "content": "Name three primes."}], max_tokens=24, temperature=0, stream=True, stream_options={"include_usage": True})
parts, usage, finish = [], None, None
for ch in s:
    if ch.usage:
        usage = ch.usage
    for choice in ch.choices:
        if choice.delta.content:
            parts.append(choice.delta.content)
        if choice.finish_reason:
            finish = choice.finish_reason
check("".join(parts) == text, f"streamed text {''.join(parts)!r} != {text!r}")
check(usage is not None and usage.completion_tokens == r.usage.completion_tokens, "streamed usage")
check(finish == r.choices[0].finish_reason, "streamed finish reason")

r = c.chat.completions.create(model="smollm2", messages=[{"role": "user", "content": "Say hi"}], max_tokens=8, n=3, temperature=1.0, seed=5)
check(len(r.choices) == 3 and [x.index for x in r.choices] == [0, 1, 2], "n = 3")

r = c.completions.create(model="smollm2", prompt=["The capital of France is", "1, 2, 3,"], max_tokens=6, temperature=0)
check(len(r.choices) == 2 and all(isinstance(x.text, str) for x in r.choices), "completions")

# Structured output: the reply parses and validates against the schema.
schema = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 40}, "country": {"type": "string", "maxLength": 40}, "population_millions": {"type": "integer", "minimum": 0, "maximum": 1000}}, "required": ["city", "country", "population_millions"], "additionalProperties": False}
r = c.chat.completions.create(model="smollm2", messages=[{"role": "user", "content": "Give the largest city of Japan as JSON."}], max_tokens=80, temperature=0, response_format={"type": "json_schema", "json_schema": {"name": "city", "schema": schema, "strict": True}})
# Every field is bounded, so the reply ends within max_tokens (an unbounded number lets a small
# model write digits until the limit, and a cut reply is not JSON).
check(r.choices[0].finish_reason == "stop", f"json_schema reply cut: {r.choices[0]}")
obj = json.loads(r.choices[0].message.content)
check(set(obj) == {"city", "country", "population_millions"} and isinstance(obj["population_millions"], int), f"json_schema output {obj}")

# A tool call round trip: the model calls the tool with valid arguments, the result goes back.
tools = [{"type": "function", "function": {"name": "get_weather", "description": "Current weather in a city", "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 40}}, "required": ["city"], "additionalProperties": False}}}]
msgs = [{"role": "user", "content": "What is the weather in Paris?"}]
r = c.chat.completions.create(model="smollm2", messages=msgs, tools=tools, tool_choice="required", max_tokens=60, temperature=0)
call = r.choices[0].message.tool_calls[0]
check(r.choices[0].finish_reason == "tool_calls" and call.function.name == "get_weather", f"tool call {r.choices[0]}")
args = json.loads(call.function.arguments)
check(isinstance(args.get("city"), str), f"tool arguments {args}")
msgs += [r.choices[0].message.model_dump(exclude_none=True), {"role": "tool", "tool_call_id": call.id, "content": "18 C, sunny"}]
r = c.chat.completions.create(model="smollm2", messages=msgs, tools=tools, max_tokens=30, temperature=0)
check(r.choices[0].message.content or r.choices[0].message.tool_calls, "answer after the tool result")
s = c.chat.completions.create(model="smollm2", messages=msgs[:1], tools=tools, tool_choice="required", max_tokens=60, temperature=0, stream=True)
streamed = [tc for ch in s for choice in ch.choices for tc in (choice.delta.tool_calls or [])]
check(len(streamed) == 1 and streamed[0].function.name == "get_weather" and json.loads(streamed[0].function.arguments) == args, f"streamed tool call {streamed}")

texts = [json.loads(l) for l in open(ref_path) if l.strip()]
e = c.embeddings.create(model="minilm", input=[t["text"] for t in texts])
check(len(e.data) == len(texts), "embedding count")
for got, want in zip(e.data, texts):
    diff = max(abs(a - b) for a, b in zip(got.embedding, want["embedding"]))
    check(diff <= 1e-6, f"embedding of {want['text']!r} differs by {diff}")

check([m.id for m in c.models.list().data] == ["smollm2", "minilm"], "models")

try:
    c.chat.completions.create(model="smollm2", messages=[], max_tokens=5)
    check(False, "empty messages accepted")
except BadRequestError as ex:
    check("messages" in str(ex), "empty messages error")
try:
    c.chat.completions.create(model="gpt-5", messages=[{"role": "user", "content": "x"}])
    check(False, "unknown model accepted")
except NotFoundError:
    pass
print("openai client: all checks passed")
