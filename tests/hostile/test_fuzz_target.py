"""The atheris target fuzz/fuzz_core.py, kept working without atheris: its input decoding and checks run
here on the hostile corpus and on fixed pseudo-random inputs; when atheris is installed (the ``fuzz``
extra) the target also runs under libFuzzer for a few dozen executions."""

from __future__ import annotations

import importlib.util
import random
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]
TARGET = ROOT / "fuzz" / "fuzz_core.py"


def _target() -> ModuleType:
    spec = importlib.util.spec_from_file_location("fuzz_core", TARGET)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_target_accepts_every_seed_of_the_hostile_corpus(tmp_path: Path) -> None:
    target = _target()
    target.write_seeds(tmp_path)
    seeds = sorted(tmp_path.iterdir())
    assert len(seeds) >= 15
    for seed in seeds:
        data = seed.read_bytes()
        for prefix in (data[:2], bytes([data[0] | 0b10000, 7]), bytes([0, 200])):  # reject mode, splits
            target.one_input(prefix + data[2:])


def test_the_target_accepts_arbitrary_inputs() -> None:
    target = _target()
    chooser = random.Random(8)
    alphabet = [b"\r\n.\r\n", b"\n.\n", b"\r", b"\n", b".", b"\x00", b"DATA\r\n", b"EHLO x\r\n"]
    for _ in range(150):
        parts = [
            chooser.choice(alphabet) if chooser.random() < 0.5 else chooser.randbytes(chooser.randrange(9))
            for _ in range(chooser.randrange(30))
        ]
        data = bytes([chooser.randrange(256), chooser.randrange(256)]) + b"".join(parts)
        target.one_input(b"EHLO x\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n" + data)
        target.one_input(data)


def test_the_target_runs_under_libfuzzer(tmp_path: Path) -> None:
    pytest.importorskip("atheris", reason="atheris is the optional fuzz extra")
    seeds, found = tmp_path / "seeds", tmp_path / "found"
    found.mkdir()
    subprocess.run([sys.executable, str(TARGET), "--seeds", str(seeds)], check=True, cwd=ROOT, timeout=60)
    done = subprocess.run(
        [
            sys.executable,
            str(TARGET),
            "-runs=60",
            "-seed=1",
            f"-dict={ROOT / 'fuzz' / 'smtp.dict'}",
            f"-artifact_prefix={tmp_path}/",
            str(found),
            str(seeds),
        ],
        cwd=ROOT,
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Done 60 runs" in done.stderr
