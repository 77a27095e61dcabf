"""Drives the gateway with the Python clients users have: openai and huggingface_hub.

Usage: python_clients.py <gateway url> <gateway key> <model>. Prints one JSON object with
what each client got back; the node test that runs this asserts on it.
"""
import json
import sys

from huggingface_hub import InferenceClient
from openai import OpenAI

base, key, model = sys.argv[1], sys.argv[2], sys.argv[3]
out = {}

oa = OpenAI(base_url=f"{base}/v1", api_key=key, max_retries=0)
r = oa.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=20)
out["openai"] = r.choices[0].message.content
out["openai_stream"] = "".join(
    c.choices[0].delta.content or ""
    for c in oa.chat.completions.create(
        model=model, stream=True, messages=[{"role": "user", "content": "hi"}], max_tokens=20
    )
    if c.choices
)

hf = InferenceClient(base_url=base, api_key=key)
r = hf.chat_completion(messages=[{"role": "user", "content": "hi"}], model=model, max_tokens=20)
out["hub"] = r.choices[0].message.content
out["hub_stream"] = "".join(
    c.choices[0].delta.content or ""
    for c in hf.chat_completion(messages=[{"role": "user", "content": "hi"}], model=model, max_tokens=20, stream=True)
    if c.choices
)

try:
    OpenAI(base_url=f"{base}/v1", api_key="hfg_" + "x" * 43, max_retries=0).chat.completions.create(
        model=model, messages=[], max_tokens=5
    )
    out["bad_key"] = "accepted"
except Exception as e:  # the SDK's AuthenticationError
    out["bad_key"] = f"{type(e).__name__}:{getattr(e, 'status_code', '')}"

print(json.dumps(out))
