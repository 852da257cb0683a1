"""The README's reference tables are generated from the specs and must be current."""

from trainenv import docs


def test_readme_generated_sections_are_current() -> None:
    text = docs.README.read_text()
    assert docs.render(text) == text, "README is stale: run `python -m trainenv.docs`"


def test_every_intervention_appears_in_the_readme() -> None:
    from trainenv.core import interventions as registry

    text = docs.README.read_text()
    assert all(f"`{i.name}`" in text for i in registry.all_interventions())
