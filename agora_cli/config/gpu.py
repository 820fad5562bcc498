"""SGLang GPU-memory planning: which device each server uses and its --mem-fraction-static.

Used by the cross-field checks (a plan that cannot fit is a config error) and by the SGLang
backend when it builds each server's command, so both read the same numbers.
"""

from __future__ import annotations

from agora_cli.config.schema import Member, SGLangBackend


def sglang_device(b: SGLangBackend, base: str, members: list[Member]) -> str | None:
    """The CUDA_VISIBLE_DEVICES of one base model's server (None: the default device)."""
    for key in [base, *(m.name for m in members), *(m.model for m in members)]:
        if key in b.cuda_visible_devices:
            return b.cuda_visible_devices[key]
    return None


def sglang_memory_plan(
    b: SGLangBackend, bases: dict[str, list[Member]]
) -> dict[str | None, list[tuple[str, float, float]]]:
    """device -> [(base, share s_k, --mem-fraction-static f_k)] in start order (`bases`' order).

    SGLang sizes its static memory as a fraction of the memory *free when it starts*, so servers
    started one after another on one device get f_k = s_k / (1 - sum_{j<k} s_j) for intended
    shares s_k of the whole device; shares not set in `memory_shares` split what is left of
    `gpu_memory_for_servers` equally.
    """
    groups: dict[str | None, list[tuple[str, list[Member]]]] = {}
    for base, members in bases.items():
        groups.setdefault(sglang_device(b, base, members), []).append((base, members))
    plan: dict[str | None, list[tuple[str, float, float]]] = {}
    for device, servers in groups.items():
        given = {}
        for base, members in servers:
            for key in [base, *(m.name for m in members), *(m.model for m in members)]:
                if key in b.memory_shares:
                    given[base] = b.memory_shares[key]
                    break
        rest = [base for base, _ in servers if base not in given]
        left = max(b.gpu_memory_for_servers - sum(given.values()), 0.0)
        used, rows = 0.0, []
        for base, _ in servers:
            share = given.get(base, left / len(rest) if rest else 0.0)
            rows.append((base, share, round(share / (1 - used), 3) if used < 1 else 0.0))
            used += share
        plan[device] = rows
    return plan
