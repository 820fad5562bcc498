"""Cross-field checks: problems in a schema-valid config that no single field can see.

Each check returns (YAML path, message) pairs; `loading.config_from_dict` reports them all at once.
"""

from __future__ import annotations

from agora_cli.config.gpu import memory_plan
from agora_cli.config.schema import Config, Member, OpenAIBackend, SGLangBackend, VLLMBackend, _template_path
from agora_cli.datasets import CALIBRATION_SPLITS, SEED_POOL_FILES
from agora_cli.lora_names import SGLANG_LORA_MODULES, sglang_names, unsupported


def cross_checks(cfg: Config) -> list[tuple[str, str]]:
    """Problems no single field can see."""
    problems: list[tuple[str, str]] = []
    seen: dict[str, int] = {}
    for i, m in enumerate(cfg.members):
        if m.name in seen:
            problems.append((f"members[{i}].name", f"duplicate member name {m.name!r}"))
        seen[m.name] = i
        if m.backend not in cfg.backends:
            known = ", ".join(sorted(cfg.backends)) or "none"
            problems.append((f"members[{i}].backend", f"unknown backend {m.backend!r} (defined: {known})"))
            continue
        b = cfg.backends[m.backend]
        if isinstance(b, OpenAIBackend) and cfg.ablations.lora:
            problems.append(
                (
                    f"members[{i}].backend",
                    f"member {m.name!r} uses OpenAI-compatible backend {m.backend!r}, which cannot "
                    "load LoRA adapters; set ablations.lora: false or serve it with "
                    "transformers/sglang/vllm",
                )
            )
        # A backend whose settings have `max_lora_rank` sizes its adapter pool at start (sglang,
        # vllm): an adapter of higher rank would be refused when it is loaded, rounds later.
        rank_cap = getattr(b, "max_lora_rank", None)
        if rank_cap is not None and cfg.ablations.lora and cfg.training.r > rank_cap:
            problems.append(
                (
                    "training.r",
                    f"LoRA rank {cfg.training.r} exceeds backends.{m.backend}.max_lora_rank {rank_cap}",
                )
            )
        if isinstance(b, SGLangBackend):
            problems += _sglang_member_checks(cfg, i, m, b)
        if (
            m.chat_template
            and "\n" not in m.chat_template
            and m.chat_template.endswith((".jinja", ".j2", ".txt"))
        ):
            if not _template_path(m.chat_template).exists():
                problems.append((f"members[{i}].chat_template", f"file not found: {m.chat_template}"))
    problems += _sglang_backend_checks(cfg)
    problems += _router_checks(cfg)
    p = cfg.protocol
    if p.generators_per_step > len(cfg.members):
        problems.append(
            (
                "protocol.generators_per_step",
                f"{p.generators_per_step} generators but only {len(cfg.members)} members",
            )
        )
    d = p.difficulty
    if not d.d_min <= d.d0 <= d.d_max:
        problems.append(("protocol.difficulty.d0", f"d0={d.d0} outside [{d.d_min}, {d.d_max}]"))
    ev = cfg.evaluation
    if ev.calibration not in CALIBRATION_SPLITS:
        problems.append(
            (
                "evaluation.calibration",
                f"{ev.calibration!r} ships no held-out split (all its items are evaluation items); "
                f"use one of: {', '.join(CALIBRATION_SPLITS)}",
            )
        )
    elif ev.calibration_size > CALIBRATION_SPLITS[ev.calibration][1]:
        problems.append(
            (
                "evaluation.calibration_size",
                f"{ev.calibration_size} items asked, but the {ev.calibration} calibration split has "
                f"{CALIBRATION_SPLITS[ev.calibration][1]}",
            )
        )
    # The prompt set: every template present (own or default set's), parsing and rendering.
    from agora_cli.protocol.prompts import Prompts

    problems += [("prompts_dir", msg) for msg in Prompts(cfg.prompts_dir).problems()]
    problems += _cluster_checks(cfg)
    if p.seed_pool not in SEED_POOL_FILES:
        problems.append(
            (
                "protocol.seed_pool",
                f"unknown seed pool {p.seed_pool!r}; use one of: {', '.join(SEED_POOL_FILES)} "
                "(evaluation splits are never seed pools)",
            )
        )
    return problems


def _sglang_member_checks(cfg: Config, i: int, m: Member, b: SGLangBackend) -> list[tuple[str, str]]:
    """One member on `sglang` backend `b`: a template its server can share, and trainer target
    modules the server's LoRA pool holds (SGLang refuses adapters with any other module)."""
    problems = []
    for j, other in enumerate(cfg.members[:i]):
        if other.backend == m.backend and other.model == m.model and (other.chat_template != m.chat_template):
            problems.append(
                (
                    f"members[{i}].chat_template",
                    (
                        f"members {other.name!r} and {m.name!r} share base model {m.model!r} (one SGLang "
                        f"server, one --chat-template) but set different chat templates; give both "
                        f"members[{j}]'s"
                    ),
                )
            )
    if cfg.ablations.lora and isinstance(cfg.training.target_modules, list):
        bad = unsupported(cfg.training.target_modules, b.lora_target_modules)
        if bad and i == next(k for k, x in enumerate(cfg.members) if x.backend == m.backend):
            problems.append(
                (
                    "training.target_modules",
                    (
                        f"SGLang backend {m.backend!r} serves adapters on "
                        f"{b.lora_target_modules} (lora_target_modules); trained modules {bad} would be "
                        f"refused: add them there or train only SGLang-supported modules "
                        f"({', '.join(sorted(SGLANG_LORA_MODULES))})"
                    ),
                )
            )
    return problems


def _sglang_backend_checks(cfg: Config) -> list[tuple[str, str]]:
    """Launch settings of each used `sglang` backend."""
    problems = []
    used = {m.backend for m in cfg.members}
    for name, b in cfg.backends.items():
        if not isinstance(b, (SGLangBackend, VLLMBackend)) or name not in used:
            continue
        at = f"backends.{name}"
        if isinstance(b, SGLangBackend) and b.dp_size > 1 and cfg.ablations.lora:
            problems.append(
                (
                    f"{at}.dp_size",
                    (
                        f"dp_size {b.dp_size}: SGLang cannot load adapters at run time across data-parallel "
                        "replicas; use dp_size: 1 (one server per base model) or ablations.lora: false"
                    ),
                )
            )
        names = [x for x in getattr(b, "lora_target_modules", []) if x != "all"]
        bad = sorted(sglang_names(names) - SGLANG_LORA_MODULES)
        if bad:
            problems.append(
                (
                    f"{at}.lora_target_modules",
                    (
                        f"SGLang's LoRA pool has no module {bad}; use names from "
                        f"{', '.join(sorted(SGLANG_LORA_MODULES))} or 'all'"
                    ),
                )
            )
        members = [m for m in cfg.members if m.backend == name]
        keys = {m.name for m in members} | {m.model for m in members}
        for key in b.memory_shares:
            if key not in keys:
                problems.append(
                    (f"{at}.memory_shares", (f"{key!r} is neither a member nor a base model of this backend"))
                )
        if b.launch and (isinstance(b, SGLangBackend) or b.gpu_memory_for_servers is not None):
            bases: dict[str, list[Member]] = {}
            for m in members:
                bases.setdefault(m.model, []).append(m)
            for device, shares in memory_plan(b, dict(sorted(bases.items())), cfg).items():
                total = sum(s for _, s, _ in shares)
                if total >= 1:
                    problems.append(
                        (
                            f"{at}.memory_shares",
                            (
                                f"servers on device {device or 'default'} want {total:.2f} of its memory; "
                                "keep the sum below 1 (the trainer needs the rest)"
                            ),
                        )
                    )
    return problems


def _router_checks(cfg: Config) -> list[tuple[str, str]]:
    """A router fronts several replicas of one base model this backend serves: a listed one with
    `launch: false`, else one the cluster starts with `replicas` of 2 or more."""
    problems = []
    for name, b in cfg.backends.items():
        if not isinstance(b, SGLangBackend | VLLMBackend):
            continue
        models = {m.model for m in cfg.members if m.backend == name}
        placed = cfg.cluster.backends.get(name) if cfg.cluster is not None else None
        for base in b.router_urls:
            path = f"backends.{name}.router_urls.{base}"
            if not b.launch:
                if len(b.urls.get(base, [])) < 2:
                    problems.append(
                        (
                            path,
                            f"a router needs several replicas of {base!r}; list them under "
                            f"backends.{name}.urls",
                        )
                    )
            elif base not in models:
                problems.append((path, f"{base!r} is not the model of any member of backend {name!r}"))
            elif placed is None or placed.replicas < 2:
                problems.append(
                    (
                        path,
                        f"backend {name!r} starts one server per base model; a router needs several "
                        f"(cluster.backends.{name}.replicas: 2 or more)",
                    )
                )
    return problems


def _cluster_checks(cfg: Config) -> list[tuple[str, str]]:
    """Ray replicas are launched servers of a multi-LoRA engine: one per named backend's base model."""
    if cfg.cluster is None:
        return []
    problems = []
    for name in cfg.cluster.backends:
        path = f"cluster.backends.{name}"
        b = cfg.backends.get(name)
        if b is None:
            known = ", ".join(sorted(cfg.backends)) or "none"
            problems.append((path, f"unknown backend {name!r} (defined: {known})"))
        elif not isinstance(b, SGLangBackend | VLLMBackend):
            problems.append((path, f"backend {name!r} is {b.kind}; Ray replicas are sglang or vllm servers"))
        elif not b.launch:
            problems.append(
                (
                    path,
                    f"backend {name!r} has launch: false (its servers are under urls); set launch: true",
                )
            )
    t = cfg.cluster.training
    n = cfg.training.num_gpus
    if t is not None and t.num_gpus is not None and n > 1 and t.num_gpus != n:
        # `accelerate launch` starts one process per GPU of training.num_gpus: the task must hold them.
        problems.append(
            (
                "cluster.training.num_gpus",
                f"{t.num_gpus:g} GPUs per training task, but training.num_gpus is {n} (accelerate runs "
                f"one process per GPU); set both to {n}, or leave cluster.training.num_gpus unset",
            )
        )
    return problems
