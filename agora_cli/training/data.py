"""Training data for Eq. 3: buffer rows -> per-member token sequences with the prompt masked.

Each member renders the buffer with its OWN tokenizer and chat template, as the same solve-style
user prompt it saw when it answered, so the adapter learns `p(solution | problem)` in the format it
is served in. Prompt tokens get label -100 (ignored by the loss); only solution tokens are learned.

Length-grouped batching sorts examples into batches of similar length and shuffles the batch order,
so little compute goes to padding; `padding_tokens` measures exactly how much.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agora_cli.protocol.prompts import Prompts
from agora_cli.store import Store
from agora_cli.training.round_store import buffer_texts

IGNORE_INDEX = -100  # the label value torch's cross-entropy skips

Messages = list[dict[str, str]]


@dataclass(frozen=True)
class Sample:
    """One validated (problem, solution) pair from the high-quality buffer, prompt pre-rendered."""

    buffer_id: int
    messages: Messages  # the solve-style prompt (system/user) the author saw, minus elite examples
    solution: str


@dataclass
class Example:
    """One tokenised sample: `labels` is `input_ids` with the prompt part set to IGNORE_INDEX."""

    buffer_id: int
    input_ids: list[int]
    labels: list[int]

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def n_target(self) -> int:
        return sum(1 for x in self.labels if x != IGNORE_INDEX)


# --------------------------------------------------------------------------- prompts


def solve_messages(problem: str, prompts_dir: str | Path | None = None) -> Messages:
    """The solve-style prompt for `problem`, with no elite examples (the one place to change it).

    The protocol's `solve` template, so training sees the prompt the members answered.
    """
    return Prompts(prompts_dir).render("solve", problem=problem, examples=[])


def load_samples(
    store: Store,
    buffer_ids: list[int],
    prompts_dir: str | Path | None = None,
    author: str | None = None,
) -> list[Sample]:
    """Buffer rows (by id, in the given order) joined with their problem and solution text.

    `author` keeps only that member's own rows (the isolated-evolution control).
    """
    if not buffer_ids:
        return []
    rows = buffer_texts(store, buffer_ids)
    by_id = {r.id: r for r in rows if author is None or r.member == author}
    return [
        Sample(i, solve_messages(by_id[i].problem, prompts_dir), by_id[i].solution)
        for i in buffer_ids
        if i in by_id
    ]


def samples_to_json(samples: list[Sample]) -> list[dict[str, Any]]:
    return [{"buffer_id": s.buffer_id, "messages": s.messages, "solution": s.solution} for s in samples]


def samples_from_json(items: list[dict[str, Any]]) -> list[Sample]:
    return [Sample(int(d["buffer_id"]), list(d["messages"]), str(d["solution"])) for d in items]


# --------------------------------------------------------------------------- tokenisation


def render_example(tokenizer: Any, sample: Sample, max_length: int) -> Example | None:
    """Tokenise one sample with the member's chat template; None if no solution token survives.

    The prompt is the template applied to the prompt messages with the generation prompt; the
    target is whatever the template appends for the assistant turn (the solution plus its
    end-of-turn marker, so the model learns to stop). Truncation keeps the start: prompt first.
    """
    prompt_text = tokenizer.apply_chat_template(sample.messages, tokenize=False, add_generation_prompt=True)
    full_text = tokenizer.apply_chat_template(
        [*sample.messages, {"role": "assistant", "content": sample.solution}], tokenize=False
    )
    if full_text.startswith(prompt_text):
        target_text = full_text[len(prompt_text) :]
    else:  # templates that rewrite earlier turns (e.g. thinking tags): solution + EOS
        target_text = sample.solution + (tokenizer.eos_token or "")
    prompt_ids = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
    target_ids = tokenizer(target_text, add_special_tokens=False)["input_ids"]
    input_ids = (prompt_ids + target_ids)[:max_length]
    labels = ([IGNORE_INDEX] * len(prompt_ids) + target_ids)[:max_length]
    if all(x == IGNORE_INDEX for x in labels):
        return None
    return Example(sample.buffer_id, input_ids, labels)


def render_examples(
    tokenizer: Any, samples: list[Sample], max_length: int
) -> tuple[list[Example], list[int]]:
    """(examples, buffer ids skipped because the prompt alone filled `max_length`)."""
    examples, skipped = [], []
    for s in samples:
        ex = render_example(tokenizer, s, max_length)
        if ex is None:
            skipped.append(s.buffer_id)
        else:
            examples.append(ex)
    return examples, skipped


# --------------------------------------------------------------------------- batching


def member_seed(run_seed: int, training_seed: int, member: str) -> int:
    """The seed of one member's training: its batch order, LoRA initialisation and dropout draws.

    Derived from the run's seed, `training.seed` and the member's name with SHA-256 (stable
    across processes and Python versions, unlike the salted `hash()`), so two members on one base
    model trained on the same buffer rows still take different draws and stay two models, while
    a rerun of the same run trains each member exactly as before.
    """
    digest = hashlib.sha256(f"{run_seed}:{training_seed}:{member}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % 2**31  # torch and random both take it


def make_batches(lengths: list[int], batch_size: int, *, group_by_length: bool, seed: int) -> list[list[int]]:
    """Index batches for one epoch.

    Grouped: shuffle, sort by length (a stable sort, so equal lengths stay shuffled), cut into
    batches of neighbours, then shuffle the batch order so the model does not see lengths rising.
    Ungrouped: a plain shuffle cut into batches.
    """
    rng = random.Random(seed)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    if group_by_length:
        order.sort(key=lambda i: lengths[i])
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    if group_by_length:
        rng.shuffle(batches)
    return batches


def padding_tokens(lengths: list[int], batches: list[list[int]]) -> int:
    """Pad positions the batches would contain (each batch is padded to its longest member)."""
    return sum(max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b) for b in batches)


def collate(examples: list[Example], pad_id: int) -> dict[str, Any]:
    """Right-pad a batch into tensors: input_ids, attention_mask, labels (-100 on padding)."""
    import torch

    width = max(len(e) for e in examples)
    ids, mask, labels = [], [], []
    for e in examples:
        pad = width - len(e)
        ids.append(e.input_ids + [pad_id] * pad)
        mask.append([1] * len(e) + [0] * pad)
        labels.append(e.labels + [IGNORE_INDEX] * pad)
    return {
        "input_ids": torch.tensor(ids, dtype=torch.long),
        "attention_mask": torch.tensor(mask, dtype=torch.long),
        "labels": torch.tensor(labels, dtype=torch.long),
    }


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())
