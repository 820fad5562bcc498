"""The consensus audit in `agora report`: a figure over steps and a per-verifier table.

Reads the `audit` table (`agora_cli.audit`): per committed step, consensus precision
P(correct | approved) and recall P(approved | correct) against gold on the step's probe
solutions, each with its 95% Wilson band; and per verifier, the run's totals of its own verdicts.
"""

from __future__ import annotations

import math
from pathlib import Path

from agora_cli.audit import CONSENSUS, Counts, step_counts, totals
from agora_cli.evaluation.drawing import (
    DODGE,
    Data,
    _save,
    identical_groups,
    note,
    plt,
    series_offsets,
    step_axis,
)
from agora_cli.evaluation.plots import _empty
from agora_cli.stats import rate_text, wilson
from agora_cli.store import Store

# The three rates drawn: name in the data, color, line style.
RATES = (("precision", "tab:blue", "-"), ("recall", "tab:orange", "-"), ("accuracy", "gray", ":"))
LABELS = {"precision": "precision", "recall": "recall", "accuracy": "solutions correct"}
NO_EVIDENCE = {
    "precision": "nothing approved",
    "recall": "no probe solution was right",
    "accuracy": "no probe solutions",
}


def _drawn_rates(data: Data) -> dict[str, list[float]]:
    """Each rate as drawn: a step without evidence (n = 0) is NaN, a gap in the line."""
    return {name: [math.nan if v is None else float(v) for v in data[name]] for name, _, _ in RATES}


def fig_consensus_audit(store: Store, path: Path, title: str = "") -> Data:
    """Consensus precision and recall against gold per step, with 95% Wilson bands.

    Data: {"step", "precision", "precision_n", "precision_lo", "precision_hi", "recall", ...,
    "accuracy", "accuracy_n"}; a rate with n = 0 (nothing approved, nothing correct) is None
    and drawn as a gap.
    """
    per_step = step_counts(store)
    data: Data = {"step": list(per_step)}
    for name in ("precision", "recall", "accuracy"):
        vals, ns, los, his = [], [], [], []
        for counts in per_step.values():
            k, n = getattr(counts.get(CONSENSUS, Counts()), name)
            lo, hi = wilson(k, n) if n else (None, None)
            vals.append(k / n if n else None)
            ns.append(n)
            los.append(lo)
            his.append(hi)
        data.update({name: vals, f"{name}_n": ns, f"{name}_lo": los, f"{name}_hi": his})
    fig, ax = plt.subplots(figsize=(6.5, 4))
    if data["step"]:
        drawn = _drawn_rates(data)
        # Rates that coincide (all 0 early in a run) are offset sideways and named in the legend,
        # so no line hides under another.
        offsets = series_offsets({name: (data["step"], drawn[name]) for name in drawn}, DODGE)
        same_as = {
            m: g[0] for g in identical_groups({n: (data["step"], drawn[n]) for n in drawn}) for m in g[1:]
        }
        for name, color, style in RATES:
            if all(math.isnan(v) for v in drawn[name]):  # an entry with nothing to show: say so
                note(ax, f"{LABELS[name]}: no evidence at any step ({NO_EVIDENCE[name]})")
                continue
            xs = [s + offsets[name] for s in data["step"]]
            label = (
                f"{LABELS[name]} (identical to {LABELS[same_as[name]]})" if name in same_as else LABELS[name]
            )
            ax.plot(xs, drawn[name], marker="o", linestyle=style, color=color, label=label)
            if name != "accuracy":
                band_lo = [math.nan if v is None else float(v) for v in data[f"{name}_lo"]]
                band_hi = [math.nan if v is None else float(v) for v in data[f"{name}_hi"]]
                ax.fill_between(xs, band_lo, band_hi, color=color, alpha=0.2)
        ax.legend(fontsize=8)
        ax.set_ylim(-0.02, 1.02)
        step_axis(ax, data["step"])
        data["offsets"] = offsets
    else:
        _empty(ax, "audited steps (protocol.audit_probes is 0)")
    ax.set(
        xlabel="step", ylabel="rate against gold (probe solutions)", title=f"Consensus audit {title}".strip()
    )
    return _save(fig, path, data)


def audit_table(store: Store) -> str:
    """Markdown: the run's audit totals, the unanimous decision first, then each verifier."""
    per_step = step_counts(store)
    if not per_step:
        return (
            "_No consensus audit in this run: set `protocol.audit_probes` (probes per step) to measure it._\n"
        )
    md = (
        "| verifier | probe solutions judged | precision P(correct given approved) [95% CI] | "
        "recall P(approved given correct) [95% CI] | solutions correct [95% CI] |\n"
        "|---|---:|---:|---:|---:|\n"
    )
    for verifier, c in totals(per_step.values()).items():
        name = "unanimous consensus" if verifier == CONSENSUS else verifier
        md += (
            f"| {name} | {c.n} | {rate_text(*c.precision)} | {rate_text(*c.recall)} | "
            f"{rate_text(*c.accuracy)} |\n"
        )
    return md


def audit_section(store: Store, out: Path, slug: str, label: str) -> list[str]:
    """The report's Markdown lines for one run (and its figure, written into `out`; a run
    without audited steps gets the note on how to turn the audit on, and no empty figure)."""
    head = ["### Consensus audit: verification against gold", ""]
    if not step_counts(store):
        return [*head, audit_table(store), ""]
    fig_consensus_audit(store, out / f"{slug}-consensus-audit.png", label)
    return [
        *head,
        f"![Consensus audit, {label}]({slug}-consensus-audit.png)",
        "",
        "Each step mixes gold-labelled probe problems from the seed pool (never an evaluation "
        "or calibration item) into its problems; they are solved and verified like the others "
        "but never voted on, buffered or shown as elite examples. Precision is the share of "
        "approved probe solutions that are right against gold, recall the share of right ones "
        "that were approved; bands and brackets are 95% Wilson intervals.",
        "",
        audit_table(store),
        "",
    ]
