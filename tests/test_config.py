"""The configuration contract (DESIGN.md) and model routing."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import yaml

from modelwire.errors import InvalidRequestError, NotFoundError
from modelwire.gateway.config import (
    ConfigError,
    UnsetVariable,
    expand_env,
    load_config,
    numbered_env,
    parse_config,
)
from modelwire.gateway.routing import Router, Target, parse_ref

DESIGN_EXAMPLE = """
server: {host: 127.0.0.1, port: 8000, workers: 1}
store: sqlite:///.modelwire/state.db
redis: null

backends:
  openai:
    type: openai
    api: responses
    base_url: https://api.openai.com/v1
    api_keys: ["${OPENAI_API_KEY}"]
    timeout: 600
    max_retries: 5
  local:
    type: openai-compatible
    base_url: http://127.0.0.1:11434/v1

models:
  - name: gpt-5.5
    route: [openai/gpt-5.5, local/qwen3]
  - name: fast
    route: openai/gpt-5.4-mini?reasoning_effort=low
  - match: "^claude-"
    route: openai/gpt-5.5

keys:
  - key: "${MODELWIRE_KEY}"
    name: dev
    models: ["*"]
    rpm: 600
"""


def test_the_design_example_loads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-env")
    monkeypatch.setenv("MODELWIRE_KEY", "mw-client")
    path = tmp_path / "modelwire.yaml"
    path.write_text(DESIGN_EXAMPLE)
    config = load_config(path)
    assert config.backends["openai"].keys() == ["sk-from-env"]
    backends = config.backends
    assert backends["openai"].wire == "openai_responses" and backends["local"].wire == "openai_chat"
    assert config.keys[0].key == "mw-client" and config.keys[0].rpm == 600
    router = Router(config)
    assert [t.ref for t in router.resolve("gpt-5.5").targets] == ["openai/gpt-5.5", "local/qwen3"]
    assert router.resolve("fast").targets[0].overrides() == {"reasoning_effort": "low"}
    assert router.resolve("claude-sonnet-4").targets[0].ref == "openai/gpt-5.5"


def test_no_file_means_one_openai_backend_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-env")
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    config = load_config(None)
    assert list(config.backends) == ["openai"] and config.default_backend == "openai"
    assert config.backends["openai"].type == "openai" and config.backends["openai"].keys() == ["sk-env"]
    assert config.store.startswith("sqlite:///")
    assert Router(config).resolve("gpt-5.1").targets == (Target(backend="openai", model="gpt-5.1"),)


def test_env_expansion() -> None:
    env = {"SET": "value", "EMPTY": ""}
    assert expand_env(
        "a=${SET} b=${EMPTY} c=${UNSET:-dflt} d=${EMPTY:-x} e=${SET:-no} f=${UNSET:-}", env
    ) == ("a=value b= c=dflt d=x e=value f=")
    with pytest.raises(UnsetVariable, match=r"\$\{UNSET\} is not set"):
        expand_env("b=${UNSET}", env)


def test_numbered_environment_keys_gather(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {"POOL": "k0", "POOL_1": "k1", "POOL_2": "k2", "POOL_4": "gap"}.items():
        monkeypatch.setenv(name, value)
    assert numbered_env("POOL") == ["k0", "k1", "k2"]
    config = parse_config({"backends": {"b": {"api_key": "k0", "api_keys": ["kx"], "api_keys_env": "POOL"}}})
    assert config.backends["b"].keys() == ["k0", "kx", "k1", "k2"]


@pytest.mark.parametrize(
    ("doc", "key", "problem"),
    [
        ({"models": [{"name": "x", "route": "nope/m"}]}, "models[0].route[0]", "unknown backend 'nope'"),
        (
            {"backends": {"a": {}}, "models": [{"name": "x", "route": "a/m?temperature=9"}]},
            "models[0].route[0]",
            "temperature='9': must be between 0 and 2",
        ),
        (
            {"backends": {"a": {}}, "models": [{"name": "x", "route": "a/m?bogus=1"}]},
            "models[0].route[0]",
            "unknown URI parameter 'bogus'",
        ),
        (
            {"backends": {"a": {}}, "models": [{"name": "x", "match": "y", "route": "a/m"}]},
            "models[0]",
            "exactly one of 'name' or 'match'",
        ),
        (
            {"backends": {"a": {}}, "models": [{"match": "(", "route": "a/m"}]},
            "models[0]",
            "regular expression",
        ),
        ({"backends": {"a": {"type": "weird"}}}, "backends.a.type", "'openai'"),
        ({"backends": {"a": {"timeout": -1}}}, "backends.a.timeout", "greater than 0"),
        ({"bogus": 1}, "bogus", "unknown key"),
        ({"store": "mysql://x"}, "store", "sqlite:/// or postgresql://"),
        ({"backends": {"a": {}}, "default_backend": "b"}, "default_backend", "unknown backend 'b'"),
        ({"keys": [{"key": "a", "name": "n"}, {"key": "b", "name": "n"}]}, "keys[1].name", "duplicate"),
    ],
)
def test_bad_config_names_file_key_and_problem(doc: dict[str, object], key: str, problem: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(doc, "conf.yaml")
    message = str(info.value)
    assert message.startswith("conf.yaml: ") and key in message and problem in message, message


def test_unreadable_and_invalid_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("backends: [unclosed")
    with pytest.raises(ConfigError, match=r"bad\.yaml: not valid YAML"):
        load_config(bad)


def test_parse_ref_forms() -> None:
    assert parse_ref("local/qwen3:8b") == Target(backend="local", model="qwen3:8b")
    assert parse_ref("local:qwen3") == Target(backend="local", model="qwen3")
    assert parse_ref("or/meta/llama-3?top_p=0.5") == Target(
        backend="or", model="meta/llama-3", params=(("top_p", 0.5),)
    )
    target = parse_ref("a/m?max_output_tokens=100&temperature=1&verbosity=low")
    assert target.overrides() == {"max_output_tokens": 100, "temperature": 1.0, "verbosity": "low"}
    assert isinstance(target.overrides()["max_output_tokens"], int)
    assert parse_ref("claude") == Target(backend="claude", model="")  # the client's model, filled in later
    for bad in ("", "/m", "a/", "a/m?max_output_tokens=0", "a/m?reasoning_effort=ultra"):
        with pytest.raises(ValueError):
            parse_ref(bad)


def test_the_readme_configuration_reference_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    """The README's annotated configuration parses as written (every setting it shows exists)."""
    for name in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "GEMINI_API_KEY"):
        monkeypatch.setenv(name, "sk-from-env")
    monkeypatch.setenv("MODELWIRE_KEY", "mw-client-key")
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    start = readme.index("backends:                    # name -> upstream")
    block = readme[start : readme.index("```", start)]
    config = parse_config(yaml.safe_load(block))
    assert {"openai", "codex", "claude", "gemini"} <= set(config.backends)
    route = Router(config).resolve("claude-sonnet-4-5")
    assert [t.ref for t in route.targets] == ["claude/claude-sonnet-4-5", "openai/gpt-5.5"]


def test_a_bare_backend_in_a_route_keeps_the_model_asked_for() -> None:
    """``route: [claude, openai/gpt-5.5]`` under a ``match`` rule: Anthropic with the client's own
    model name, then a fixed fallback; a bare name is never a direct ref for clients."""
    config = parse_config(
        {
            "backends": {"claude": {"type": "anthropic"}, "openai": {}},
            "models": [{"match": "^claude-", "route": ["claude?temperature=0.5", "openai/gpt-5.5"]}],
        }
    )
    router = Router(config)
    first, second = router.resolve("claude-opus-4-1").targets
    assert first.ref == "claude/claude-opus-4-1" and first.params == (("temperature", 0.5),)
    assert second.ref == "openai/gpt-5.5"
    with pytest.raises(NotFoundError):
        router.resolve("claude")  # a backend's name alone is not a model


def test_rules_in_order_direct_refs_and_default_backend() -> None:
    config = parse_config(
        {
            "backends": {"a": {}, "b": {}},
            "models": [
                {"match": "^gpt-", "route": "a/first-match"},
                {"name": "gpt-named", "route": "b/named", "aliases": ["gn"]},
            ],
            "default_backend": "b",
        }
    )
    router = Router(config)
    assert router.resolve("gpt-named").targets[0].ref == "a/first-match"  # first match wins
    assert router.resolve("gn").targets[0].ref == "b/named"
    assert router.resolve("a/direct-model").targets[0].ref == "a/direct-model"
    assert router.resolve("a:direct").targets[0].ref == "a/direct"
    assert router.resolve("bare-name").targets[0].ref == "b/bare-name"
    assert router.is_direct("a/x") and not router.is_direct("gn")
    with pytest.raises(InvalidRequestError, match="temperature"):
        router.resolve("a/m?temperature=7")


def test_unknown_model_lists_what_is_available() -> None:
    router = Router(
        parse_config({"backends": {"a": {}, "b": {}}, "models": [{"name": "m1", "route": "a/x"}]})
    )
    with pytest.raises(NotFoundError) as info:
        router.resolve("nope")
    assert (
        "'nope'" in info.value.message and "m1" in info.value.message and info.value.code == "model_not_found"
    )


def test_force_model() -> None:
    router = Router(
        parse_config(
            {
                "backends": {"a": {}, "b": {}},
                "force_model": "b/forced",
                "models": [{"name": "m", "route": "a/x"}],
            }
        )
    )
    assert router.resolve("m").targets[0].ref == "b/forced"
    assert router.resolve("anything").targets[0].ref == "b/forced"


def test_weights_shape_the_order() -> None:
    router = Router(
        parse_config(
            {
                "backends": {"a": {}, "b": {}},
                "models": [{"name": "m", "route": [{"to": "a/x", "weight": 9}, {"to": "b/y", "weight": 1}]}],
            }
        )
    )
    route = router.resolve("m")
    assert route.weighted
    rng = random.Random(7)
    firsts = [route.order(rng)[0].backend for _ in range(2000)]
    assert 0.85 < firsts.count("a") / 2000 < 0.95
    assert all(len(route.order(rng)) == 2 for _ in range(10))  # every target stays as failover
