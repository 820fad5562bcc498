"""Evaluation and evidence: grading, `agora eval`, external anchoring, `agora ablate`, `agora report`.

- `grading.Grader(workers, timeout_s)`: the one grading rule (`protocol.answers.grade`, with
  math-verify as its symbolic step) in worker processes, hard per-item deadline.
- `answer_pairs`: the shipped gold/reply table that pins the rule (`agora grade --self-test`).
- `benchmarks`: the shipped GSM8K test / MATH500 / AIME 2024 items, fixed seeded subsets, and the
  anchor's calibration set (`gsm8k_dev`: a held-out slice of GSM8K train that the seed pool leaves
  out, disjoint from every evaluation item).
- `stats`: Wilson intervals, exact McNemar and the paired bootstrap for every table and figure.
- `scoring`: ask and grade benchmark items, the `@majority` rows, pass@1; shared by `evaluate` and
  `anchor` (below both, so neither imports the other).
- `evaluate.run_evaluation(cfg, ...)`: pass@1 (Eq. 5) per member and `@majority`, resumable.
- `anchor.run_anchor(pool, cfg, prompts, step)`: protocol step 7, called by the loop.
- `ablate`: the Table 2 grid (full AGORA and each switch off) over seeds, mean ± sd.
- `report.build_report(run_dirs, out)` with `plots`: Figures 1, 3, 4, 5, 6, Tables 1 and 2 and the
  knowledge-flow matrix; each figure's data is written as JSON next to its PNG.
"""
