"""Claim rules on hand-made numbers: a verdict is refused when its baseline collapsed below the pre-trained model;
a forgetting claim over swept learning rates compares the rows at the target accuracy both reach; the rows that
diagnose one claim run only when named."""

import pytest

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


HFT = "hft<full forgetting"


def _sweep(**paths):
    """An --lr-sweep record: per row, (lr, target, retention) points, std 0.01."""
    return {"rows": {name: {"per_lr": {f"{lr:.0e}": {"learning_rate": lr, "target_mean": t, "retention_mean": r,
                                                     "retention_std": 0.01} for lr, t, r in points}}
                     for name, points in paths.items()}}


def test_retention_at_interpolates_between_learning_rates_and_keeps_the_best():
    path = [[1e-4, 0.50, 0.80, 0.01], [3e-4, 0.90, 0.60, 0.02], [1e-3, 0.95, 0.30, 0.03]]
    assert claims.retention_at(path, 0.70) == (0.80 + (0.70 - 0.50) / 0.40 * (0.60 - 0.80), 0.02)
    assert claims.retention_at(path, 0.92)[0] == pytest.approx(0.48)  # between 3e-4 and 1e-3
    assert claims.retention_at(path, 0.30) == (0.80, 0.01)  # every point reaches it: the most retention
    assert claims.retention_at(path, 0.99) is None


def test_a_swept_forgetting_claim_compares_at_the_accuracy_both_reach():
    # At each row's best lr, hft (0.95 target, 0.60 retention) keeps more than full (0.99 target, 0.40): the
    # chosen-lr rule says reproduced. Matched at 0.95, full at its lower lr keeps 0.70: not reproduced.
    summary = {"hft": _row(0.95, 0.60), "full": _row(0.99, 0.40)}
    plain = next(v for v in claims.verdicts(summary, {}, {"target"}) if v["claim"] == HFT)
    assert plain["verdict"] == "reproduced" and "matched" not in plain["detail"]
    sweep = _sweep(hft=[(3e-4, 0.70, 0.75), (1e-3, 0.95, 0.60)], full=[(1e-4, 0.95, 0.70), (3e-4, 0.99, 0.40)])
    matched = next(v for v in claims.verdicts(summary, {}, {"target"}, lr_sweep=sweep) if v["claim"] == HFT)
    assert matched["verdict"] == "NOT reproduced"
    assert "at matched target accuracy 0.950" in matched["detail"] and "Δ -0.100" in matched["detail"]
    sweep["rows"]["full"]["per_lr"]["1e-04"]["retention_mean"] = 0.55  # now hft keeps more at 0.95
    matched = next(v for v in claims.verdicts(summary, {}, {"target"}, lr_sweep=sweep) if v["claim"] == HFT)
    assert matched["verdict"] == "reproduced" and "Δ +0.050" in matched["detail"]
    one_lr = _sweep(hft=[(1e-3, 0.95, 0.60)], full=[(1e-4, 0.95, 0.70), (3e-4, 0.99, 0.40)])
    fallback = next(v for v in claims.verdicts(summary, {}, {"target"}, lr_sweep=one_lr) if v["claim"] == HFT)
    assert fallback["verdict"] == "reproduced"  # a row trained at one lr has no path: the chosen-lr rule


def test_rows_on_request_run_only_when_named():
    from benchmarks import methods

    default = [s.name for s in methods.select(None, "quality")]
    assert "masked_thought" in default and "full" in default
    assert "masked_thought-p04" not in default and "lora-r1" not in default  # diagnosis rows stay out
    named = [s.name for s in methods.select("masked_thought-p04,lora-r1", "quality", baselines="")]
    assert named == ["masked_thought-p04", "lora-r1"]  # named: they run, and no baseline is added
    p04 = methods.BY_NAME["masked_thought-p04"]
    assert p04.options == {"masked_thought_ratio": 0.4} and methods.unavailable_reason(p04) is None
