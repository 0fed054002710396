"""blocks/storable.py: what cannot be stored is refused naming the field and the place inside it."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from blocks.storable import MAX_DEPTH, StorableModel, unstorable


def _nest(depth, leaf="leaf"):
    value = leaf
    for _ in range(depth):
        value = {"a": value}
    return value


def test_too_deep_names_the_place_inside_the_field_not_just_the_field():
    problem = unstorable({"shallow": {"x": 1}, "deep": [_nest(MAX_DEPTH + 5)]}, "metadata")
    assert problem.startswith("metadata.deep[0].a.a.a")
    assert problem.endswith(f"is nested more than {MAX_DEPTH} levels deep")
    assert len(problem) < 130  # the path 65 levels down is cut, not spelled out
    assert unstorable({"deep": _nest(MAX_DEPTH - 1)}, "metadata") is None


def test_nul_surrogate_and_key_name_the_place_and_a_huge_key_is_cut():
    assert unstorable({"a": [{"b": "x\x00y"}]}, "metadata") == "metadata.a[0].b contains a NUL character (\\u0000)"
    assert unstorable({"a": {"k\ud800": 1}}, "metadata") == "a key of metadata.a contains a lone surrogate (\\ud800)"
    problem = unstorable({"k" * 100_000: "\x00"}, "metadata")
    assert problem.startswith("metadata.kkk") and len(problem) < 130


class _In(StorableModel):
    metadata: dict


def test_a_model_refuses_it_at_validation_naming_the_place():
    with pytest.raises(ValidationError, match=r"metadata\.deep\.a\.a.*nested more than 64 levels deep, which cannot"):
        _In(metadata={"deep": _nest(100)})
