"""Read your writes bookkeeping (router/pending.py): which changes a publish clears."""

from __future__ import annotations

from router.pending import Change, _combined, _holds


def test_the_active_versions_view_decides_a_facts_pending_state() -> None:
    assert _combined(None, "add") == "add"
    assert _combined("add", "edit") == "add"  # no version holds any value of it yet
    assert _combined("add", "delete") == "delete"  # one may be training with it
    assert _combined("edit", "delete") == "delete"
    assert _combined("delete", "add") == "edit"  # the same id posted again: a new value


def test_an_add_is_cleared_by_any_version_that_lists_it() -> None:
    add = Change("f", "m", "add", seq=5)
    assert _holds(add, "m-s1", {"f"}, upto=None)  # moved by a split: still trained
    assert not _holds(add, "m", {"g"}, upto=9)


def test_an_edit_is_cleared_only_by_its_modules_job_staged_at_or_after_it() -> None:
    edit = Change("f", "m", "edit", seq=5)
    assert _holds(edit, "m", {"f"}, upto=5) and _holds(edit, "m", {"f"}, upto=7)
    assert not _holds(edit, "m", {"f"}, upto=4)  # read before the edit: the old text
    assert not _holds(edit, "m", {"f"}, upto=None)  # a job this gateway did not see staged
    assert not _holds(edit, "other", {"f"}, upto=7)


def test_a_delete_is_cleared_once_its_module_lacks_the_fact() -> None:
    delete = Change("f", "m", "delete", seq=5)
    assert _holds(delete, "m", {"g"}, upto=None)
    assert not _holds(delete, "m", {"f", "g"}, upto=9)
    assert not _holds(delete, "other", set(), upto=9)
