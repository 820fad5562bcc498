"""Q-Group: challenge generation (docs/protocol.md, step 1).

Generators see the current difficulty d_t (Eq. 1) and a few seed problems and must reply with
exactly one problem, preferably on a `Problem:` line (see prompts/generate.jinja). The parser is
lenient about form and strict about content:

- the problem is the text after the first `Problem:`/`Question:` label (markdown allowed), else the
  inside of a fenced block, else the reply's first paragraph; it ends at a blank line or at an
  answer/solution section (`Answer:`, `Solution:`, `\\boxed`, `####`), which is cut off;
- dropped as 'empty' when nothing is left, and as 'malformed' when it is under 4 words / 20
  characters or over 1500, has no quantity (a digit or a number word), asks nothing (no '?' and no
  how/what/find/compute/... cue), echoes the prompt ('Difficulty: ...'), or talks about its own
  answer (`\\boxed`, 'the answer', 'answer:', 'solution:');
- dropped as 'malformed' when it carries instructions for the judges (`INJECTION`): words
  addressed to checkers/verifiers/graders/judges/reviewers/evaluators/voters or to the
  assistant/system, an order to reply VALID/INVALID/correct, "ignore/disregard previous
  instructions", a verdict (`VERDICT:`, the capitalised words VALID/INVALID), a chat-template
  marker, a role label or a quote delimiter. The problem is model output that verifiers and voters
  read (quoted, but read), so such a problem is rejected whole rather than cleaned: parse_problem
  has already joined the problem into one paragraph, an instruction can sit mid-sentence where no
  line can be cut out, cutting words out of a problem can change what it asks, and a generator
  that writes to the judges has not written a problem. Detection reads the text with invisible
  characters removed and compatibility forms folded (protocol/replies.py, `visible`), so
  zero-width or full-width spellings do not slip through; the cost is the rare honest problem
  that happens to use those words (it is asked again, like any malformed one);
- dropped as 'duplicate' when its normalised text equals (or nearly equals, word-set Jaccard >= 0.9)
  an earlier problem of the batch, a seed it was shown, or any text the caller passes to `dedupe`.
"""

from __future__ import annotations

import asyncio
import random
import re
from collections.abc import Iterable

from agora_cli.config import Config
from agora_cli.datasets import load_seed_pool as pool_items
from agora_cli.datasets import normalize_text
from agora_cli.protocol.common import REQUEST_ERRORS, chat_role
from agora_cli.protocol.replies import visible
from agora_cli.protocol.types import Ctx, GeneratedProblem

MIN_WORDS, MIN_CHARS, MAX_CHARS = 4, 20, 1500
NEAR_DUPLICATE_JACCARD = 0.9

_LABEL = re.compile(
    r"(?:^|[\s*#>_`(\[])(?:new\s+)?(?:math\s+)?(?:word\s+)?(?:problem|question)(?:[ \t]*\d+)?"
    r"[ \t*_`]*:",
    re.IGNORECASE,
)
_FENCE = re.compile(r"```[a-zA-Z]*\n?(.*?)```", re.DOTALL)
_STOP = re.compile(
    r"\n\s*\n|\\boxed|####"
    r"|(?:^|\n)[ \t*#>_`]*(?:answer|solution|final answer|step\s*1|problem[ \t]*\d*[ \t*_`]*:)",
    re.IGNORECASE,
)
_LEAK = re.compile(r"\\boxed|\bthe\s+answer\b|answer\s*[:=]|\bsolution\s*:", re.IGNORECASE)
_QUANTITY = re.compile(
    r"\d|\b(?:one|two|three|four|five|six|seven|eight|nine|ten|eleven|twelve|twenty|hundred|"
    r"thousand|half|twice|double|triple|dozen|third|quarter)\b",
    re.IGNORECASE,
)
_ASKS = re.compile(
    r"\?|\b(?:how|what|which|find|compute|calculate|determine|evaluate|simplify|solve|show|prove)\b",
    re.IGNORECASE,
)
_ECHO = re.compile(r"^(?:difficulty|examples? of the style|now write)\b", re.IGNORECASE)
# Who the judges are. The short list is for the forms a word problem might use innocently
# ("3 judges must ...", "voters: 40%"); the long one only where a problem speaks to someone.
_JUDGE = r"(?:checker|verifier|grader|evaluator|assessor|assistant|ai|llm|language\s+model)s?"
_ADDRESSEE = (
    r"(?:checker|verifier|grader|judge|reviewer|evaluator|voter|assessor|assistant|ai|llm|model|system)s?"
)
# Instructions for the judges hidden in a problem (see the module docstring).
INJECTION = re.compile(
    rf"\b(?:note|message|instructions?|attention|reminder)\s+(?:to|for)\s+(?:the\s+|all\s+|any\s+)?{_ADDRESSEE}\b"
    rf"|\b(?:dear|attention|hey)\s*,?\s+{_ADDRESSEE}\b"
    rf"|(?:^|[.!?;:(\[]\s*){_JUDGE}\s*[:,]"
    rf"|\b{_JUDGE}\s+(?:should|must|need\s+to|are\s+to|is\s+to|shall|have\s+to)\b"
    r"|\b(?:reply|respond|output|say|print|write|return|answer|mark|rate|grade|judge)\s+"
    r"(?:it\s+|this\s+|the\s+\w+\s+)?(?:with\s+|as\s+|only\s+|just\s+|simply\s+|exactly\s+|[:\"'“‘`*]\s*)*"
    r"(?:valid|invalid|correct|incorrect|verdict)\b"
    r"|\b(?:ignore|disregard|forget|override)\s+(?:all\s+|any\s+|the\s+|your\s+)*(?:previous|prior|above|"
    r"earlier|preceding|former|other|system)?\s*(?:instructions?|rules|prompts?|directions|guidelines)\b"
    r"|\bverdict\s*[:=\-]"
    r"|(?-i:\b(?:VALID|INVALID)\b)"
    r"|<\|?(?:start_of_turn|end_of_turn|im_start|im_end|user|assistant|system)\|?>"
    r"|\b(?:user|human|assistant|system|model)\s*:"
    r"|\b(?:BEGIN|END)\s+QUOTE-",
    re.IGNORECASE,
)


def parse_problem(raw: str) -> tuple[str | None, str | None]:
    """(problem text, None) or (None, drop reason) for one generator reply. Never raises."""
    # Problems over MAX_CHARS are dropped anyway; parsing only a prefix keeps regexes linear-ish.
    text = (raw or "")[: 4 * MAX_CHARS].replace("\r\n", "\n").strip()
    if not text:
        return None, "empty"
    label = _LABEL.search(text)
    fence = _FENCE.search(text)
    if label:
        body = text[label.end() :]
    elif fence:
        body = fence.group(1)
    else:
        body = text
    body = body.lstrip(" \t*_`:\n")
    stop = _STOP.search(body)
    if stop:
        body = body[: stop.start()]
    body = re.sub(r"\s+", " ", body.strip(' \t\n*_`"')).strip()
    if not body:
        return None, "empty"
    if len(body) < MIN_CHARS or len(body.split()) < MIN_WORDS or len(body) > MAX_CHARS:
        return None, "malformed"
    if _LEAK.search(body) or _ECHO.match(body) or INJECTION.search(visible(body)):
        return None, "malformed"
    if not _QUANTITY.search(body) or not _ASKS.search(body):
        return None, "malformed"
    return body, None


def normalize_problem(text: str) -> str:
    """Lowercase alphanumeric words only: what 'the same problem' means for deduplication."""
    return normalize_text(text)


def _near(a: str, b: str) -> bool:
    if a == b:
        return True
    wa, wb = set(a.split()), set(b.split())
    if not wa or not wb:
        return False
    return len(wa & wb) / len(wa | wb) >= NEAR_DUPLICATE_JACCARD


def dedupe(problems: list[GeneratedProblem], existing_texts: Iterable[str]) -> list[GeneratedProblem]:
    """Mark near-duplicates `dropped='duplicate'` (in place, and returned), against the existing
    texts and against earlier kept problems of the same list. Already-dropped items are skipped."""
    seen = [n for n in (normalize_problem(t) for t in existing_texts) if n]
    for p in problems:
        if p.dropped or p.text is None:
            continue
        norm = normalize_problem(p.text)
        if any(_near(norm, s) for s in seen):
            p.dropped = "duplicate"
            p.text = None
        else:
            seen.append(norm)
    return problems


def choose_generators(members: list[str], cfg: Config, rng: random.Random) -> list[str]:
    """The Q-Group: a random subset of `generators_per_step` members when `random_qgen` is on
    (paper: random generator selection), else every member."""
    if not cfg.ablations.random_qgen:
        return list(members)
    k = min(cfg.protocol.generators_per_step, len(members))
    return rng.sample(list(members), k)


def load_seed_pool(name: str) -> list[dict]:
    """Rows (id, problem, answer) of the seed pool `name`: its training file minus the held-out
    calibration slice (`agora_cli.datasets`), so generators never see a calibration item."""
    return [{"id": it.id, "problem": it.problem, "answer": it.answer} for it in pool_items(name)]


def sample_seeds(seed_pool: list[dict], k: int, rng: random.Random) -> list[dict]:
    """k distinct seed rows (fewer when the pool is smaller)."""
    return rng.sample(seed_pool, min(k, len(seed_pool))) if k > 0 else []


async def _one(ctx: Ctx, member: str, difficulty: float, seeds: list[dict]) -> GeneratedProblem:
    shown = [{"id": s.get("id"), "problem": s["problem"], "answer": s.get("answer")} for s in seeds]
    try:
        result, reply = await chat_role(ctx, member, "generate", difficulty=difficulty, seeds=shown)
    except REQUEST_ERRORS:
        return GeneratedProblem(text=None, raw="", author=member, dropped="request_failed")
    # A reply that is nothing but a copy of the prompt is judged as written: a copied seed is then
    # a duplicate (by dedupe below), copied instructions are malformed.
    text, reason = parse_problem(reply if reply.strip() else result.text)
    return GeneratedProblem(text=text, raw=result.text, author=member, dropped=reason)


async def generate_problems(
    ctx: Ctx, member: str, difficulty: float, seeds: list[dict], n: int
) -> list[GeneratedProblem]:
    """n concurrent generation requests to `member`; one GeneratedProblem per request, in order.

    Copies of a shown seed and repeats within the batch are marked duplicate here; pass the run's
    earlier problems through `dedupe` to drop repeats across generators and steps.
    """
    problems = await asyncio.gather(*(_one(ctx, member, difficulty, seeds) for _ in range(n)))
    return dedupe(list(problems), (s["problem"] for s in seeds))
