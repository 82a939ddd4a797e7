"""pipelines.bench.gpu_check: the one-command GPU check runs end to end (here on the CPU, at its quick sizes) and
writes every measure; the figures themselves are only meaningful on a GPU."""

from __future__ import annotations

import json
import math

from pipelines.bench.gpu_check import main


def test_quick_run_on_the_cpu_writes_every_measure(tmp_path, capsys):
    assert main(["--out", str(tmp_path), "--device", "cpu", "--quick", "--no-tests"]) == 0
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["device"] == "cpu" and report["config"]["quick"] is True
    assert set(report["train"]) == {"otam_episodes_per_s", "a2m2_episodes_per_s"}
    assert set(report["eval"]) == {"otam_episodes_per_s", "a2m2_episodes_per_s"}
    for value in [*report["train"].values(), *report["eval"].values(),
                  report["embed"]["pipeline_frames_per_s"], report["embed"]["encoder_frames_per_s"]]:
        assert math.isfinite(value) and value > 0
    assert report["embed"]["ratio"] == report["embed"]["pipeline_frames_per_s"] / report["embed"]["encoder_frames_per_s"]
    table = capsys.readouterr().out
    assert "| embed: pipeline ÷ encoder |" in table and "DMGAL-Adapter peak GPU memory" in table
    assert set(report["e2e"]) == {"DMGAL-Adapter", *(f"{m} {t}" for m in ("OTAM", "A2M2") for t in ("full", "last:2", "lora:8"))}
    assert all(math.isfinite(c["episodes_per_s"]) and c["episodes_per_s"] > 0 for c in report["e2e"].values())
    assert report["stage"]["ratio"] > 0 and "stage ÷ encoder-only" in table


def test_gpu_tests_import_nothing_the_gpu_machines_lack():
    """The GPU machines have no Ray, MLflow or video decoder: the module gpu_check runs must import without
    them (pytest imports every module it collects before selecting by marker)."""
    import subprocess
    import sys
    from pathlib import Path

    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('ray', 'mlflow', 'av', 'decord'):\n"
        "            raise ImportError('not on the GPU machine: ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "sys.path.insert(0, 'tests')\n"
        "import test_gpu, pipelines.bench.gpu_check, fsar.embedding, fsar.training.loop, fsar.sources.pixels, fsar.evaluation.scoring\n"
    )
    repo = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, "-c", code], cwd=repo, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
