"""Scoring answers to benchmark items: ask, grade, the ensemble's `@majority` answer, pass@1.

Shared by `agora eval` (`evaluate.py`) and the in-run external anchor (`anchor.py`); it sits below
both so neither imports the other. `@majority` is the ensemble's plurality answer
(`protocol.majority.plurality`): the most common extracted final answer across the members, ties
broken by member order, graded like any reply. Members' replies and the `@majority` answer go
through the same rule (`protocol.answers.grade`, in the grader's workers), and the plurality
groups answers with its equivalence, so the majority is right exactly when its members are.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from agora_cli.client import ClientPool
from agora_cli.config import Sampling
from agora_cli.datasets import CHOICE, Item, ItemResult
from agora_cli.evaluation.grading import Grader
from agora_cli.evaluation.user_data import chosen_letter
from agora_cli.protocol.answers import extract_answer
from agora_cli.protocol.common import strip_prompt_echo
from agora_cli.protocol.majority import MAJORITY, plurality
from agora_cli.protocol.prompts import Prompts

__all__ = ["MAJORITY", "ItemResult", "accuracy", "answer_items", "greedy_sampling", "majority_rows"]
_GRADE_BATCH = 16


def greedy_sampling(sampling: Sampling) -> Sampling:
    """Greedy decoding with the same length budget."""
    return Sampling(temperature=0.0, top_p=1.0, max_tokens=sampling.max_tokens)


# --------------------------------------------------------------------------- asking + grading


async def answer_items(
    pool: ClientPool,
    prompts: Prompts,
    sampling: Sampling,
    grader: Grader,
    jobs: list[tuple[str, Item]],
    *,
    model_of: Callable[[str], str],
    version_of: Callable[[str], int] = lambda m: 0,
    on_result: Callable[[ItemResult], None] | None = None,
    examples: list[dict[str, str | None]] | None = None,
) -> list[ItemResult]:
    """Ask each (member, item) once and grade the replies; `on_result` sees each graded result.

    `examples` are in-context examples for the evaluate prompt (`agora eval --with-elite`: the
    run's elite history H_t); none by default.

    A request that fails after the pool's retries gives a result with `error` set and
    `correct=False`. A multiple-choice item (GPQA) is graded by the letter the reply chooses,
    which is its `answer`; every other item by the one grader. Grading runs in a thread (the
    grader's deadline needs no signals) while the next replies arrive, so the models never wait
    for the grader.
    """
    # (result, the reply with any echoed prompt removed: what the grader grades, or None when the
    # result is graded already), None = no more.
    queue: asyncio.Queue[tuple[ItemResult, str | None] | None] = asyncio.Queue()
    results: list[ItemResult] = []
    loop = asyncio.get_running_loop()

    async def ask(member: str, item: Item) -> None:
        messages = prompts.render("evaluate", problem=item.problem, examples=examples or [])
        model = model_of(member)
        try:
            res = await pool.chat(member, messages, sampling, role="evaluate")
        except Exception as e:  # noqa: BLE001 - recorded per item; the caller decides
            await queue.put(
                (
                    ItemResult(
                        member,
                        item.benchmark,
                        item.id,
                        model,
                        "",
                        None,
                        item.answer,
                        False,
                        version_of(member),
                        error=f"{type(e).__name__}: {e}",
                    ),
                    "",
                )
            )
            return
        # Base models repeat the prompt first; grade only what follows (same rule as the loop).
        text = strip_prompt_echo(res.text, messages)
        choice = item.kind == CHOICE
        result = ItemResult(
            member,
            item.benchmark,
            item.id,
            model,
            res.text,
            chosen_letter(text) if choice else extract_answer(text),
            item.answer,
            False,
            version_of(member),
            res.completion_tokens,
            round(res.latency_s, 3),
        )
        if choice:
            result.correct = result.answer == item.answer
        await queue.put((result, None if choice else text))

    async def grade_loop() -> None:
        finished = False
        while not finished:
            batch = [await queue.get()]
            while not queue.empty() and len(batch) < _GRADE_BATCH:
                batch.append(queue.get_nowait())
            if None in batch:
                finished = True
            got = [b for b in batch if b is not None]
            todo = [(r, text) for r, text in got if r.error is None and text is not None]
            pairs = [(text, r.gold) for r, text in todo]
            verdicts = await loop.run_in_executor(None, grader.grade_many, pairs) if pairs else []
            for (r, _), ok in zip(todo, verdicts, strict=True):
                r.correct = ok
            for r, _ in got:
                results.append(r)
                if on_result is not None:
                    on_result(r)

    grading = asyncio.create_task(grade_loop())
    try:
        await asyncio.gather(*(ask(m, it) for m, it in jobs))
    finally:
        await queue.put(None)
        await grading
    return results


def majority_rows(
    rows: list[ItemResult], members: list[str], items: list[Item], grader: Grader
) -> list[ItemResult]:
    """`@majority` results for every item that each member in `members` has answered."""
    by_key = {(r.member, r.benchmark, r.item_id): r for r in rows}
    out: list[ItemResult] = []
    for it in items:
        per_member = [by_key.get((m, it.benchmark, it.id)) for m in members]
        if any(r is None or r.error for r in per_member):
            continue
        answer = plurality([r.answer for r in per_member])  # type: ignore[union-attr]
        model = "+".join(r.model for r in per_member)  # type: ignore[union-attr]
        out.append(
            ItemResult(
                MAJORITY,
                it.benchmark,
                it.id,
                model,
                answer or "",
                answer,
                it.answer,
                it.kind == CHOICE and answer == it.answer,
            )
        )
    # Choice items' answers are letters, graded above; the one grader grades the rest.
    kinds = {(it.benchmark, it.id): it.kind for it in items}
    math = [r for r in out if kinds[(r.benchmark, r.item_id)] != CHOICE]
    graded = grader.grade_many([(r.answer or "", r.gold) for r in math])
    for r, ok in zip(math, graded, strict=True):
        r.correct = ok and r.answer is not None
    return out


def accuracy(rows: list[ItemResult]) -> dict[str, dict[str, tuple[float, int]]]:
    """{benchmark: {member: (pass@1, n)}} over `rows` (errors excluded)."""
    tally: dict[str, dict[str, list[int]]] = {}
    for r in rows:
        if r.error:
            continue
        t = tally.setdefault(r.benchmark, {}).setdefault(r.member, [0, 0])
        t[0] += int(r.correct)
        t[1] += 1
    return {b: {m: (c / n if n else 0.0, n) for m, (c, n) in per.items()} for b, per in tally.items()}
