from __future__ import annotations

import pytest
from pydantic import ValidationError

from mesh.settings import MeshSettings


def test_settings_come_from_mesh_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MESH_NATS_URL", "nats://10.0.0.1:4333")
    monkeypatch.setenv("MESH_FETCH_BATCH", "128")
    settings = MeshSettings()
    assert settings.nats_url == "nats://10.0.0.1:4333"
    assert settings.fetch_batch == 128
    assert settings.embedded_port == 0  # never assume 4222 is free


def test_bad_values_are_refused_with_the_field_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MESH_SUBJECT_ROOT", "has.dots")
    with pytest.raises(ValidationError, match="subject_root"):
        MeshSettings()
    monkeypatch.delenv("MESH_SUBJECT_ROOT")
    monkeypatch.setenv("MESH_MAX_DELIVER", "1")
    with pytest.raises(ValidationError, match="max_deliver"):
        MeshSettings()
