"""The API's JSON parser: DRF's, plus a nesting limit.

Python's json module recurses once per level of nesting, so `[[[[…` a few thousand levels deep raises
RecursionError, which DRF's JSONParser does not catch (it catches ValueError only): the request was a 500. No
request of this API nests deeper than two levels, so anything deeper than MAX_JSON_DEPTH is refused as a 400
before the data reaches a serializer (whose own code, and json.dumps of the body for idempotency, recurse too).
"""

from rest_framework.exceptions import ParseError
from rest_framework.parsers import JSONParser

MAX_JSON_DEPTH = 32


class SafeJSONParser(JSONParser):
    def parse(self, stream, media_type=None, parser_context=None):
        try:
            data = super().parse(stream, media_type, parser_context)
        except RecursionError as error:
            raise _too_deep() from error
        if json_depth(data) > MAX_JSON_DEPTH:
            raise _too_deep()
        return data


def json_depth(data) -> int:
    """How deeply lists and objects nest in parsed JSON (a scalar is 0), counted without recursion."""
    deepest, pending = 0, [(data, 1)]
    while pending:
        value, depth = pending.pop()
        children = value.values() if isinstance(value, dict) else value if isinstance(value, list) else None
        if children is None:
            continue
        deepest = max(deepest, depth)
        if depth <= MAX_JSON_DEPTH:  # one level past the limit is enough to refuse; walk no further
            pending.extend((child, depth + 1) for child in children)
    return deepest


def _too_deep() -> ParseError:
    return ParseError(f"JSON parse error - the body is nested more than {MAX_JSON_DEPTH} levels deep.")
