"""The generated PhoneBook that stands in for the paper's file on a machine without it:
enough distinct people for the evals' sizes, and the first rows unchanged as it grew."""

from __future__ import annotations

from pathlib import Path

import pytest

from loramem.datasets import generated_phonebook, phonebook


def test_the_generated_phonebook_has_as_many_distinct_people_as_the_evals_ask_for() -> None:
    # eval routing asks for 512 at --sizes 2,8; bench.router_restart for 2,000.
    people = generated_phonebook(2000)
    assert len({p.name for p in people}) == 2000
    assert all(p.fact == f"The phone number of {p.name} is {p.phone}." for p in people)


def test_growing_it_keeps_the_first_rows_and_their_numbers() -> None:
    assert generated_phonebook(2000, seed=3)[:192] == generated_phonebook(192, seed=3)


def test_more_than_it_can_name_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="generated names"):
        phonebook(tmp_path, 10_000)
