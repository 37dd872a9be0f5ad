from __future__ import annotations

import pytest

from streamrec.stream.errors import ConfigError
from streamrec.stream.settings import load_settings


def test_defaults_and_topic_names() -> None:
    settings = load_settings(namespace="ads")
    assert settings.impressions_topic == "ads.impressions"
    assert settings.clicks_topic == "ads.clicks"
    assert settings.dead_letter_topic == "ads.dead-letter"


def test_flags_override_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAMREC_PARTITIONS", "4")
    assert load_settings().partitions == 4
    assert load_settings(partitions=8).partitions == 8
    assert load_settings(partitions=None).partitions == 4  # an absent flag leaves the env value


def test_unknown_environment_key_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAMREC_PARTITONS", "4")
    with pytest.raises(ConfigError, match="STREAMREC_PARTITONS"):
        load_settings()


def test_bad_value_names_the_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAMREC_PARTITIONS", "zero")
    with pytest.raises(ConfigError, match="partitions"):
        load_settings()
    with pytest.raises(ConfigError, match="namespace"):
        load_settings(namespace="bad name!")
