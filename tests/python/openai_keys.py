"""Drives a proxy that requires client keys with the official `openai` Python package:
the exception class (and status) each refusal raises, and a served request. Prints what
it saw as JSON for the Rust test to check."""

import json
import os

import openai

url = os.environ["SIDECAR_PROXY_URL"]


def attempt(api_key, model):
    client = openai.OpenAI(base_url=url, api_key=api_key, max_retries=0, timeout=20)
    try:
        r = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}])
        return {"ok": r.choices[0].message.content}
    except openai.APIStatusError as e:
        return {"class": type(e).__name__, "status": e.status_code, "type": (e.body or {}).get("type")}


print(
    json.dumps(
        {
            "placeholder": attempt("sk-placeholder", "gpt-test"),
            "unknown": attempt("sk-sc-" + "x" * 40, "gpt-test"),
            "out_of_scope": attempt(os.environ["SIDECAR_KEY"], "other-model"),
            "served": attempt(os.environ["SIDECAR_KEY"], "gpt-test"),
        }
    )
)
