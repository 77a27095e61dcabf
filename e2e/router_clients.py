"""Drives the gateway, in front of the router double, with the Python clients users have.

Usage: router_clients.py <gateway url> <key for openai> <key for huggingface_hub> <key for fal-ai>.
Prints one JSON object with what each client got back; router_clients.test.mjs asserts on it.

- openai with a model pinned to a provider (`acme/chat-1:together`), streamed and not;
- huggingface_hub's InferenceClient(base_url=<gateway>) with `acme/chat-1:groq`;
- a queued fal-ai job polled exactly as huggingface_hub's fal-ai provider polls
  (huggingface_hub/inference/_providers/fal_ai.py, FalAIQueueTask.get_response): the status
  and result URLs are built from the submit URL's scheme and host, plus "/fal-ai" when that
  host is router.huggingface.co, plus the path of the queue's `response_url`, plus the submit
  URL's query, and the status is polled every 0.5 s until COMPLETED. The client hard-codes the
  router's host (and sends a non-`hf_` key straight to fal.run), so it cannot be pointed at the
  gateway as it stands; this does the same in plain httpx2 (what huggingface_hub itself uses),
  once as it would against the router (the "/fal-ai" form), and once through the library's own
  FalAIQueueTask.get_response with the gateway's submit URL (a non-router host: no "/fal-ai").
"""
import json
import sys
import time
from urllib.parse import urlparse

import httpx2
from huggingface_hub import InferenceClient
from huggingface_hub.inference._common import RequestParameters
from huggingface_hub.inference._providers.fal_ai import _POLLING_INTERVAL, FalAIQueueTask
from openai import OpenAI

base, openai_key, hub_key, fal_key = sys.argv[1:5]
out = {}
msgs = [{"role": "user", "content": "hi"}]

# openai, pinned to together
oa = OpenAI(base_url=f"{base}/v1", api_key=openai_key, max_retries=0)
raw = oa.chat.completions.with_raw_response.create(model="acme/chat-1:together", messages=msgs, max_tokens=20)
r = raw.parse()
out["openai"] = r.choices[0].message.content
out["openai_model"] = r.model
out["openai_provider"] = raw.headers.get("x-inference-provider")
out["openai_stream"] = "".join(
    c.choices[0].delta.content or ""
    for c in oa.chat.completions.create(model="acme/chat-1:together", stream=True, messages=msgs, max_tokens=20)
    if c.choices
)

# huggingface_hub, base_url = the gateway
hf = InferenceClient(base_url=base, api_key=hub_key)
r = hf.chat_completion(messages=msgs, model="acme/chat-1:groq", max_tokens=20)
out["hub"] = r.choices[0].message.content
out["hub_model"] = r.model

# fal-ai, the way huggingface_hub submits and polls through the router
submit_url = f"{base}/fal-ai/fal-ai/flux/dev?_subdomain=queue"
headers = {"authorization": f"Bearer {fal_key}", "content-type": "application/json"}
with httpx2.Client(timeout=30) as http:
    sub = http.post(submit_url, json={"prompt": "a cat"}, headers=headers)
    sub.raise_for_status()
    job = sub.json()
    parsed = urlparse(submit_url)
    # as against router.huggingface.co: the provider's prefix, then the response_url's path
    prefix = f"{parsed.scheme}://{parsed.netloc}/fal-ai"
    query = f"?{parsed.query}" if parsed.query else ""
    model_path = urlparse(job["response_url"]).path
    status_url = f"{prefix}{model_path}/status{query}"
    result_url = f"{prefix}{model_path}{query}"
    statuses, gaps = [], []
    status = job.get("status")
    last = time.monotonic()
    while status != "COMPLETED" and len(statuses) < 20:
        time.sleep(_POLLING_INTERVAL)
        now = time.monotonic()
        gaps.append(round((now - last) * 1000))
        resp = http.get(status_url, headers=headers)
        last = time.monotonic()
        if resp.status_code != 200:
            statuses.append(f"HTTP {resp.status_code}: {resp.text[:300]}")
            break
        status = resp.json().get("status")
        statuses.append(status)
    result = http.get(result_url, headers=headers)
    out["fal_router_form"] = {
        "request_id": job.get("request_id"),
        "status_url": status_url[len(base):],
        "statuses": statuses,
        "min_gap_ms": min(gaps) if gaps else None,
        "result_status": result.status_code,
        "result": result.json() if result.status_code == 200 else result.text[:300],
    }

    # the library's own polling code, given the gateway's submit URL
    sub = http.post(submit_url, json={"prompt": "a dog"}, headers=headers)
    sub.raise_for_status()
    job = sub.json()
    params = RequestParameters(url=submit_url, task="text-to-image", model="fal-ai/flux/dev", json={"prompt": "a dog"}, data=None, headers=headers)
    try:
        got = FalAIQueueTask("text-to-image").get_response(job, params)
        out["fal_hub_code"] = {"request_id": job.get("request_id"), "result": got}
    except Exception as e:  # the hub's HfHubHTTPError, with the URL it polled
        out["fal_hub_code"] = {"request_id": job.get("request_id"), "error": f"{type(e).__name__}: {str(e)[:300]}"}

print(json.dumps(out))
