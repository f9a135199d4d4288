"""Hypothesis strategies for CRDT signal states (counter and set wire forms), shared by the record,
replica store and codec tests; each test picks its own writers, elements and tags."""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

from ring.crdt import ORSet, PNCounter


def counter_states(writers: st.SearchStrategy[str], amounts: st.SearchStrategy[int],
                   max_ops: int) -> st.SearchStrategy[Any]:
    """A PNCounter's wire form after up to `max_ops` increments (n >= 0) or decrements (n < 0)."""
    def build(ops: list[tuple[str, int]]) -> Any:
        c = PNCounter()
        for w, n in ops:
            c = c.incr(w, n) if n >= 0 else c.decr(w, -n)
        return c.to_wire()
    return st.lists(st.tuples(writers, amounts), max_size=max_ops).map(build)


def set_states(elements: st.SearchStrategy[Any], tags: st.SearchStrategy[str], max_ops: int, *,
               tag_per_element: bool = False) -> st.SearchStrategy[Any]:
    """An add-wins ORSet's wire form after up to `max_ops` adds (with a tag) or removes. With
    `tag_per_element` the tag is suffixed with the element (distinct elements never share a tag)."""
    def build(ops: list[tuple[bool, Any, str]]) -> Any:
        s = ORSet()
        for add, e, tag in ops:
            s = s.add(e, f"{tag}{e}" if tag_per_element else tag) if add else s.remove(e)
        return s.to_wire()
    return st.lists(st.tuples(st.booleans(), elements, tags), max_size=max_ops).map(build)
