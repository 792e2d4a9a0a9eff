"""The cost model on its own: fitting, calibration, Lambda's CPU share, the prediction and the budget."""

from __future__ import annotations

import random

import pytest

from fractal_pipeline.cost import BUILT_IN, RENDER_VERSION, Coefficients, CostModel, Prices, Sample, calibrated, fit
from fractal_pipeline.cost.model import MIN_FIT_SAMPLES, MIN_SCALE_SAMPLES, predict
from fractal_pipeline.fractals import CORE_VERSION, FractalSpec
from fractal_pipeline.fractals.png import PNG_ENCODER

TRUE = Coefficients(fixed_ms=2.0, segment_us=0.5, mpixel_ms=9.0, basis="truth")


def samples(count: int, coefficients: Coefficients = TRUE, noise: float = 0.0, seed: int = 0) -> list[Sample]:
    rng = random.Random(seed)
    made = []
    for _ in range(count):
        segments, size = rng.randrange(100, 500_000), rng.choice((128, 256, 512, 1024, 2048))
        ms = coefficients.spec_ms(segments, size * size) * (1 + rng.uniform(-noise, noise))
        made.append(Sample(segments, size * size, ms))
    return made


def test_the_render_version_names_the_core_and_the_encoder() -> None:
    assert f"core {CORE_VERSION}, {PNG_ENCODER}" == RENDER_VERSION


def test_fit_recovers_the_coefficients_of_exact_timings() -> None:
    fitted = fit(samples(50), "test")
    assert fitted.fixed_ms == pytest.approx(2.0, rel=1e-6)
    assert fitted.segment_us == pytest.approx(0.5, rel=1e-6)
    assert fitted.mpixel_ms == pytest.approx(9.0, rel=1e-6)


def test_fit_never_gives_a_negative_coefficient() -> None:
    # timings that fall with the pixel count would want a negative pixel term
    made = [Sample(1000 * i, 10**6 * (10 - i), 5.0 + i) for i in range(10)]
    fitted = fit(made, "test")
    assert min(fitted.fixed_ms, fitted.segment_us, fitted.mpixel_ms) >= 0


def test_calibration_uses_history_only_when_there_is_enough() -> None:
    assert calibrated(samples(MIN_SCALE_SAMPLES - 1), BUILT_IN, "here") is BUILT_IN
    slower = Coefficients(BUILT_IN.fixed_ms * 2, BUILT_IN.segment_us * 2, BUILT_IN.mpixel_ms * 2, "x")
    scaled = calibrated(samples(MIN_SCALE_SAMPLES, slower), BUILT_IN, "here")
    assert scaled.segment_us == pytest.approx(BUILT_IN.segment_us * 2)
    assert "scaled to 5 partitions recorded here" in scaled.basis
    fitted = calibrated(samples(MIN_FIT_SAMPLES), BUILT_IN, "here")
    assert fitted.mpixel_ms == pytest.approx(9.0, rel=1e-6)
    assert fitted.basis.startswith(f"fitted on {MIN_FIT_SAMPLES} partitions recorded here")


def test_lambda_uses_its_own_timings_when_there_are_some() -> None:
    local = samples(40)
    remote = [Sample(s.segments, s.pixels, s.ms * 3, on_lambda=True) for s in samples(40, seed=1)]
    model = CostModel.from_samples(local + remote)
    on_lambda = model.lambda_coefficients(Prices())
    assert on_lambda.segment_us == pytest.approx(1.5, rel=1e-6)
    assert "on Lambda" in on_lambda.basis


def test_without_lambda_timings_a_smaller_function_is_slower_in_proportion() -> None:
    model = CostModel()
    full = model.lambda_coefficients(Prices())
    half = model.lambda_coefficients(Prices(lambda_memory_mb=1769 // 2))
    assert full.segment_us == BUILT_IN.segment_us
    assert half.segment_us == pytest.approx(BUILT_IN.segment_us * 1769 / 884)
    assert "no Lambda timings recorded" in half.basis and "884 MB" in half.basis


def test_prediction_sums_the_specs_and_prices_them() -> None:
    specs = [FractalSpec("dragon", 12), FractalSpec("koch_snowflake", 4, size=512)]
    prices = Prices()
    prediction = predict(specs, CostModel(local=TRUE), prices, workers=2)
    expected = [TRUE.spec_ms(s.segments, s.size**2) / 1000 for s in specs]
    assert prediction.predicted_render_s == pytest.approx(sum(expected))
    assert prediction.segments == sum(s.segments for s in specs)
    assert prediction.pixels == 1024**2 + 512**2
    assert prediction.wall_s["local"] == pytest.approx(max(sum(expected) / 2, max(expected)))
    lambda_cost = sum(expected) * prices.lambda_memory_mb / 1024 * prices.lambda_gb_s + prices.lambda_request
    assert prediction.cost_usd["lambda"] == pytest.approx(lambda_cost)
    fargate_rate = prices.fargate_vcpu * prices.fargate_vcpu_h + prices.fargate_gb * prices.fargate_gb_h
    assert prediction.cost_usd["fargate"] == pytest.approx(prediction.wall_s["fargate"] / 3600 * fargate_rate)
    data = prediction.to_json()
    assert set(data["predicted_wall_s"]) == {"local", "lambda", "fargate"}
    assert set(data["cost_usd"]) == {"lambda", "fargate"}


def test_nothing_to_render_costs_nothing() -> None:
    prediction = predict([], CostModel(), Prices(), workers=4)
    assert prediction.predicted_render_s == 0 and prediction.cost_usd["lambda"] == 0
    assert prediction.over_budget(0.001) is None


def test_over_the_budget_is_one_line_naming_the_variable() -> None:
    prediction = predict([FractalSpec("dragon", 16)], CostModel(), Prices(), workers=1)
    assert prediction.over_budget(prediction.predicted_render_s) is None
    message = prediction.over_budget(prediction.predicted_render_s / 2)
    assert message is not None and "\n" not in message
    assert message.startswith("FRACTALS_MAX_BATCH_SECONDS:") and "raise FRACTALS_MAX_BATCH_SECONDS" in message


def test_prices_can_be_replaced_by_name() -> None:
    prices = Prices().with_values({"lambda_gb_s": 0.00002, "lambda_memory_mb": 3008})
    assert prices.lambda_gb_s == 0.00002 and prices.lambda_memory_mb == 3008
    with pytest.raises(ValueError, match="'lambda_gbs' is not a price"):
        Prices().with_values({"lambda_gbs": 1.0})


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("FRACTALS_MAX_BATCH_SECONDS", "lots", "FRACTALS_MAX_BATCH_SECONDS: 'lots' is not a positive number"),
        ("FRACTALS_MAX_BATCH_SECONDS", "-5", "FRACTALS_MAX_BATCH_SECONDS: '-5' is not a positive number"),
        ("FRACTALS_PRICES", "lambda_gb_s", "FRACTALS_PRICES: 'lambda_gb_s' is not name=positive number"),
        ("FRACTALS_PRICES", "fargate=1", "FRACTALS_PRICES: 'fargate' is not a price"),
    ],
)
def test_bad_cost_settings_are_one_line_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, expected: str
) -> None:
    from fractal_pipeline.defs.settings import cost_settings_from_env

    monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match="^" + expected.replace("(", r"\(")) as raised:
        cost_settings_from_env()
    assert "\n" not in str(raised.value)


def test_cost_settings_default_and_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from fractal_pipeline.defs.settings import cost_settings_from_env

    monkeypatch.delenv("FRACTALS_MAX_BATCH_SECONDS", raising=False)
    monkeypatch.delenv("FRACTALS_PRICES", raising=False)
    assert cost_settings_from_env().max_batch_s == 3600
    monkeypatch.setenv("FRACTALS_MAX_BATCH_SECONDS", "12.5")
    monkeypatch.setenv("FRACTALS_PRICES", "fargate_vcpu_h=0.05, lambda_memory_mb=3008")
    settings = cost_settings_from_env("lambda")
    assert (settings.max_batch_s, settings.prices.fargate_vcpu_h, settings.backend) == (12.5, 0.05, "lambda")
