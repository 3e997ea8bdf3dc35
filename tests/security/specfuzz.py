"""What the spec fuzzers share: the keys a function spec has (from
:class:`~kiln.functions.spec.FunctionSpec`, so a new field is fuzzed too) and a
strategy for arbitrary JSON values biased towards the ones that used to break
the daemon (non-finite and huge numbers, NUL, forbidden networks, units)."""

from __future__ import annotations

import dataclasses
from typing import Any

from hypothesis import strategies as st

from kiln.functions.spec import FunctionSpec

#: Every key a function spec takes (``name`` comes from the URL or the table).
SPEC_KEYS: list[str] = [f.name for f in dataclasses.fields(FunctionSpec) if f.name != "name"]

HUGE = 10**400

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([HUGE, -HUGE, 2**63, 2**63 - 1, 2**31, 0, -1]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.sampled_from(
        [
            *("128MiB", "1e3", "-5MiB", "100/s", "1/s", "inf", "nan", "0/s", "1.5"),
            *("host", "container:x", "bridge", "\x00", "0:0"),
        ]
    ),
)

json_values: st.SearchStrategy[Any] = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)
