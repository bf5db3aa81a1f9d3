"""Loaded into schemathesis's interpreter by scripts/fuzz-api.sh (through PYTHONPATH).

CPython 3.11's ast module can raise SystemError("AST constructor recursion depth mismatch")
(python/cpython#106905) while hypothesis parses a lambda's source to describe it. The
description is only used for display and to narrow filters, and hypothesis already falls back
to "<unknown>" when it cannot find one; this makes that bug take the same fallback instead of
ending the fuzz with a runtime error of the fuzzer's own.
"""

try:
    from hypothesis.internal import lambda_sources
except ImportError:  # not schemathesis's interpreter
    lambda_sources = None

if lambda_sources is not None:
    _describe = lambda_sources._lambda_description

    def _lambda_description(f, *args, **kwargs):
        try:
            return _describe(f, *args, **kwargs)
        except SystemError as error:
            if "AST constructor recursion depth mismatch" not in str(error):
                raise
            return "lambda: <unknown>"

    lambda_sources._lambda_description = _lambda_description
