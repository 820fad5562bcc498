"""A member is trained with the chat template its server formats requests with.

`chat_template_text` is the one answer for both; for BitCPM4 in the paper's configs the server
gets `--chat-template chatml` (SGLang's own template), so the trainer must render SGLang's chatml
exactly. SGLang's side is rendered by SGLang's own conversation code, in the contract venv.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from tokenizers import Tokenizer, models
from transformers import PreTrainedTokenizerFast

from agora_cli.config import Member, chat_template_text
from agora_cli.training.data import solve_messages
from tests.test_sglang_contract import sglang_python

REPO = Path(__file__).resolve().parents[1]
# A member served with SGLang's built-in `chatml` named in its server arguments (the shipped
# BitCPM4 member names a template file instead, which serving and training read alike).
SERVED_AS_CHATML = Member(
    name="bitcpm4-1b", model="openbmb/BitCPM4-1B", server_args=["--chat-template", "chatml"]
)


def tokenizer_with(template: str | None) -> PreTrainedTokenizerFast:
    """A word-level tokenizer with `template`: the trainer renders text with it (data.py)."""
    tok = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel({"<unk>": 0}, unk_token="<unk>")),
        unk_token="<unk>",
        eos_token="<unk>",
    )
    tok.chat_template = template
    return tok


def sglang_chatml(conversations: list[list[dict]]) -> list[str]:
    out = subprocess.run(
        [sglang_python(), str(REPO / "tests/contract/chatml_probe.py")],
        input=json.dumps(conversations),
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    return json.loads(out.stdout)


@pytest.mark.unit
def test_the_template_comes_from_server_args_when_the_member_names_none() -> None:
    bitcpm = SERVED_AS_CHATML  # SGLang's built-in name, given as a server argument
    assert chat_template_text(bitcpm) == chat_template_text(
        Member(name="x", model="y", chat_template="chatml")
    )
    assert chat_template_text(Member(name="x", model="y")) is None  # the model's own, as before
    unknown = Member(name="x", model="y", server_args=["--chat-template", "some-engine-name"])
    assert chat_template_text(unknown) is None


@pytest.mark.integration
def test_training_renders_what_sglang_serves_for_the_chatml_member() -> None:
    bitcpm = SERVED_AS_CHATML  # SGLang's built-in name, given as a server argument
    tok = tokenizer_with(chat_template_text(bitcpm))
    solve = solve_messages("Tom has 2 apples and buys 3 more. How many apples?")
    no_system = [m for m in solve if m["role"] != "system"]
    answer = {"role": "assistant", "content": "2 + 3 = 5. \\boxed{5}"}
    conversations = [solve, no_system, [*solve, answer]]
    theirs = sglang_chatml(conversations)
    ours = [tok.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in conversations]
    assert ours == theirs
    # the trained text (prompt + solution turn, data.render_example) is what SGLang would send
    # for the next turn minus its generation prompt
    full = tok.apply_chat_template([*solve, answer], tokenize=False)
    assert full + "<|im_start|>assistant\n" == theirs[2]


@pytest.mark.parametrize("name", ["chatml"])
@pytest.mark.unit
def test_a_named_template_renders_with_transformers(name: str) -> None:
    tok = tokenizer_with(chat_template_text(Member(name="x", model="y", chat_template=name)))
    text = tok.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False)
    assert (
        text == "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
    )
