"""Drives the proxy's Anthropic Messages API with the official `anthropic` Python package:
a message, a raw stream, the stream helper's accumulated message and a token count (or,
with SIDECAR_SCENARIO=one, the message alone). Prints what it saw as one JSON object for
the Rust test to check."""

import json
import os
import sys

import anthropic

MODEL = os.environ.get("SIDECAR_MODEL", "claude-test")
MESSAGES = [{"role": "user", "content": "hello"}]

# An https:// proxy signed by a private CA: trusted the way users do it, through the
# SDK's own HTTP client (`anthropic` 2.x is built on httpx2, not httpx).
http_client = None
if os.environ.get("SIDECAR_CA"):
    import ssl

    http_client = anthropic.DefaultHttpxClient(
        verify=ssl.create_default_context(cafile=os.environ["SIDECAR_CA"]), timeout=20
    )
# The base URL has no /v1: the SDK appends /v1/messages itself.
client = anthropic.Anthropic(
    base_url=os.environ["SIDECAR_PROXY_URL"],
    api_key=os.environ.get("SIDECAR_API_KEY", "client-side-key"),
    max_retries=0,
    timeout=20,
    http_client=http_client,
)

# (a) A plain message.
message = client.messages.create(model=MODEL, max_tokens=64, messages=MESSAGES)
result = {
    "content": "".join(block.text for block in message.content if block.type == "text"),
    "model": message.model,
    "usage": {
        "input_tokens": message.usage.input_tokens,
        "output_tokens": message.usage.output_tokens,
        "cache_creation_input_tokens": message.usage.cache_creation_input_tokens,
        "cache_read_input_tokens": message.usage.cache_read_input_tokens,
    },
}

if os.environ.get("SIDECAR_SCENARIO") != "one":
    # (b) The raw event stream, as the SDK yields it (it drops `ping` events itself).
    event_types = []
    texts = []
    stream = client.messages.create(model=MODEL, max_tokens=64, messages=MESSAGES, stream=True)
    for event in stream:
        event_types.append(event.type)
        if event.type == "content_block_delta" and event.delta.type == "text_delta":
            texts.append(event.delta.text)

    # (c) The stream helper, which accumulates the message (and its usage) from the events.
    with client.messages.stream(model=MODEL, max_tokens=64, messages=MESSAGES) as s:
        final = s.get_final_message()

    # (d) A token count.
    counted = client.messages.count_tokens(model=MODEL, messages=MESSAGES)

    result.update(
        {
            "stream_event_types": event_types,
            "stream_text": "".join(texts),
            "stream_usage": {
                "input_tokens": final.usage.input_tokens,
                "output_tokens": final.usage.output_tokens,
            },
            "count_tokens": counted.input_tokens,
        }
    )

json.dump(result, sys.stdout)
print()
