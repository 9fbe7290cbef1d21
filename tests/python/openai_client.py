"""Drives the proxy with the official `openai` Python package: one normal and one
streamed chat completion. Prints what it saw as JSON for the Rust test to check."""

import json
import os
import sys

import openai
from proxy_client import openai_client

client = openai_client()

normal = client.chat.completions.create(
    model=os.environ.get("SIDECAR_MODEL", "gpt-test"),
    messages=[{"role": "user", "content": "hello"}],
)

# The tutorials' loop: every chunk has a choice. A usage chunk the client never asked
# for (`choices: []`) would fail here with IndexError.
chunks = []
stream = client.chat.completions.create(
    model=os.environ.get("SIDECAR_MODEL", "gpt-test"),
    messages=[{"role": "user", "content": "stream please"}],
    stream=True,
)
for chunk in stream:
    chunks.append(chunk.choices[0].delta.content or "")

# Asked for: the usage chunk arrives, last, with no choices.
usage = None
usage_chunk_choices = None
stream = client.chat.completions.create(
    model=os.environ.get("SIDECAR_MODEL", "gpt-test"),
    messages=[{"role": "user", "content": "stream please"}],
    stream=True,
    stream_options={"include_usage": True},
)
for chunk in stream:
    if chunk.usage is not None:
        usage = chunk.usage.total_tokens
        usage_chunk_choices = len(chunk.choices)
    else:
        chunk.choices[0].delta.content

json.dump(
    {
        "openai_version": openai.__version__,
        "content": normal.choices[0].message.content,
        "model": normal.model,
        "usage": normal.usage.total_tokens,
        "stream_text": "".join(chunks),
        "stream_chunks": len(chunks),
        "stream_usage": usage,
        "usage_chunk_choices": usage_chunk_choices,
    },
    sys.stdout,
)
