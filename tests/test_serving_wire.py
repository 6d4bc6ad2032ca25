"""The request bodies of ``fastgate serve``: JSON parsed by orjson (fastgate[serve]) gives
exactly what the standard json module gives, arrays bit for bit and errors word for word.

Both parsers run on the same bodies in this process (``wire.orjson`` set to None selects the
json module, as on a machine without orjson); the HTTP tests (test_serve_http.py) run the
server with orjson, as CI installs it.
"""

from __future__ import annotations

import json
import types

import numpy as np
import pytest

from fastgate.errors import DTypeError, InputError
from fastgate.serving import wire


@pytest.fixture
def parsers(monkeypatch):
    """``decode(body)`` with orjson and with the json module."""
    assert wire.orjson is not None, "orjson >= 3.9.15 is in the test extra"

    def with_json(body):
        monkeypatch.setattr(wire, "orjson", None)
        try:
            return wire.decode_instances(body)
        finally:
            monkeypatch.undo()

    return wire.decode_instances, with_json


def bodies(rng):
    """JSON bodies as clients write them: float32 data through tolist() (17 digits), short
    decimals, exponents, integers (token ids), booleans, several sequences of mixed length."""
    x = rng.standard_normal((7, 3)).astype(np.float32)
    yield json.dumps({"instances": [x.tolist()]})
    yield json.dumps({"instances": [np.round(x.astype(np.float64), 3).tolist(),
                                    x[:2].tolist()]})
    yield json.dumps({"instances": [(x * 1e-30).tolist(), (x * 1e30).tolist()]})
    yield json.dumps({"instances": [rng.integers(0, 50, 9).tolist()]})
    yield '{ "instances" : [ [ [1, -0.0, 2.5e-3, 1E2, true, false] ] ] , "signature_name": "x"}'
    yield json.dumps({"instances": [[[float(v) for v in rng.standard_normal(4) * 10.0 ** e]
                                     for e in range(-40, 40, 7)]]})


def test_orjson_and_json_decode_to_the_same_arrays(parsers, rng):
    fast, slow = parsers
    for body in bodies(rng):
        got, want = fast(body.encode()), slow(body.encode())
        assert len(got) == len(want)
        for a, b in zip(got, want):
            assert a.dtype == b.dtype and a.shape == b.shape
            np.testing.assert_array_equal(a, b)


HOSTILE_JSON = [
    b'{"instances": [[[1, 2', b"[1, 2, 3]", b'{"inputs": []}', b'{"instances": []}',
    b'{"instances": [[[NaN, 0]]]}', b'{"instances": [[[Infinity, 0]]]}',
    b'{"instances": [[[-Infinity, 0]]]}', b'{"instances": [[[1e999, 0]]]}',
    b'{"instances": [[[1e300, 0]]]}', b'{"instances": [[[1, 2], [1]]]}',
    b'{"instances": [[["a", "b"]]]}', b'{"instances": [[[null, 1]]]}',
    b'{"instances": [[[1, 2]]]} trailing', b'\xff\xfe{', b'{"instances": [[[1, 2,]]]}',
    b'{"instances": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    b'{"instances": [' + b'{"a": ' * 5000 + b"1" + b"}" * 5000 + b"]}",
]


@pytest.mark.parametrize("body", HOSTILE_JSON, ids=lambda b: repr(b[:24]))
def test_orjson_and_json_refuse_the_same_bodies_with_the_same_message(parsers, body):
    fast, slow = parsers
    with pytest.raises((InputError, DTypeError)) as expected:
        slow(body)
    with pytest.raises(type(expected.value)) as got:
        fast(body)
    assert str(got.value) == str(expected.value)


def test_a_body_nested_millions_deep_is_refused_not_a_crash():
    depth = 2_000_000       # orjson before 3.9.15 overflowed its stack here (CVE-2024-27454)
    with pytest.raises(InputError, match="not valid JSON"):
        wire.decode_instances(b"[" * depth + b"]" * depth)


@pytest.mark.parametrize("version, safe", [("3.8.3", False), ("3.9.14", False),
                                           ("3.9.15", True), ("3.10.0", True),
                                           ("3.13.0", True), ("unknown", False)])
def test_orjson_is_used_only_where_it_limits_nesting(version, safe):
    assert wire._safe_orjson(types.SimpleNamespace(__version__=version)) is safe
