"""Config parsing without processes: durations, sizes, defaults, path resolution."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from smtp_tarpit.config import Config, ConfigError, load


def _load(tmp_path: Path, text: str) -> Config:
    path = tmp_path / "c.toml"
    path.write_text(text)
    return load(path)


@pytest.mark.parametrize(
    ("value", "seconds"),
    [("5", 5.0), ("2.5", 2.5), ('"250ms"', 0.25), ('"5s"', 5.0), ('"2m"', 120.0), ('"10m"', 600.0)],
)
def test_durations_accept_numbers_and_units(tmp_path: Path, value: str, seconds: float) -> None:
    config = _load(tmp_path, f"[server]\nshutdown_grace = {value}\n")
    assert config.server.shutdown_grace == seconds


def test_sizes_accept_units(tmp_path: Path) -> None:
    assert _load(tmp_path, '[limits]\nmessage_size = "20MiB"\n').limits.message_size == 20 * 1024 * 1024
    assert _load(tmp_path, '[limits]\nmessage_size = "10MB"\n').limits.message_size == 10_000_000


def test_built_in_defaults_are_the_seed_behaviour() -> None:
    config = load(None)
    assert config.tarpit.delay == 0
    assert config.server.listen == ["127.0.0.1:2525"]
    assert config.limits.command_line == 512 and config.limits.text_line == 1000
    assert config.limits.recipients_per_message == 100 and config.limits.idle_timeout == 300
    assert config.server.bare_newline == "normalize"
    assert config.auth.plaintext_from_loopback is False


def test_partial_file_keeps_every_other_default(tmp_path: Path) -> None:
    config = _load(tmp_path, "[tarpit]\ndelay = 5\n")
    assert config.tarpit.delay == 5 and config.tarpit.exempt_networks == []
    assert config.limits == load(None).limits


def test_relative_paths_resolve_against_the_config_folder(tmp_path: Path) -> None:
    config = _load(tmp_path, '[recipients]\nfile = "r.txt"\n[delivery]\nmaildir = "mail"\n')
    assert config.recipients.file == tmp_path.resolve() / "r.txt"
    assert config.delivery.maildir == tmp_path.resolve() / "mail"


def test_delay_above_the_rfc_safe_cap_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"\[tarpit\] delay"):
        _load(tmp_path, "[tarpit]\ndelay = 301\n")


def test_ipv6_listen_and_networks(tmp_path: Path) -> None:
    config = _load(
        tmp_path, '[server]\nlisten = ["[::1]:2525"]\n[tarpit]\nexempt_networks = ["2001:db8::/32"]\n'
    )
    assert config.server.listen == ["[::1]:2525"]
    assert str(config.tarpit.exempt_networks[0]) == "2001:db8::/32"


def test_bad_listen_and_non_table_sections(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"\[server\] listen\.0"):
        _load(tmp_path, '[server]\nlisten = ["nope"]\n')
    with pytest.raises(ConfigError, match="tarpit: must be a table"):
        _load(tmp_path, "tarpit = 5\n")


def test_every_option_is_documented_in_the_example_config() -> None:
    example = (Path(__file__).resolve().parents[2] / "config" / "smtp-tarpit.toml").read_text()
    for section_name, section in Config.model_fields.items():
        if section_name == "source":
            continue
        assert f"[{section_name}]" in example, section_name
        model = section.annotation
        assert model is not None
        for key in model.model_fields:  # type: ignore[union-attr]
            assert re.search(rf"^#? ?{key} = ", example, re.MULTILINE), f"[{section_name}] {key} undocumented"
