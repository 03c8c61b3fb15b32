"""docs/configuration.md is the reference rendered from casa.toml's model, never edited by hand."""

from pathlib import Path

from casa.config.reference import render_reference

REFERENCE = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"


def test_reference_is_rendered_from_the_model():
    """A key added, removed or re-described in casa.config.model changes the reference."""
    assert REFERENCE.exists(), "docs/configuration.md is missing: run `make docs`"
    assert REFERENCE.read_text() == render_reference(), (
        "docs/configuration.md differs from casa.config.model: run `make docs`"
    )
