"""Renders messages with SGLang's own `chatml` conversation template (run in the SGLang venv).

stdin: a JSON list of message lists; stdout: a JSON list of prompts, as SGLang's chat endpoint
builds them for `--chat-template chatml` (generation prompt included). SGLang's OpenAI protocol
module needs the `openai` package, which the contract venv does not have and the conversation
code only names in a type hint, so a stand-in module takes its place.
"""

from __future__ import annotations

import json
import sys
import types
from types import SimpleNamespace

stub = types.ModuleType("sglang.srt.entrypoints.openai.protocol")
stub.ChatCompletionRequest = object  # type: ignore[attr-defined]
sys.modules["sglang.srt.entrypoints.openai.protocol"] = stub

from sglang.srt.parser.conversation import generate_chat_conv  # noqa: E402

out = []
for messages in json.loads(sys.stdin.read()):
    request = SimpleNamespace(messages=[SimpleNamespace(**m) for m in messages])
    out.append(generate_chat_conv(request, "chatml").get_prompt())
print(json.dumps(out))
