"""No item whose label steered a run is ever scored as a held-out result.

The anchor's calibration items come from a held-out slice of GSM8K train (`gsm8k_dev`) that the
seed pool leaves out; `agora eval` removes any item that is one of the run's calibration items.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agora_cli import datasets
from agora_cli.config import config_from_dict
from agora_cli.datasets import (
    BENCHMARK_FILES,
    DEV_SIZE,
    calibration_set,
    load_benchmark,
    load_dev_split,
    normalize_text,
)
from agora_cli.errors import ConfigError, EvaluationError
from agora_cli.protocol.generate import load_seed_pool
from tests.fakes.openai_server import FakeOpenAI
from tests.test_eval import MEMBERS, make_pool, make_responder


@pytest.mark.unit
@pytest.mark.parametrize("bench", list(BENCHMARK_FILES))
def test_calibration_is_disjoint_from_every_evaluation_item(bench):
    """The whole dev split (every calibration set is a subset of it) against a whole benchmark."""
    dev = load_dev_split("gsm8k")
    assert len(dev) == DEV_SIZE
    evaluated = load_benchmark(bench)
    assert not {it.id for it in dev} & {it.id for it in evaluated}
    assert not ({normalize_text(it.problem) for it in dev} & {normalize_text(it.problem) for it in evaluated})
    cal = calibration_set("gsm8k", DEV_SIZE)
    assert {it.id for it in cal} <= {it.id for it in dev}


@pytest.mark.unit
def test_generators_never_see_a_calibration_item():
    pool = load_seed_pool("gsm8k_train")
    dev = load_dev_split("gsm8k")
    assert not {r["id"] for r in pool} & {it.id for it in dev}
    assert not ({normalize_text(r["problem"]) for r in pool} & {normalize_text(it.problem) for it in dev})


def _cfg_dict(url: str, tmp_path: Path, **evaluation) -> dict:
    return {
        "name": "leak",
        "run_dir": str(tmp_path / "run"),
        "backends": {"fake": {"kind": "openai", "base_url": url}},
        "members": [{"name": m, "model": m, "backend": "fake"} for m in MEMBERS],
        "ablations": {"lora": False},
        "evaluation": {"benchmarks": ["gsm8k"], "grade_workers": 2, "calibration_size": 4, **evaluation},
    }


@pytest.mark.unit
def test_config_refuses_a_calibration_without_a_held_out_split(tmp_path):
    for task in ("math500", "aime24"):
        with pytest.raises(ConfigError, match="no held-out split"):
            config_from_dict(_cfg_dict("http://127.0.0.1:1/v1", tmp_path, calibration=task))
    with pytest.raises(ConfigError, match="calibration_size"):
        config_from_dict(_cfg_dict("http://127.0.0.1:1/v1", tmp_path, calibration_size=501))
    data = _cfg_dict("http://127.0.0.1:1/v1", tmp_path)
    data["protocol"] = {"seed_pool": "gsm8k_test"}
    with pytest.raises(ConfigError, match="never seed pools"):
        config_from_dict(data)
    with pytest.raises(EvaluationError, match="never seed pools"):
        load_seed_pool("gsm8k_test")


@pytest.mark.integration
def test_eval_removes_the_runs_calibration_items(tmp_path, monkeypatch):
    """If a calibration item ever is an evaluation item (an edited data file, a legacy split),
    `agora eval` does not ask it, says so, and records it in summary.json."""
    from agora_cli.evaluation.evaluate import run_evaluation

    items = load_benchmark("gsm8k")[:6]
    leaked = [items[1], items[4]]
    monkeypatch.setattr(datasets, "calibration_set", lambda *a, **k: list(leaked))
    with FakeOpenAI(make_responder(items)) as fake:
        cfg = config_from_dict(_cfg_dict(fake.url, tmp_path))
        monkeypatch.setattr(datasets, "subset", lambda its, limit, **k: its[:6])
        pool = make_pool(fake.url)
        report = run_evaluation(cfg, run_dir=tmp_path / "run", limit=6, pool=pool)
        asked = {r.user for r in fake.requests_for("evaluate")}
    assert len(fake.requests_for("evaluate")) == 4 * 3
    assert not any(it.problem in u for it in leaked for u in asked)
    assert report.removed == {"gsm8k": [items[1].id, items[4].id]}
    assert report.scores["gsm8k"]["alice"][1] == 4
    summary = json.loads((report.out_dir / "summary.json").read_text())
    assert summary["removed_calibration_items"] == {"gsm8k": [items[1].id, items[4].id]}
