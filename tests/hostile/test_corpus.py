"""The hostile dialogue corpus (``corpus/*.txt``, format in ``transcript.py``), replayed byte for byte through
the sans-IO core and against a real server, with every reply checked for shape and leaked internals."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.hostile.conftest import ServerPool
from tests.hostile.transcript import parse, replay_core, replay_e2e

CORPUS = Path(__file__).parent / "corpus"
TRANSCRIPTS = sorted(CORPUS.glob("*.txt"))


def _cases(layer: str) -> list[object]:
    cases: list[object] = []
    for path in TRANSCRIPTS:
        transcript = parse(path)
        if layer not in transcript.layers:
            continue
        marks = [pytest.mark.xfail(strict=True, reason=transcript.xfail)] if transcript.xfail else []
        cases.append(pytest.param(path, id=path.stem, marks=marks))
    return cases


def test_the_corpus_is_there() -> None:
    assert len(TRANSCRIPTS) >= 20
    names = {path.stem for path in TRANSCRIPTS}
    assert len(names) == len(TRANSCRIPTS)


@pytest.mark.parametrize("path", _cases("core"))
def test_hostile_dialogue_through_the_core(path: Path) -> None:
    replay_core(parse(path))


@pytest.mark.parametrize("path", _cases("e2e"))
def test_hostile_dialogue_against_a_real_server(path: Path, servers: ServerPool) -> None:
    transcript = parse(path)
    replay_e2e(transcript, servers.get(transcript.config))
