"""The model catalog: longest-prefix profiles, settings fitted to the model, prices (behaviour 8)."""

from __future__ import annotations

import pytest

from modelwire.providers.catalog import (
    Catalog,
    ModelProfile,
    Price,
    adapt,
    cost,
    nearest_effort,
    unsupported_settings,
)
from modelwire.types import Request, Usage
from modelwire.wires import WIRES


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return Catalog()


def test_longest_prefix_wins(catalog: Catalog) -> None:
    assert catalog.profile("gpt-5.1-codex-mini-2025-11-13").apis == ("responses",)
    assert catalog.profile("gpt-5.1-codex-mini").price == catalog.profile("gpt-5.1-codex-mini-x").price
    assert catalog.profile("gpt-5.1-2025-11-13").price == catalog.profile("gpt-5.1").price
    assert catalog.profile("gpt-5.1").apis == ("responses", "chat")
    assert catalog.profile("openai/gpt-4.1-mini").id == "openai/gpt-4.1-mini"
    assert catalog.profile("gpt-4.1-mini").context_window == catalog.profile("gpt-4.1").context_window


def test_families_are_present(catalog: Catalog) -> None:
    for name in (
        "gpt-5",
        "gpt-5-mini",
        "gpt-5-nano",
        "gpt-5-pro",
        "gpt-5-codex",
        "gpt-5.1",
        "gpt-5.5",
        "gpt-4.1",
        "gpt-4o",
        "gpt-4o-mini",
        "o3",
        "o4-mini",
        "text-embedding-3-small",
    ):
        profile = catalog.profile(name)
        assert profile.known and profile.price is not None, name


def test_pro_and_codex_models_are_responses_only(catalog: Catalog) -> None:
    for name in ("gpt-5-pro", "gpt-5.1-codex", "o3-pro", "gpt-5.5-pro"):
        assert catalog.profile(name).apis == ("responses",), name


def test_unknown_model_gets_a_permissive_profile(catalog: Catalog) -> None:
    profile = catalog.profile("my-local-llama")
    assert not profile.known and profile.sampling and profile.efforts is None and profile.price is None
    req = Request(model="my-local-llama", temperature=0.3, reasoning_effort="high")
    assert adapt(req, profile) == []
    assert req.temperature == 0.3 and req.reasoning_effort == "high"


def test_reasoning_models_drop_sampling_and_fit_effort(catalog: Catalog) -> None:
    req = Request(model="gpt-5", temperature=0.2, top_p=0.9, reasoning_effort="none")
    assert adapt(req, catalog.profile("gpt-5")) == ["temperature", "top_p"]
    assert req.temperature is None and req.top_p is None
    assert req.reasoning_effort == "minimal"  # gpt-5 has no "none"
    req = Request(model="gpt-5.1", reasoning_effort="none")
    adapt(req, catalog.profile("gpt-5.1"))
    assert req.reasoning_effort == "none"
    req = Request(model="gpt-5.1", reasoning_effort="xhigh")
    adapt(req, catalog.profile("gpt-5.1"))
    assert req.reasoning_effort == "high"


def test_nearest_effort() -> None:
    assert nearest_effort("minimal", ("none", "low", "medium", "high")) == "low"
    assert nearest_effort("none", ("low", "medium", "high")) == "low"
    assert nearest_effort("max", ("low", "high", "xhigh")) == "xhigh"
    assert nearest_effort("bogus", ("low",)) is None


def test_output_cap_clamps_to_the_model(catalog: Catalog) -> None:
    req = Request(model="gpt-4o", max_output_tokens=1_000_000)
    adapt(req, catalog.profile("gpt-4o"))
    assert req.max_output_tokens == catalog.profile("gpt-4o").max_output


def test_cost_prices_cached_and_reasoning_tokens() -> None:
    profile = ModelProfile(id="m", price=Price(input=2.0, output=8.0, cached_input=0.5))
    usage = Usage(
        input_tokens=1_000_000, cached_input_tokens=400_000, output_tokens=500_000, reasoning_tokens=300_000
    )
    # 600k fresh at $2, 400k cached at $0.50, 500k output (reasoning inside it) at $8
    assert cost(profile, usage) == pytest.approx(1.2 + 0.2 + 4.0)
    assert cost(ModelProfile(id="free"), usage) is None


def test_long_context_and_cache_write_pricing(catalog: Catalog) -> None:
    profile = catalog.profile("gpt-5.6-sol")
    price = profile.price
    assert price is not None and price.long_context is not None and price.cache_write is not None
    small = Usage(input_tokens=100_000, output_tokens=1000)
    big = Usage(input_tokens=300_000, output_tokens=1000)
    expected_big = (
        300_000 * price.input * price.long_context.input + 1000 * price.output * price.long_context.output
    )
    assert cost(profile, big) == pytest.approx(expected_big / 1e6)
    assert cost(profile, small) == pytest.approx((100_000 * price.input + 1000 * price.output) / 1e6)
    written = Usage(input_tokens=10_000, cache_write_tokens=10_000)
    assert cost(profile, written) == pytest.approx(10_000 * price.cache_write / 1e6)


def test_runtime_context_cap_is_separate_from_the_native_window() -> None:
    capped = Catalog(context_cap=50_000)
    assert capped.profile("gpt-4.1").context_window == 1_047_576
    assert capped.context_window("gpt-4.1") == 50_000
    assert Catalog().context_window("gpt-4.1") == 1_047_576


def test_discovered_models_are_listed() -> None:
    catalog = Catalog()
    catalog.discover(["gpt-5.1", "my-finetune"])
    assert catalog.models() == ["gpt-5.1", "my-finetune"]


def test_unsupported_settings_follow_the_wire() -> None:
    """A seed has no field on the Responses or Messages wires; another dialect's sampling extras
    are reported only when they cross to a different wire."""
    profile = ModelProfile(id="m")
    seeded = Request(model="m", seed=7)
    assert unsupported_settings(seeded, profile, WIRES["openai_responses"]) == ["seed"]
    assert unsupported_settings(seeded, profile, WIRES["anthropic_messages"]) == ["seed"]
    assert unsupported_settings(seeded, profile, WIRES["openai_chat"]) == []
    foreign = Request(model="m", dialect="anthropic_messages", extra={"top_k": 5})
    assert unsupported_settings(foreign, profile, WIRES["openai_chat"]) == ["top_k"]
    assert unsupported_settings(foreign, profile, WIRES["anthropic_messages"]) == []
