"""Lesson 14's readable input diffs (engine/input_diff.py): `describe_changes` names each
difference between two JSON values by its path, one line each, the way a
non-determinism error shows which keys of a call's input changed.

Nested objects and arrays (an index added, removed or changed), a change of type
that Python's equality would miss (1 and true, 1 and 1.0), equal values ([]),
long values cut short, and the cut after MAX_LINES differences. Pure functions: no
database.
"""

from __future__ import annotations

from typing import Any

import pytest

from lessons.lesson15_operating_at_scale.engine.input_diff import MAX_LINES, describe_changes


@pytest.mark.parametrize(
    "value",
    [
        pytest.param({}, id="empty-object"),
        pytest.param([], id="empty-array"),
        pytest.param(None, id="null"),
        pytest.param("", id="empty-string"),
        pytest.param(
            {"order_id": "A-1", "items": [{"sku": "MUG", "qty": 2}], "gift": False},
            id="nested",
        ),
    ],
)
def test_equal_values_have_no_differences(value: Any) -> None:
    assert describe_changes(value, value) == []


def test_keys_added_removed_and_changed_are_named_one_line_each_in_key_order() -> None:
    recorded = {"order_id": "A-1", "amount_cents": 4200, "coupon": "WELCOME"}
    new = {"order_id": "A-1", "amount_cents": 4620, "currency": "EUR"}
    assert describe_changes(recorded, new) == [
        "amount_cents: 4200 -> 4620",
        'coupon: removed (was "WELCOME")',
        'currency: added "EUR"',
    ]


def test_a_key_inserted_in_another_order_is_no_difference() -> None:
    assert describe_changes({"a": 1, "b": 2}, {"b": 2, "a": 1}) == []


def test_nested_objects_are_named_by_their_dotted_path() -> None:
    recorded = {"customer": {"address": {"city": "Lyon", "zip": "69001"}, "name": "Ada"}}
    new = {"customer": {"address": {"city": "Paris", "zip": "69001"}, "name": "Ada", "vip": True}}
    assert describe_changes(recorded, new) == [
        'customer.address.city: "Lyon" -> "Paris"',
        "customer.vip: added true",
    ]


def test_array_items_are_compared_by_index_added_removed_and_changed() -> None:
    assert describe_changes([1, 2], [1, 2, 3]) == ["[2]: added 3"]
    assert describe_changes([1, 2, 3], [1]) == ["[1]: removed (was 2)", "[2]: removed (was 3)"]
    assert describe_changes([1, 2, 3], [1, 5, 3]) == ["[1]: 2 -> 5"]
    assert describe_changes(
        {"items": [{"sku": "MUG"}, {"sku": "MUG"}]},
        {
            "items": [
                {"sku": "MUG"},
                {"sku": "CUP"},
            ]
        },
    ) == ['items[1].sku: "MUG" -> "CUP"']
    assert describe_changes({"tags": [["a"], ["b"]]}, {"tags": [["a"], ["b", "c"]]}) == [
        'tags[1][1]: added "c"'
    ]


def test_an_item_inserted_at_the_front_shifts_every_index() -> None:
    """Arrays are compared index by index, not aligned: each shifted item is a line."""
    assert describe_changes(["b", "c"], ["a", "b", "c"]) == [
        '[0]: "b" -> "a"',
        '[1]: "c" -> "b"',
        '[2]: added "c"',
    ]


@pytest.mark.parametrize(
    ("recorded", "new", "line"),
    [
        pytest.param(1, True, "(the whole input): 1 -> true", id="1-vs-true"),
        pytest.param(True, 1, "(the whole input): true -> 1", id="true-vs-1"),
        pytest.param(1, 1.0, "(the whole input): 1 -> 1.0", id="1-vs-1.0"),
        pytest.param(0, False, "(the whole input): 0 -> false", id="0-vs-false"),
        pytest.param("1", 1, '(the whole input): "1" -> 1', id="string-vs-number"),
        pytest.param(None, 0, "(the whole input): null -> 0", id="null-vs-0"),
        pytest.param({}, [], "(the whole input): {} -> []", id="object-vs-array"),
    ],
)
def test_a_change_of_type_is_a_difference_even_where_python_finds_the_values_equal(
    recorded: Any, new: Any, line: str
) -> None:
    assert describe_changes(recorded, new) == [line]


def test_a_change_of_type_inside_an_object_is_one_line_at_its_path() -> None:
    assert describe_changes({"qty": 1, "paid": True}, {"qty": 1.0, "paid": 1}) == [
        "paid: true -> 1",
        "qty: 1 -> 1.0",
    ]
    assert describe_changes({"items": [1, 2]}, {"items": {"0": 1}}) == ['items: [1,2] -> {"0":1}']


def test_a_long_value_is_cut_short_the_path_says_where_to_look() -> None:
    long = "x" * 100
    [line] = describe_changes({"note": "short"}, {"note": long})
    assert line == f'note: "short" -> "{"x" * 56}...'
    [line] = describe_changes({}, {"note": long})
    assert line == f'note: added "{"x" * 56}...'


def test_non_ascii_text_is_shown_as_it_is() -> None:
    assert describe_changes({"city": "Zurich"}, {"city": "Zürich"}) == [
        'city: "Zurich" -> "Zürich"'
    ]


def test_more_differences_than_max_lines_are_cut_with_a_count_of_the_rest() -> None:
    recorded = {f"k{n:02}": n for n in range(MAX_LINES + 5)}
    new = {f"k{n:02}": n + 1 for n in range(MAX_LINES + 5)}
    lines = describe_changes(recorded, new)
    assert len(lines) == MAX_LINES + 1
    assert lines[:MAX_LINES] == [f"k{n:02}: {n} -> {n + 1}" for n in range(MAX_LINES)]
    assert lines[-1] == "... and 5 more"


def test_exactly_max_lines_differences_are_all_shown() -> None:
    recorded = list(range(MAX_LINES))
    new = [n + 1 for n in range(MAX_LINES)]
    assert describe_changes(recorded, new) == [f"[{n}]: {n} -> {n + 1}" for n in range(MAX_LINES)]
    assert describe_changes([*recorded, 0], [*new, 1])[-1] == "... and 1 more"
