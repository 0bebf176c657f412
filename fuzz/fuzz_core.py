"""Coverage-guided fuzzing of the sans-IO SMTP core with atheris (libFuzzer).

Each input is one client byte stream: its first octet picks the limits (and "reject" for bare line ends),
its second how the stream is split into reads, the rest is what the client sends. The checks are those of
the hypothesis properties (tests/hostile/core_checks.py): no exception escapes the core; splitting never
changes the events or the output; every reply is well formed (code, separator, CRLF, enhanced code, at
most 512 octets a line); each DATA section ends at its first CRLF.CRLF only, with one outcome, the whole
message or its refusal, never a part. A failed check is an AssertionError: libFuzzer stops and saves the
input as crash-<sha1>.

    python fuzz/fuzz_core.py -max_total_time=60 -dict=fuzz/smtp.dict var/fuzz var/fuzz-seeds
    python fuzz/fuzz_core.py --seeds var/fuzz-seeds   # seed inputs from tests/hostile/corpus, then exit
    python fuzz/fuzz_core.py crash-...                # replay one input

Run from the repository root with the project's venv (atheris: the ``fuzz`` extra).
"""

from __future__ import annotations

import random
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

_checks: ModuleType | None = None


def load() -> ModuleType:
    """Import the checks (and with them the core): under atheris, inside its instrumentation."""
    global _checks  # noqa: PLW0603  (imported once, late, so that atheris can instrument it)
    if _checks is None:
        from tests.hostile import core_checks  # noqa: PLC0415

        _checks = core_checks
    return _checks


def limits_for(choice: int) -> object:
    from smtp_tarpit.protocol import Limits  # noqa: PLC0415

    return Limits(
        command_line=(64, 512)[choice & 1],
        text_line=(80, 1000)[(choice >> 1) & 1],
        message_size=(200, 2000)[(choice >> 2) & 1],
        recipients=(1, 3)[(choice >> 3) & 1],
        reject_bare_newline=bool((choice >> 4) & 1),
        junk_commands=(3, 100)[(choice >> 5) & 1],
    )


def cuts_for(seed: int, length: int) -> list[int]:
    """Where the stream is split into reads: none, every N octets, or at random points."""
    if seed == 0 or length == 0:
        return []
    if seed < 64:
        return list(range(seed, length, seed))
    chooser = random.Random(seed)
    return [chooser.randrange(length) for _ in range(seed % 16)]


def one_input(data: bytes) -> None:
    if len(data) < 2:
        return
    stream = data[2:]
    load().check_stream(stream, cuts_for(data[1], len(stream)), limits_for(data[0]))


MAX_LEN = 4096  # octets per input unless -max_len says otherwise: every input is fed three ways


def write_seeds(folder: Path) -> None:
    """One seed per hostile transcript short enough: its client bytes, default limits, no split."""
    from tests.hostile.transcript import parse  # noqa: PLC0415

    folder.mkdir(parents=True, exist_ok=True)
    for path in sorted((ROOT / "tests" / "hostile" / "corpus").glob("*.txt")):
        transcript = parse(path)
        client = b"".join(step.client or b"" for step in transcript.steps)
        if len(client) + 2 <= MAX_LEN:
            (folder / path.stem).write_bytes(bytes([0b101111, 0]) + client)


def main() -> None:
    if sys.argv[1:2] == ["--seeds"]:
        write_seeds(Path(sys.argv[2]))
        return
    import atheris  # type: ignore[import-untyped,import-not-found,unused-ignore]  # noqa: PLC0415

    with atheris.instrument_imports(include=["smtp_tarpit"]):
        load()
    argv = (
        sys.argv if any(a.startswith("-max_len=") for a in sys.argv) else [*sys.argv, f"-max_len={MAX_LEN}"]
    )
    atheris.Setup(argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
