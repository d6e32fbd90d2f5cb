"""S3FT's judges live in :mod:`ftplugins.eval.judges` (shared with the evaluation harnesses); re-exported here."""

from ftplugins.eval.judges import (  # noqa: F401
    BUILTIN,
    Judge,
    code_tests_pass,
    exact_match,
    extract_code,
    import_judge,
    judge_name,
    last_number,
    normalize,
    normalized_match,
    numeric_match,
    resolve_judge,
    run_code,
    with_example,
)
