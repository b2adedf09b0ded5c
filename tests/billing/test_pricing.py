from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from billing.models import PriceUnit
from billing.pricing import PriceRates, PriceTable, cost_micros, price_table, uptime_cost_micros
from tests.billing.factories import price

T0 = datetime(2026, 3, 1, tzinfo=UTC)
H = timedelta(hours=1)


def rates(i: int, o: int, c: int | None = None) -> PriceRates:
    return PriceRates(PriceUnit.TOKENS, i, o, i if c is None else c)


def test_cost_is_integer_micro_dollars_rounded_half_up_once_per_request():
    # 1,000 prompt tokens at $0.15/M = 150 µ$, 333 completion at $0.60/M = 199.8 µ$ -> 350 µ$.
    assert cost_micros(rates(150_000, 600_000), 1_000, 333) == 350
    # Exactly half a micro-dollar rounds up; just under rounds down.
    assert cost_micros(rates(500_000, 0), 1, 0) == 1
    assert cost_micros(rates(499_999, 0), 1, 0) == 0


def test_cached_tokens_are_part_of_the_prompt_and_use_the_cached_rate():
    price_ = rates(1_000_000, 0, 250_000)
    # 800 uncached at $1/M + 200 cached at $0.25/M = 800 + 50.
    assert cost_micros(price_, 1_000, 0, 200) == 850
    with pytest.raises(ValueError, match="exceeds"):
        cost_micros(price_, 10, 0, 11)


@pytest.mark.parametrize("bad", [1.0, Decimal("1"), True, "3"])
def test_money_never_a_float_token_counts_must_be_ints(bad):
    with pytest.raises(TypeError):
        cost_micros(rates(1, 1), bad, 0)


def test_negative_counts_are_refused():
    with pytest.raises(ValueError, match="negative"):
        cost_micros(rates(1, 1), -1, 0)


def test_uptime_is_charged_by_the_second_per_gpu():
    gpu = PriceRates(PriceUnit.GPU_SECOND, 0, 0, 0, micros_per_unit_hour=2_500_000)
    # 90 s on 2 GPUs at $2.50 per GPU-hour = 125,000 µ$.
    assert uptime_cost_micros(gpu, 90, 2) == 125_000
    cpu = PriceRates(PriceUnit.REPLICA_SECOND, 0, 0, 0, micros_per_unit_hour=36_000)
    assert uptime_cost_micros(cpu, 100, 0) == 1_000
    # Token usage on an uptime-priced deployment costs nothing per token.
    assert cost_micros(gpu, 10_000, 10_000) == 0


@pytest.mark.django_db
def test_the_price_in_force_at_the_time_wins_and_org_prices_override_platform_prices(org):
    price(effective_from=T0, input_micros_per_million=100)
    price(effective_from=T0 + timedelta(days=10), input_micros_per_million=200)
    price(org=org, effective_from=T0 + timedelta(days=20), input_micros_per_million=50)
    table = price_table()
    before = table.get(org.pk, "tiny-llama", at=T0 - timedelta(seconds=1))
    assert before.input_micros_per_million == 500_000  # only the fallback existed
    assert table.get(org.pk, "tiny-llama", at=T0).input_micros_per_million == 100
    assert (
        table.get(org.pk, "tiny-llama", at=T0 + timedelta(days=10)).input_micros_per_million == 200
    )
    assert (
        table.get(org.pk, "tiny-llama", at=T0 + timedelta(days=21)).input_micros_per_million == 50
    )
    # Another org still pays the platform price.
    assert (
        table.get(org.pk + 999, "tiny-llama", at=T0 + timedelta(days=21)).input_micros_per_million
        == 200
    )


@pytest.mark.django_db
def test_unknown_models_fall_back_to_the_platform_fallback_price():
    # The migration's fallback: $0.50/M input, $1.50/M output.
    fallback = price_table()[(None, "some-unpriced-model")]
    assert (fallback.input_micros_per_million, fallback.output_micros_per_million) == (
        500_000,
        1_500_000,
    )


@pytest.mark.django_db
def test_a_deployment_billed_by_uptime_rates_its_requests_at_zero(org):
    import uuid

    deployment = uuid.uuid4()
    price(effective_from=T0)
    price(
        org=org,
        deployment_id=deployment,
        unit=PriceUnit.GPU_SECOND,
        micros_per_unit_hour=3_000_000,
        effective_from=T0,
    )
    table = price_table()
    at = T0 + timedelta(hours=1)
    assert table.get(org.pk, "tiny-llama", deployment_id=deployment, at=at).is_uptime
    assert not table.get(org.pk, "tiny-llama", deployment_id=uuid.uuid4(), at=at).is_uptime
    found = table.uptime_price(org.pk, "tiny-llama", deployment_id=deployment, at=at)
    assert found is not None and found.micros_per_unit_hour == 3_000_000


@pytest.mark.django_db
def test_uptime_is_cut_only_where_the_price_that_applies_changes(org):
    import uuid

    deployment = uuid.uuid4()
    own = {"org": org, "deployment_id": deployment, "unit": PriceUnit.GPU_SECOND}
    price(micros_per_unit_hour=1_000_000, effective_from=T0, **own)
    # The platform's price for the model starts inside, but the deployment's own price applies.
    price(unit=PriceUnit.GPU_SECOND, micros_per_unit_hour=9_000_000, effective_from=T0 + H / 4)
    later = price(micros_per_unit_hour=2_000_000, effective_from=T0 + H / 2, **own)
    table = price_table()
    parts = table.uptime_prices(
        org.pk, "tiny-llama", deployment_id=deployment, start=T0 - H, end=T0 + H
    )
    assert [(begin, end) for begin, end, _ in parts] == [
        (T0 - H, T0),
        (T0, T0 + H / 2),
        (T0 + H / 2, T0 + H),
    ]
    rates = [part[2] for part in parts]
    assert rates[0] is None  # before any uptime price: billed per token
    assert rates[1] is not None and rates[1].micros_per_unit_hour == 1_000_000
    assert rates[2] is not None and rates[2].price_id == later.pk


def test_an_empty_table_rates_nothing():
    assert PriceTable([]).get(1, "x").input_micros_per_million == 0
