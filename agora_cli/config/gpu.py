"""GPU memory planning: which device each server uses, its share of it, and whether it fits.

One plan, two engine flags. Each GPU-served base model gets a share s_k of its device's memory
(weights + KV cache); what the servers leave is the trainer's. Shares set in `memory_shares`
are used as given; the others split what is left of `gpu_memory_for_servers` in proportion to
need (weights + the KV cache its members' concurrency fills), not equally.

- SGLang sizes its static memory (weights + KV) as `--mem-fraction-static` of the memory *free
  when it starts* and charges the loaded weights against it (`srt/mem_cache/
  kv_cache_configurator.py`, `_profile_available_bytes`: KV = free after load - free before x
  (1 - f), "Loaded weights leave no GPU memory for the KV cache" when that is <= 0). Servers
  start one after another, so server k gets f_k = s_k / (1 - sum_{j<k} s_j).
- vLLM asks for `--gpu-memory-utilization` x the device's *total* memory and refuses to start
  when less than that is free (`v1/worker/utils.py`, `request_memory`), so server k gets u_k = s_k.

`gpu_plan` checks a plan against a GPU size: each server's weights within its share, the KV room
left (in tokens) enough for its members' concurrency, and the trainer's peak (computed by the
caller, training/memory.py) within what the servers leave on the trainer's device. Sizes are GiB.
"""

from __future__ import annotations

from dataclasses import dataclass

from agora_cli.config.schema import Config, Member, SGLangBackend, VLLMBackend
from agora_cli.model_facts import GiB, facts_for, model_size

# Tokens of one request's prompt, on top of its max_tokens: a solve prompt with the elite
# examples, a verify prompt with the solution it judges (agora's estimate, not a bound).
PROMPT_TOKENS = 1024
# vLLM's --max-model-len when unset on a GPU-planned backend: the model's context length would
# ask for more KV cache than a share of a GPU holds (vLLM refuses to start then).
VLLM_MAX_MODEL_LEN = 8192

# SGLang reserves this much of a multimodal model's KV budget for its embedding cache
# (`SGLANG_VLM_CACHE_SIZE_MB`, 100 by default: `mm_runtime_reservation_gb`).
SGLANG_VLM_RESERVE = 100 * 2**20

GpuBackend = SGLangBackend | VLLMBackend


def request_tokens(cfg: Config | None, members: list[Member]) -> int:
    """Prompt allowance + the longest completion any of `members`' requests may ask for."""
    if cfg is None:
        from agora_cli.config.schema import ProtocolSampling

        roles = ProtocolSampling()
    else:
        roles = cfg.protocol.sampling
    longest = max(getattr(roles, r).max_tokens for r in type(roles).model_fields)
    if cfg is not None:
        longest = max(longest, cfg.evaluation.sampling.max_tokens)
    for m in members:
        if m.sampling is not None:
            longest = max(longest, m.sampling.max_tokens)
    return PROMPT_TOKENS + longest


def tokens_needed(cfg: Config | None, members: list[Member]) -> int:
    """KV-cache tokens a server must hold so all its members' concurrent requests run at once."""
    per_request = request_tokens(cfg, members)
    return sum(m.max_concurrency for m in members) * per_request


def gpu_device(b: GpuBackend, base: str, members: list[Member]) -> str | None:
    """The CUDA_VISIBLE_DEVICES of one base model's server (None: the default device)."""
    devices = getattr(b, "cuda_visible_devices", {})
    for key in [base, *(m.name for m in members), *(m.model for m in members)]:
        if key in devices:
            return devices[key]
    return None


sglang_device = gpu_device


def need_bytes(cfg: Config | None, base: str, members: list[Member]) -> int:
    """Weights + the KV cache of `tokens_needed`: what a server's share should hold."""
    size = model_size(base)
    return size.weights + size.kv_per_token * tokens_needed(cfg, members)


def memory_plan(
    b: GpuBackend, bases: dict[str, list[Member]], cfg: Config | None = None
) -> dict[str | None, list[tuple[str, float, float]]]:
    """device -> [(base, share s_k, engine flag)] in start order (`bases`' order); the flag is
    SGLang's --mem-fraction-static or vLLM's --gpu-memory-utilization (module docstring)."""
    pool = b.gpu_memory_for_servers or 0.0
    groups: dict[str | None, list[tuple[str, list[Member]]]] = {}
    for base, members in bases.items():
        groups.setdefault(gpu_device(b, base, members), []).append((base, members))
    plan: dict[str | None, list[tuple[str, float, float]]] = {}
    for device, servers in groups.items():
        given = {}
        for base, members in servers:
            for key in [base, *(m.name for m in members), *(m.model for m in members)]:
                if key in b.memory_shares:
                    given[base] = b.memory_shares[key]
                    break
        rest = {base: need_bytes(cfg, base, ms) for base, ms in servers if base not in given}
        left = max(pool - sum(given.values()), 0.0)
        total_need = sum(rest.values()) or 1
        used, rows = 0.0, []
        for base, _ in servers:
            share = given.get(base, round(left * rest.get(base, 0) / total_need, 4))
            if isinstance(b, VLLMBackend):
                flag = round(share, 4)
            else:
                flag = round(share / (1 - used), 3) if used < 1 else 0.0
            rows.append((base, share, flag))
            used += share
        plan[device] = rows
    return plan


def sglang_memory_plan(
    b: SGLangBackend, bases: dict[str, list[Member]], cfg: Config | None = None
) -> dict[str | None, list[tuple[str, float, float]]]:
    """device -> [(base, share s_k, --mem-fraction-static f_k)] in start order."""
    return memory_plan(b, bases, cfg)


def planned_backends(cfg: Config) -> dict[str, tuple[GpuBackend, dict[str, list[Member]]]]:
    """Each launched GPU backend: its settings and its servers (base -> members, start order).
    A vLLM backend is GPU-planned when it sets gpu_memory_for_servers (unset: the CPU build)."""
    out = {}
    for name, b in cfg.backends.items():
        if not isinstance(b, (SGLangBackend, VLLMBackend)) or not b.launch:
            continue
        if isinstance(b, VLLMBackend) and b.gpu_memory_for_servers is None:
            continue
        bases: dict[str, list[Member]] = {}
        for m in cfg.members:
            if m.backend == name:
                bases.setdefault(m.model, []).append(m)
        if bases:
            out[name] = (b, dict(sorted(bases.items())))
    return out


@dataclass(frozen=True)
class ServerFit:
    """One server on a GPU of `gpu_gib`: what its share holds."""

    backend: str
    base: str
    device: str
    share: float
    flag: float
    weights_gib: float
    kv_room_tokens: int
    tokens_needed: int
    min_tokens: int  # one request must fit (vLLM: --max-model-len)
    sized: bool  # False: the model's dims are unknown offline (a 1B stand-in sized it)

    def line(self) -> str:
        """A one-line summary for `agora validate`."""
        return (
            f"{self.backend}/{self.base} on GPU {self.device}: share {self.share:.3f} "
            f"(flag {self.flag}), weights {self.weights_gib:.1f} GiB, KV room "
            f"{self.kv_room_tokens} tokens for {self.tokens_needed} needed"
        )


def _device_label(device: str | None) -> str:
    return device if device is not None else "0"


def gpu_plan(
    cfg: Config,
    gpu_gib: float,
    trainer_peak_gib: tuple[float, float] | None = None,
) -> tuple[list[ServerFit], list[tuple[str, str]], list[str]]:
    """(servers, problems, notes) of `cfg` on GPUs of `gpu_gib` each.

    `trainer_peak_gib` is the trainer's largest (plain, checkpointed) peak over the members
    (training/memory.py); it runs on GPU 0 (the default device). A problem is (YAML path,
    message naming the server, the numbers and the fix)."""
    fits: list[ServerFit] = []
    problems: list[tuple[str, str]] = []
    notes: list[str] = []
    used: dict[str, float] = {}
    for name, (b, bases) in planned_backends(cfg).items():
        at = f"backends.{name}"
        for device, rows in memory_plan(b, bases, cfg).items():
            label = _device_label(device)
            for base, share, flag in rows:
                members = bases[base]
                size = model_size(base)
                room = share * gpu_gib * GiB - size.weights
                if isinstance(b, SGLangBackend) and facts_for(base).extra_params:  # multimodal
                    room -= SGLANG_VLM_RESERVE
                kv_tokens = max(int(room // size.kv_per_token), 0)
                need = tokens_needed(cfg, members)
                one = request_tokens(cfg, members)
                if isinstance(b, VLLMBackend):
                    one = vllm_max_model_len(b, base)
                fit = ServerFit(
                    name, base, label, share, flag, size.weights / GiB, kv_tokens, need, one, size.known
                )
                fits.append(fit)
                used[label] = used.get(label, 0.0) + share
                if not size.known:
                    notes.append(
                        f"{name}/{base}: no config.json offline and no dims in agora_cli/model_facts.py; "
                        "sized as a 1B model (download it for an exact plan)"
                    )
                if room <= 0:
                    problems.append(
                        (
                            f"{at}.memory_shares",
                            f"server {base} on a {gpu_gib:g} GiB GPU {label}: weights "
                            f"{size.weights / GiB:.1f} GiB do not fit its share {share:.3f} "
                            f"({share * gpu_gib:.1f} GiB); give it a larger share (memory_shares), "
                            "its own GPU (cuda_visible_devices) or a larger GPU",
                        )
                    )
                elif kv_tokens < max(need, one):
                    want = max(need, one)
                    gib = (size.weights + want * size.kv_per_token) / GiB
                    problems.append(
                        (
                            f"{at}.memory_shares",
                            f"server {base} on a {gpu_gib:g} GiB GPU {label}: its share {share:.3f} "
                            f"({share * gpu_gib:.1f} GiB) leaves KV cache for {kv_tokens} tokens after "
                            f"{size.weights / GiB:.1f} GiB of weights, but its members need {want} "
                            f"(max_concurrency x (prompt + max_tokens)); it needs about {gib:.1f} GiB: "
                            "lower max_concurrency, raise its share, give it its own GPU or use a "
                            "larger GPU",
                        )
                    )
    for label, total in used.items():
        if total >= 1:
            problems.append(
                (
                    "backends",
                    f"servers on GPU {label} want {total:.2f} of its memory; keep the sum below 1 "
                    "(the trainer needs the rest)",
                )
            )
    if trainer_peak_gib is not None and cfg.ablations.lora:
        plain, checkpointed = trainer_peak_gib
        room = (1 - used.get("0", 0.0)) * gpu_gib
        setting = cfg.training.gradient_checkpointing
        peak = plain if setting is False or (setting == "auto" and plain <= room) else checkpointed
        if peak > room:
            problems.append(
                (
                    "training",
                    f"the trainer on a {gpu_gib:g} GiB GPU 0 needs about {peak:.1f} GiB at its peak "
                    f"but the servers leave {room:.1f} GiB; lower gpu_memory_for_servers, "
                    "training.batch_size or training.max_length, move servers to other GPUs "
                    "(cuda_visible_devices) or use a larger GPU",
                )
            )
        else:
            notes.append(
                f"trainer on GPU 0: peak about {peak:.1f} GiB of the {room:.1f} GiB the servers leave"
            )
    return fits, problems, notes


def vllm_max_model_len(b: VLLMBackend, base: str) -> int:
    """--max-model-len of a GPU-planned vLLM server: the backend's, else the model's context
    length capped at VLLM_MAX_MODEL_LEN."""
    if b.max_model_len:
        return b.max_model_len
    return min(facts_for(base).context_length or VLLM_MAX_MODEL_LEN, VLLM_MAX_MODEL_LEN)
