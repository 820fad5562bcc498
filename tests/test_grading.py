"""math-verify grading in worker processes with a hard per-item deadline."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from agora_cli.datasets import load_benchmark, subset
from agora_cli.evaluation.grading import Grader

pytestmark = pytest.mark.integration

# (prediction, gold, expected). Golds are in the benchmarks' own forms: GSM8K/AIME integers,
# MATH500 LaTeX.
TABLE = [
    # fractions and decimals
    (r"\frac{1}{2}", "0.5", True),
    ("0.5", r"\frac{1}{2}", True),
    ("1/2", r"\frac{1}{2}", True),
    (r"So the probability is \boxed{\dfrac{3}{4}}.", "0.75", True),
    ("0.333", r"\frac{1}{3}", False),
    ("The answer is 3.14", "3.14", True),
    (r"\boxed{2.5}", r"\frac{5}{2}", True),
    # intervals
    ("[2,5)", "[2,5)", True),
    (r"The solution set is $\boxed{[2, 5)}$.", "[2,5)", True),
    ("(2,5]", "[2,5)", False),
    # degrees and percent
    ("30", r"30^\circ", True),
    (r"The angle is $30^\circ$.", "30", True),
    (r"\boxed{50\%}", "50", True),
    # integers with thousands separators
    ("1,000", "1000", True),
    (r"\boxed{1,000}", "1000", True),
    ("1000", "1,000", True),
    # boxed answers in chain-of-thought text
    ("Janet sells 16 - 3 - 4 = 9 eggs. 9 * 2 = 18, so \\boxed{18}", "18", True),
    ("She has 5 apples, then 7. The final answer is \\boxed{17}.", "18", False),
    ("#### 18", "18", True),
    (r"$\boxed{10\sqrt{2}}$", r"10\sqrt2", True),
    (r"\boxed{\left( 3, \frac{\pi}{2} \right)}", r"\left( 3, \frac{\pi}{2} \right)", True),
    ("-3", "-3", True),
    ("3", "-3", False),
    (r"AIME: the remainder is \boxed{204}.", "204", True),
    # currency and thin spaces in MATH500 golds
    (r"She pays \$36 in total, so \boxed{\$36}", r"\$36", True),
    (r"\boxed{32,348}", r"\$32,\!348", True),
    (r"\boxed{35}", r"\$36", False),
    # no answer at all
    ("", "18", False),
    ("I do not know.", "18", False),
]


@pytest.fixture(scope="module")
def grader():
    with Grader(workers=2, timeout_s=10.0) as g:
        yield g


@pytest.mark.timeout(120)
def test_grading_table(grader: Grader) -> None:
    got = grader.grade_many([(p, g) for p, g, _ in TABLE])
    wrong = [(p, g, want) for (p, g, want), ok in zip(TABLE, got, strict=True) if ok != want]
    assert not wrong, f"misgraded (pred, gold, expected): {wrong}"


@pytest.mark.timeout(60)
def test_pathological_input_times_out_and_pool_survives() -> None:
    # sympy tries to evaluate the power tower exactly and never finishes.
    tower = r"\boxed{9^{9^{9^{9^{9^{9}}}}}}"
    with Grader(workers=2, timeout_s=2.0) as g:
        t0 = time.monotonic()
        got = g.grade_many([(tower, "1"), ("\\boxed{7}", "7"), ("12", "12")])
        elapsed = time.monotonic() - t0
        assert got == [False, True, True]
        assert g.timeouts == 1
        assert elapsed < 2.0 + 10.0  # deadline plus a generous margin for a replacement worker
        # The killed worker was replaced: the grader keeps grading.
        assert g.grade_many([("\\boxed{1}", "1"), ("2", "3")]) == [True, False]


def sleepy_grade(pred: str, gold: str) -> bool:
    """A grader that hangs on one input (must be module-level: it runs in a worker process)."""
    if pred == "hang":
        time.sleep(600)
    return pred == gold


@pytest.mark.timeout(60)
def test_hanging_grader_counts_wrong_within_deadline() -> None:
    with Grader(workers=1, timeout_s=1.0, fn=sleepy_grade) as g:
        t0 = time.monotonic()
        got = g.grade_many([("a", "a"), ("hang", "hang"), ("b", "b"), ("hang", "hang"), ("c", "d")])
        elapsed = time.monotonic() - t0
    assert got == [True, False, True, False, False]
    assert g.timeouts == 2
    assert elapsed < 2 * 1.0 + 15.0


@pytest.mark.timeout(60)
def test_grader_from_threads(grader: Grader) -> None:
    """The point of the process pool: grading works off the main thread (no signal.alarm)."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(2) as ex:
        outs = list(ex.map(lambda pg: grader.grade(*pg), [("0.5", r"\frac12"), ("2", "3")] * 3))
    assert outs == [True, False] * 3


@pytest.mark.timeout(300)
def test_every_gold_answer_grades_against_itself(grader: Grader) -> None:
    """Each benchmark's own gold, boxed in a sentence, must be graded correct (format coverage)."""
    items = load_benchmark("math500") + load_benchmark("aime24") + subset(load_benchmark("gsm8k"), 100)
    got = grader.grade_many([(f"Therefore the answer is \\boxed{{{it.answer}}}.", it.answer) for it in items])
    missed = [(it.id, it.answer) for it, ok in zip(items, got, strict=True) if not ok]
    assert not missed


@pytest.mark.timeout(120)
def test_workers_survive_the_thread_that_first_used_them() -> None:
    """Workers die with the grader's process, not with a short-lived caller thread."""
    import threading

    with Grader(workers=2, timeout_s=10) as g:
        out: list[list[bool]] = []
        t = threading.Thread(target=lambda: out.append(g.grade_many([("1", "1"), ("2", "3")])))
        t.start()
        t.join()
        assert out == [[True, False]]
        workers = g.worker_pids
        # A parent-death signal would be sent when the thread's task leaves the kernel, which can
        # be after join() returns: wait for that, then the signal (if any) is already pending and
        # a worker acts on it before it can answer again.
        task = Path(f"/proc/self/task/{t.native_id}")
        deadline = time.monotonic() + 30
        while task.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not task.exists()
        assert g.grade_many([("5", "5"), ("6", "6")]) == [True, True]
        assert g.worker_pids == workers
        assert g.errors == 0
        g.close()
        assert g.grade_many([("7", "7")]) == [True]  # usable again after close()
