"""The command line as an administrator uses it: exit codes, and errors that name the file and the key."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from smtp_tarpit.auth.passwords import verify

ROOT = Path(__file__).resolve().parents[2]


def _run(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "smtp_tarpit", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_unknown_key_is_named_with_file_and_section(tmp_path: Path) -> None:
    config = tmp_path / "smtp-tarpit.toml"
    config.write_text("[tarpit]\ndealy = 5\n")
    result = _run("check-config", str(config))
    assert result.returncode == 2
    assert f"{config}: [tarpit] dealy: unknown key" in result.stderr


def test_wrong_type_and_out_of_range_are_errors(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text('[tarpit]\ndelay = "soon"\n[limits]\nrecipients_per_message = 0\n')
    result = _run("check-config", str(config))
    assert result.returncode == 2
    assert "[tarpit] delay:" in result.stderr
    assert "[limits] recipients_per_message:" in result.stderr


def test_unreadable_recipients_file_is_named(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text(
        f'[recipients]\ndomains = ["example.test"]\nfile = "missing.txt"\n'
        f'[delivery]\nmaildir = "{tmp_path / "mail"}"\n'
    )
    result = _run("check-config", str(config))
    assert result.returncode == 2
    assert "[recipients] file: cannot read" in result.stderr and "missing.txt" in result.stderr


def test_malformed_recipients_line_is_named(tmp_path: Path) -> None:
    (tmp_path / "r.txt").write_text("alice@example.test\nbob@elsewhere.test\n")
    config = tmp_path / "c.toml"
    config.write_text('[recipients]\ndomains = ["example.test"]\nfile = "r.txt"\n[delivery]\nmaildir = "m"\n')
    result = _run("check-config", str(config))
    assert result.returncode == 2
    assert "r.txt:2: bob@elsewhere.test: not in one of [recipients] domains" in result.stderr


def test_missing_config_file_and_bad_toml(tmp_path: Path) -> None:
    assert _run("check-config", str(tmp_path / "nope.toml")).returncode == 2
    bad = tmp_path / "bad.toml"
    bad.write_text("[tarpit\n")
    result = _run("serve", "--config", str(bad))
    assert result.returncode == 2 and "not valid TOML" in result.stderr


def test_shipped_example_config_is_valid() -> None:
    result = _run("check-config", str(ROOT / "config" / "smtp-tarpit.toml"))
    assert result.returncode == 0, result.stderr
    assert "tar pit 5s" in result.stdout


def test_hash_password_prints_a_verifiable_salted_hash() -> None:
    first = _run("hash-password", stdin="s3cret\n")
    second = _run("hash-password", stdin="s3cret\n")
    assert first.returncode == 0
    assert first.stdout != second.stdout  # salted
    assert "s3cret" not in first.stdout
    assert verify("s3cret", first.stdout.strip()) and not verify("other", first.stdout.strip())


def test_version() -> None:
    result = _run("--version")
    assert result.returncode == 0 and result.stdout.startswith("smtp-tarpit ")
