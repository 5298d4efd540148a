import gc
import weakref

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from afmi.errors import PayloadTypeError
from afmi.testing.conformance import same
from afmi.wire.message import copy_buffers
from afmi.wire.serialize import _encode_fast, _encode_generic, decode, encode


def roundtrip(obj, **kw):
    header, buffers = encode(obj, **kw)
    return decode(header, copy_buffers(buffers), **kw)


scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False),
    st.complex_numbers(allow_nan=False),
    st.text(),
    st.binary(),
)
keys = st.one_of(st.integers(), st.text(), st.binary(), st.tuples(st.integers(), st.text()))
payloads = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.tuples(children, children),
        st.dictionaries(keys, children, max_size=4),
    ),
    max_leaves=12,
)


@given(payloads)
@settings(max_examples=300, deadline=None)
def test_python_payloads_roundtrip_with_types(obj):
    assert same(obj, roundtrip(obj))


array_dtypes = st.one_of(
    hnp.integer_dtypes(endianness="="),
    hnp.integer_dtypes(endianness=">"),
    hnp.floating_dtypes(endianness="?"),
    hnp.complex_number_dtypes(endianness="<"),
    hnp.boolean_dtypes(),
    hnp.byte_string_dtypes(max_len=4),
    hnp.unicode_string_dtypes(max_len=4),
    hnp.datetime64_dtypes(),
)


@given(
    hnp.arrays(array_dtypes, hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4)),
    st.sampled_from(["C", "F", "slice"]),
)
@settings(max_examples=300, deadline=None)
def test_arrays_roundtrip_any_dtype_shape_layout(arr, layout):
    if layout == "F":
        arr = np.asfortranarray(arr)
    elif layout == "slice" and arr.ndim:
        arr = arr[::2]
    got = roundtrip(arr)
    assert type(got) is np.ndarray
    assert got.dtype == arr.dtype and got.shape == arr.shape
    assert got.tobytes() == arr.tobytes()  # bit-exact, NaN and NaT included


def test_contiguous_arrays_are_not_copied_on_encode():
    arr = np.arange(1000, dtype=np.float64)
    _, buffers = encode({"a": arr})
    assert len(buffers) == 1
    assert np.shares_memory(np.frombuffer(buffers[0], dtype=np.uint8), arr)


def test_fortran_array_is_sent_without_copy_and_keeps_layout():
    arr = np.asfortranarray(np.arange(12.0).reshape(3, 4))
    _, buffers = encode(arr)
    assert np.shares_memory(np.frombuffer(buffers[0], dtype=np.uint8), arr)
    got = roundtrip(arr)
    assert got.flags.f_contiguous and np.array_equal(got, arr)


def test_received_arrays_are_writable_views_of_the_buffers():
    header, buffers = encode(np.arange(4))
    owned = copy_buffers(buffers)
    got = decode(header, owned)
    got[0] = 99
    assert got.flags.writeable
    assert np.frombuffer(owned[0], dtype=got.dtype)[0] == 99


def test_structured_dtype_and_scalars():
    arr = np.zeros(3, dtype=[("x", "<i4"), ("y", ">f8", (2,))])
    arr["x"] = [1, 2, 3]
    got = roundtrip(arr)
    assert got.dtype == arr.dtype and np.array_equal(got, arr)
    for scalar in [np.float16(1.5), np.int64(-3), np.bool_(True), np.complex64(1j), np.str_("s")]:
        out = roundtrip(scalar)
        assert type(out) is type(scalar) and out == scalar


def test_sets_bigints_and_nesting():
    obj = {"s": {1, 2}, "f": frozenset({"a"}), "big": 2**100, "neg": -(2**65), "t": ((),)}
    assert same(obj, roundtrip(obj))
    assert roundtrip(obj)["s"] == {1, 2}


class Custom:
    pass


@pytest.mark.parametrize(
    "bad, name",
    [
        (Custom(), "Custom"),
        ([1, {"k": object()}], "builtins.object"),
        (np.array([object()]), "dtype object"),
        (lambda: 1, "function"),
    ],
)
def test_unsupported_payload_raises_typeerror_naming_the_type(bad, name):
    with pytest.raises(PayloadTypeError, match=name) as info:
        encode(bad)
    assert isinstance(info.value, TypeError)
    assert "pickle" in str(info.value)


def test_pickle_only_when_allowed_on_both_sides():
    obj = [Custom.__name__, 3j, np.array([{"a": 1}], dtype=object)]
    got = roundtrip(obj, allow_pickle=True)
    assert got[2][0] == {"a": 1}
    header, buffers = encode(np.array([1, "x"], dtype=object), allow_pickle=True)
    with pytest.raises(PayloadTypeError, match="pickle is not enabled"):
        decode(header, buffers)


def test_subclasses_are_not_silently_converted():
    class MyInt(int):
        pass

    with pytest.raises(PayloadTypeError, match="MyInt"):
        encode(MyInt(3))


@given(
    st.one_of(
        scalars,
        st.integers(min_value=-(1 << 70), max_value=1 << 70),
        hnp.arrays(array_dtypes, hnp.array_shapes(min_dims=0, max_dims=3, max_side=4)),
        hnp.arrays(array_dtypes, hnp.array_shapes(min_dims=2, max_dims=2)).map(np.asfortranarray),
    )
)
@settings(max_examples=300, deadline=None)
def test_fast_path_writes_the_same_bytes_as_the_generic_encoder(obj):
    generic = _encode_generic(obj, False)
    fast = _encode_fast(obj)
    if fast is not None:
        assert fast[0] == generic[0]
        assert [bytes(b) for b in fast[1]] == [bytes(b) for b in generic[1]]
    assert encode(obj)[0] == generic[0]


def test_fast_path_covers_the_common_payloads_and_declines_the_rest():
    assert _encode_fast(np.arange(4.0)) is not None
    assert _encode_fast(3) is not None and _encode_fast(b"x") is not None
    assert _encode_fast(1 << 70) is None  # big int: extension type
    assert _encode_fast(np.zeros(2, dtype=[("a", "i4")])) is None  # structured
    assert _encode_fast(np.array([None], dtype=object)) is None  # rejected by the generic path
    with pytest.raises(PayloadTypeError, match="holds Python objects"):
        encode(np.array([None], dtype=object))


def test_buffers_are_freed_without_the_cyclic_garbage_collector():
    # A large received array must go as soon as the last reference to it does,
    # not at the next run of the cyclic collector.
    gc.disable()
    try:
        sent = np.arange(1000, dtype=np.float64)
        sent_ref = weakref.ref(sent)
        header, buffers = encode({"x": sent, "t": (1, 2)})
        del sent, buffers
        assert sent_ref() is None

        received = np.zeros(8000, dtype=np.uint8)  # as a channel allocates it
        received.view(np.float64)[:] = np.arange(1000)
        received_ref = weakref.ref(received)
        out = decode(header, [received])
        del received
        assert received_ref() is not None  # the decoded array is a view of it
        assert out["x"][999] == 999.0 and out["t"] == (1, 2)
        del out
        assert received_ref() is None
    finally:
        gc.enable()
