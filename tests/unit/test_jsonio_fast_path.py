"""``jsonio.loads`` parses with orjson first: its answers and refusals are the standard
library's (the loader before the fast path), document by document."""

from __future__ import annotations

import json
import math
import random
from typing import Any

import pytest

from gateway.domain import jsonio

_REFERENCE = json.JSONDecoder(
    parse_constant=jsonio._refuse_constant, parse_float=jsonio._finite_float
)


def reference(data: bytes | str) -> Any:
    """The loader as it was before orjson: the standard library's decoder only."""
    text = data.decode(json.detect_encoding(data), "strict") if isinstance(data, bytes) else data
    jsonio._check_depth(text, jsonio.MAX_JSON_DEPTH)
    return _REFERENCE.decode(text)


def outcome(load: Any, data: bytes | str) -> tuple[str, str]:
    try:
        value = load(data)
    except jsonio.JsonRejected:
        return ("rejected", "")
    except ValueError:
        return ("malformed", "")
    return ("ok", _exact(value))


def _exact(value: Any) -> str:
    """A rendering that tells 1 from 1.0, -0.0 from 0.0 and a float from a long integer."""
    if isinstance(value, float):
        return "float:" + value.hex()
    if isinstance(value, bool) or value is None:
        return repr(value)
    if isinstance(value, int):
        return f"int:{value}"
    if isinstance(value, str):
        return "str:" + ascii(value)
    if isinstance(value, list):
        return "[" + ",".join(_exact(v) for v in value) + "]"
    return "{" + ",".join(f"{k!a}:{_exact(v)}" for k, v in value.items()) + "}"


EDGES: list[bytes | str] = [
    b"1e-400",
    b"-1e-400",
    b"4.9e-324",
    b"2.2250738585072014e-308",
    b"1.7976931348623157e308",
    b"1.7976931348623159e308",
    b"[1e309]",
    b"NaN",
    b"-Infinity",
    b"[0.1, 0.2, 0.30000000000000004]",
    b"[-0.0, -0, 0e0, 1E+2, 1.5e-3]",
    b"18446744073709551615",
    b"18446744073709551616",
    b"-9223372036854775808",
    b"-9223372036854775809",
    b"123456789012345678901234567890",
    b'{"n": 0.1234567890123456789}',
    b'{"a": 1, "a": 2}',
    b'"\\u0000"',
    b'"a\x00b"',
    b'"\\ud83d\\ude00"',
    b'"\\ud800"',
    b'"\t"',
    b"\xff",
    b"[1,]",
    b'{"a":1,}',
    b"[01]",
    b"[.5]",
    b"[1.]",
    b"tru",
    b" ",
    b"",
    b"[1] x",
    b"\xef\xbb\xbf[1]",
    '{"k": "\u00e9"}'.encode("utf-16"),
    '{"k": "\u00e9"}'.encode("utf-32"),
    b"[" * 64 + b"]" * 64,
    b"[" * 65 + b"]" * 65,
    ("[" + ",".join(['{"x": [1]}'] * 100) + "]").encode(),
    '["\ud800"]',
    "[1, 2.5]",
]


@pytest.mark.parametrize("data", EDGES, ids=lambda d: ascii(d)[:40])
def test_an_edge_case_document_gets_the_standard_librarys_answer(data: bytes | str) -> None:
    assert outcome(jsonio.loads, data) == outcome(reference, data)


def _random_value(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randrange(8 if depth < 4 else 5)
    if kind == 0:
        return rng.choice([None, True, False])
    if kind == 1:
        return rng.randrange(-(2**70), 2**70) >> rng.randrange(70)
    if kind == 2:
        return rng.uniform(-1, 1) * 10.0 ** rng.randrange(-320, 308)
    if kind == 3:
        return "".join(
            chr(rng.choice([rng.randrange(32, 127), rng.randrange(0x80, 0x3000)]))
            for _ in range(rng.randrange(12))
        )
    if kind == 4:
        return rng.choice(["", "\u2028", "\\", '"', "\U0001f600"])
    if kind in (5, 6):
        return [_random_value(rng, depth + 1) for _ in range(rng.randrange(5))]
    return {f"k{rng.randrange(6)}": _random_value(rng, depth + 1) for _ in range(rng.randrange(5))}


def _number_text(rng: random.Random) -> str:
    digits = "".join(rng.choice("0123456789") for _ in range(rng.randrange(1, 22)))
    text = rng.choice(["", "-"]) + (digits.lstrip("0") or "0")
    if rng.random() < 0.5:
        text += "." + "".join(rng.choice("0123456789") for _ in range(rng.randrange(1, 20)))
    if rng.random() < 0.4:
        text += rng.choice("eE") + rng.choice(["", "+", "-"]) + str(rng.randrange(400))
    return text


def test_random_documents_and_numbers_get_the_standard_librarys_answers() -> None:
    rng = random.Random(17)
    for _ in range(3000):
        value = _random_value(rng)
        if isinstance(value, float) and not math.isfinite(value):
            continue
        text = json.dumps(value, ensure_ascii=rng.random() < 0.5)
        for data in (text, text.encode()):
            assert outcome(jsonio.loads, data) == outcome(reference, data), data
    for _ in range(3000):
        data = f'{{"n": {_number_text(rng)}}}'.encode()
        assert outcome(jsonio.loads, data) == outcome(reference, data), data
