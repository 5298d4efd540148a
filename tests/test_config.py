import json

import pytest

import afmi
from afmi.config import Config


def test_defaults_and_from_dict():
    c = Config.from_dict(
        {"timeout": 5, "hint": "cheap", "channels": {"s3": {"bucket": "b", "region": "eu"}}}
    )
    assert c.timeout == 5.0 and c.hint == "cheap"
    assert c.channels.s3.bucket == "b" and c.channels.s3.region == "eu"
    assert c.channels.redis.url.startswith("redis://")
    assert Config.from_dict(c.to_dict()) == c


@pytest.mark.parametrize(
    "data, match",
    [
        ({"timout": 1}, "unknown config key 'timout'"),
        ({"channels": {"redis": {"uri": "x"}}}, "unknown config key 'channels.redis.uri'"),
        ({"channels": {"redis": {"url": 3}}}, "channels.redis.url must be a string"),
        ({"hint": "slow"}, "hint must be one of 'fast', 'cheap'"),
        ({"timeout": "10"}, "timeout must be a number"),
        ({"timeout": -2}, "timeout must be > 0"),
        ({"pickle": 1}, "pickle must be true or false"),
        ({"faas": {"memory_mb": 1.5}}, "faas.memory_mb must be an integer"),
        ({"faas": {"memory_mb": 0}}, "faas.memory_mb must be > 0"),
        ({"channels": 5}, "channels must be a table"),
        ({"spin": 2}, "spin must be between 0 and 1 second"),
    ],
)
def test_bad_keys_are_named(data, match):
    with pytest.raises(afmi.ConfigError, match=match) as info:
        Config.from_dict(data)
    assert isinstance(info.value, ValueError)


def test_json_and_toml_files(tmp_path):
    j = tmp_path / "c.json"
    j.write_text(json.dumps({"timeout": 7, "channels": {"redis": {"url": "redis://h:1/2"}}}))
    t = tmp_path / "c.toml"
    t.write_text('timeout = 8\nhint = "cheap"\n[channels.direct]\nrendezvous = "h:9"\n')
    assert Config.from_file(j).channels.redis.url == "redis://h:1/2"
    tc = Config.load(str(t))
    assert tc.timeout == 8 and tc.channels.direct.rendezvous == "h:9"


def test_bad_files(tmp_path):
    with pytest.raises(afmi.ConfigError, match="cannot read config file"):
        Config.from_file(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("timeout = = 3")
    with pytest.raises(afmi.ConfigError, match="not valid TOML"):
        Config.from_file(bad)
    other = tmp_path / "c.yaml"
    other.write_text("")
    with pytest.raises(afmi.ConfigError, match=r"must end in \.json or \.toml"):
        Config.from_file(other)
    arr = tmp_path / "arr.json"
    arr.write_text("[1]")
    with pytest.raises(afmi.ConfigError, match="top level"):
        Config.from_file(arr)


def test_afmi_config_environment_variable(tmp_path, monkeypatch):
    f = tmp_path / "c.json"
    f.write_text('{"timeout": 3}')
    monkeypatch.setenv("AFMI_CONFIG", str(f))
    assert Config.load().timeout == 3
    monkeypatch.delenv("AFMI_CONFIG")
    assert Config.load().timeout == Config().timeout
    with pytest.raises(afmi.ConfigError, match="must be a Config, a dict or a file path"):
        Config.load(42)  # type: ignore[arg-type]


def test_run_local_accepts_dict_and_config():
    async def main(comm):
        return comm.endpoint.config.timeout

    assert afmi.run_local(main, 2, config={"timeout": 9}) == [9.0, 9.0]
    assert afmi.run_local(main, 1, config=Config(timeout=None)) == [None]
