"""Drives the proxy's OpenAI Responses API with the official `openai` Python package: a
response, a streamed one, a follow-up chained by previous_response_id, a retrieve, and a
delete after which the response is gone. Prints what it saw as one JSON object for the
Rust test to check."""

import json
import os
import sys

import openai
from proxy_client import openai_client

MODEL = os.environ.get("SIDECAR_MODEL", "gpt-test")

client = openai_client()

# (a) A plain response.
first = client.responses.create(model=MODEL, input="hello")

# (b) A streamed one: every event's type, the text deltas, and the completed response.
event_types = []
deltas = []
stream_id = None
stream_usage = None
stream = client.responses.create(model=MODEL, input="stream please", stream=True)
for event in stream:
    event_types.append(event.type)
    if event.type == "response.output_text.delta":
        deltas.append(event.delta)
    elif event.type == "response.completed":
        stream_id = event.response.id
        stream_usage = {
            "input_tokens": event.response.usage.input_tokens,
            "output_tokens": event.response.usage.output_tokens,
        }

# (c) A follow-up that continues the first response.
second = client.responses.create(model=MODEL, input="and then?", previous_response_id=first.id)

# (d) The first response, fetched back.
got = client.responses.retrieve(first.id)

# (e) Deleted, the second response is gone.
client.responses.delete(second.id)
try:
    client.responses.retrieve(second.id)
    deleted_then_404 = False
except openai.NotFoundError:
    deleted_then_404 = True

json.dump(
    {
        "id": first.id,
        "text": first.output_text,
        "model": first.model,
        "usage": {
            "input_tokens": first.usage.input_tokens,
            "output_tokens": first.usage.output_tokens,
            "cached_tokens": first.usage.input_tokens_details.cached_tokens,
            "reasoning_tokens": first.usage.output_tokens_details.reasoning_tokens,
            "total_tokens": first.usage.total_tokens,
        },
        "stream_event_types": event_types,
        "stream_text": "".join(deltas),
        "stream_id": stream_id,
        "stream_usage": stream_usage,
        "second_id": second.id,
        "second_previous": second.previous_response_id,
        "retrieved_id": got.id,
        "deleted_then_404": deleted_then_404,
    },
    sys.stdout,
)
print()
