"""A claim's verdict is refused when its baseline collapsed below the pre-trained model (hand-made numbers)."""

from benchmarks.quality import claims

S3FT = "s3ft<sft forgetting"


def _row(target, retention):
    return {"target_mean": target, "target_std": 0.0, "retention_mean": retention, "retention_std": 0.0}


def _verdict(sft_target):
    rows = {"pretrained": _row(0.350, 0.64), "sft": _row(sft_target, 0.41), "s3ft": _row(0.36, 0.52)}
    out = claims.verdicts({}, {}, scenarios={"self-generated"},
                          scenario_results={"self-generated": {"rows": rows}})
    return next(v for v in out if v["claim"] == S3FT)


def test_collapsed_baseline_is_not_comparable():
    v = _verdict(0.003)
    assert v["verdict"] == ("not comparable: the baseline fell below the pre-trained model "
                            "(target: sft 0.003 < pretrained 0.350)")
    assert "retention s3ft 0.520" in v["detail"]  # the numbers are still shown


def test_healthy_baseline_is_judged():
    assert _verdict(0.38)["verdict"] == "reproduced"
    # Not reproduced stays "NOT reproduced" even with a collapsed baseline: the method lost anyway.
    rows = {"pretrained": _row(0.35, 0.64), "sft": _row(0.003, 0.60), "s3ft": _row(0.36, 0.52)}
    out = claims.verdicts({}, {}, {"self-generated"}, {"self-generated": {"rows": rows}})
    assert next(v for v in out if v["claim"] == S3FT)["verdict"] == "NOT reproduced"


def test_without_a_pretrained_row_the_claim_is_judged_as_before():
    rows = {"sft": _row(0.003, 0.41), "s3ft": _row(0.36, 0.52)}
    out = claims.verdicts({}, {}, {"self-generated"}, {"self-generated": {"rows": rows}})
    assert next(v for v in out if v["claim"] == S3FT)["verdict"] == "reproduced"
