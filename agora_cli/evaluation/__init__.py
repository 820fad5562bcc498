"""Evaluation and evidence: grading, `agora eval`, external anchoring, `agora report`.

- `grading.Grader(workers, timeout_s)`: the one grading rule (`protocol.answers.grade`, with
  math-verify as its symbolic step) in worker processes, hard per-item deadline.
- `answer_pairs`: the shipped gold/reply table that pins the rule (`agora grade --self-test`).
- The data sets it scores on (`agora_cli.datasets`) and its statistics (`agora_cli.stats`) sit
  below the protocol, which uses them too, so they are not part of this package; `agora ablate`
  drives whole runs, so it lives beside the orchestrator (`agora_cli/ablate.py`).
- `scoring`: ask and grade benchmark items, the `@majority` rows, pass@1; shared by `evaluate` and
  `anchor` (below both, so neither imports the other).
- `evaluate.run_evaluation(cfg, ...)`: pass@1 (Eq. 5) per member and `@majority`, resumable.
- `anchor.run_anchor(pool, cfg, prompts, step)`: protocol step 7, called by the loop.
- `report.build_report(run_dirs, out)` with `plots`: Figures 1, 3, 4, 5, 6, Tables 1 and 2 and the
  knowledge-flow matrix; each figure's data is written as JSON next to its PNG.
"""
