"""The `openai` client the test scripts drive the proxy with: SIDECAR_PROXY_URL, no
retries, a 20 s timeout, and for an https:// proxy signed by a private CA (SIDECAR_CA)
trust given the way users do it, through httpx."""

import os

import openai


def openai_client(api_key="client-side-key"):
    http_client = None
    if os.environ.get("SIDECAR_CA"):
        import httpx

        http_client = httpx.Client(verify=os.environ["SIDECAR_CA"], timeout=20)
    return openai.OpenAI(
        base_url=os.environ["SIDECAR_PROXY_URL"],
        api_key=api_key,
        max_retries=0,
        timeout=20,
        http_client=http_client,
    )
