"""The example specs apply on the local backend, and a second plan is empty."""

from tests.support import SpecRepo


def test_example_applies_and_then_plans_nothing(example_repo: SpecRepo) -> None:
    """A first apply creates everything; the plan right after it is empty."""
    assert example_repo.cli("apply").code == 0
    plan = example_repo.cli_json("plan")
    assert plan["in_sync"] is True and plan["actions"] == []
