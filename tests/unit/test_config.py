"""Configuration loading: defaults, path resolution, environment overrides and one-line errors."""

from __future__ import annotations

import ipaddress
import os
import tomllib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from proxy.config import (
    DEFAULT_CONFIG_TEXT,
    ListenAddress,
    Settings,
    build_settings,
    defaults,
    load_settings,
    parse_listen,
    resolve_config_path,
)
from proxy.errors import ConfigError

SQLITE = "sqlite+aiosqlite:///"


def write_config(directory: Path, text: str, name: str = "querybase.toml") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(text, encoding="utf-8")
    return path


def load(directory: Path, text: str, environ: dict[str, str] | None = None) -> Settings:
    return load_settings(write_config(directory, text), environ or {})


def config_error(directory: Path, text: str, environ: dict[str, str] | None = None) -> str:
    """Load a config that must fail; return the message after checking it is one line."""
    with pytest.raises(ConfigError) as info:
        load(directory, text, environ)
    message = str(info.value)
    assert message == info.value.message
    assert "\n" not in message, message
    assert "\r" not in message, message
    return message


# defaults ------------------------------------------------------------------------------------


def test_empty_file_gives_defaults_beside_the_config(tmp_path: Path) -> None:
    confdir = tmp_path / "etc" / "querybase"
    s = load(confdir, "")

    assert s.config_path == confdir / "querybase.toml"
    assert s.base_dir == confdir
    assert str(s.postgres.listen) == "127.0.0.1:15432"
    assert str(s.mysql.listen) == "127.0.0.1:13306"
    assert str(s.admin.listen) == "127.0.0.1:18080"
    assert s.postgres.listen == ListenAddress(host="127.0.0.1", port=15432)
    assert s.mysql.listen is not None
    assert s.mysql.listen.port == 13306
    assert s.admin.listen is not None
    assert s.admin.listen.port == 18080
    assert s.store.url == f"{SQLITE}{confdir}/querybase.db"
    assert s.secrets.key_file == confdir / "querybase.key"
    assert s.tls.cert_file == confdir / "tls" / "server.crt"
    assert s.tls.key_file == confdir / "tls" / "server.key"
    assert s.tls.mode == "allow"
    assert s.log.level == "info"
    assert s.log.format == "auto"


def test_defaults_do_not_depend_on_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    confdir = tmp_path / "conf"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    s = load(confdir, "")
    assert s.store.url == f"{SQLITE}{confdir}/querybase.db"
    assert s.secrets.key_file == confdir / "querybase.key"


def test_default_config_text_loads_and_gives_the_defaults(tmp_path: Path) -> None:
    from_text = load(tmp_path / "a", DEFAULT_CONFIG_TEXT)
    from_empty = load(tmp_path / "b", "")
    a = from_text.model_dump(mode="json")
    b = from_empty.model_dump(mode="json")
    # Same values once the (different) config directory is taken out of the paths.
    assert str(tmp_path / "a") in a["store"]["url"]
    strip_a = {k: str(v).replace(str(tmp_path / "a"), "<dir>") for k, v in a.items()}
    strip_b = {k: str(v).replace(str(tmp_path / "b"), "<dir>") for k, v in b.items()}
    assert strip_a == strip_b
    assert str(from_text.postgres.listen) == "127.0.0.1:15432"


def test_default_config_text_documents_every_setting(tmp_path: Path) -> None:
    parsed = tomllib.loads(DEFAULT_CONFIG_TEXT)
    expected = defaults(tmp_path)
    assert {section: set(body) for section, body in parsed.items()} == {
        section: set(body) for section, body in expected.items()
    }


# paths ---------------------------------------------------------------------------------------


def test_relative_paths_are_resolved_against_the_config_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    confdir = tmp_path / "conf"
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    s = load(
        confdir,
        """
        [store]
        url = "sqlite+aiosqlite:///data/qb.sqlite"
        [secrets]
        key_file = "keys/store.key"
        [tls]
        cert_file = "pki/cert.pem"
        key_file = "../shared/key.pem"
        """,
    )
    assert s.store.url == f"{SQLITE}{confdir}/data/qb.sqlite"
    assert s.secrets.key_file == confdir / "keys" / "store.key"
    assert s.tls.cert_file == confdir / "pki" / "cert.pem"
    assert s.tls.key_file.is_absolute()
    assert s.tls.key_file.resolve() == (tmp_path / "shared" / "key.pem").resolve()


def test_absolute_paths_are_kept(tmp_path: Path) -> None:
    s = load(
        tmp_path / "conf",
        """
        [store]
        url = "sqlite+aiosqlite:////var/lib/querybase/catalog.db"
        [secrets]
        key_file = "/etc/querybase/secret.key"
        [tls]
        cert_file = "/etc/ssl/qb.crt"
        key_file = "/etc/ssl/private/qb.key"
        """,
    )
    assert s.store.url == "sqlite+aiosqlite:////var/lib/querybase/catalog.db"
    assert s.secrets.key_file == Path("/etc/querybase/secret.key")
    assert s.tls.cert_file == Path("/etc/ssl/qb.crt")
    assert s.tls.key_file == Path("/etc/ssl/private/qb.key")


def test_postgresql_store_url_is_kept_verbatim(tmp_path: Path) -> None:
    url = "postgresql+asyncpg://qb:s3cret@db.internal:5432/querybase"
    s = load(tmp_path, f'[store]\nurl = "{url}"\n')
    assert s.store.url == url


# listen addresses ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "host", "port", "text"),
    [
        ("0.0.0.0:5432", "0.0.0.0", 5432, "0.0.0.0:5432"),
        ("localhost:1", "localhost", 1, "localhost:1"),
        ("db-1.example.com:65535", "db-1.example.com", 65535, "db-1.example.com:65535"),
        ("[::1]:6543", "::1", 6543, "[::1]:6543"),
        ("[::]:15432", "::", 15432, "[::]:15432"),
        ("  10.0.0.1:80  ", "10.0.0.1", 80, "10.0.0.1:80"),
    ],
)
def test_valid_listen_addresses(tmp_path: Path, value: str, host: str, port: int, text: str) -> None:
    s = load(tmp_path, f'[mysql]\nlisten = "{value}"\n')
    assert s.mysql.listen == ListenAddress(host=host, port=port)
    assert str(s.mysql.listen) == text


@pytest.mark.parametrize("section", ["postgres", "mysql", "admin"])
@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ('"127.0.0.1"', "is not HOST:PORT"),
        ('":5432"', "is not HOST:PORT"),
        ('"127.0.0.1:0"', "port '0' is not a number from 1 to 65535"),
        ('"127.0.0.1:70000"', "port '70000' is not a number from 1 to 65535"),
        ('"127.0.0.1:65536"', "port '65536' is not a number from 1 to 65535"),
        ('"127.0.0.1:"', "port '' is not a number from 1 to 65535"),
        ('"127.0.0.1:http"', "port 'http' is not a number from 1 to 65535"),
        ('"127.0.0.1:-1"', "port '-1' is not a number from 1 to 65535"),
        ('"bad host!:5432"', "'bad host!' is not a host name or IP address"),
        ('"exa_mple.com:5432"', "'exa_mple.com' is not a host name or IP address"),
        ('"[::zz]:5432"', "'::zz' is not an IPv6 address"),
        ('"[::1]"', "is not [IPV6]:PORT"),
        ('"[::1]5432"', "is not [IPV6]:PORT"),
        ('"::1:5432"', "is not a host name or IP address"),
        ("5432", "must be a string HOST:PORT"),
    ],
)
def test_bad_listen_address_names_the_key(tmp_path: Path, section: str, value: str, problem: str) -> None:
    message = config_error(tmp_path, f"[{section}]\nlisten = {value}\n")
    assert message.startswith(f"{section}.listen: ")
    assert problem in message
    assert str(tmp_path / "querybase.toml") in message


@pytest.mark.parametrize("value", ['""', '"   "'])
def test_empty_listen_disables_the_listener(tmp_path: Path, value: str) -> None:
    s = load(tmp_path, f"[postgres]\nlisten = {value}\n")
    assert s.postgres.listen is None
    assert str(s.mysql.listen) == "127.0.0.1:13306"
    assert str(s.admin.listen) == "127.0.0.1:18080"


@given(ip=st.ip_addresses(v=4), port=st.integers(min_value=1, max_value=65535))
def test_any_ipv4_and_valid_port_round_trips(ip: ipaddress.IPv4Address, port: int) -> None:
    text = f"{ip}:{port}"
    parsed = parse_listen(text)
    assert parsed is not None
    assert parsed.host == str(ip)
    assert parsed.port == port
    assert str(parsed) == text


@given(ip=st.ip_addresses(v=6), port=st.integers(min_value=1, max_value=65535))
def test_any_ipv6_and_valid_port_round_trips(ip: ipaddress.IPv6Address, port: int) -> None:
    text = f"[{ip}]:{port}"
    parsed = parse_listen(text)
    assert parsed is not None
    assert ipaddress.IPv6Address(parsed.host) == ip
    assert parsed.port == port
    assert str(parsed) == text


@given(
    ip=st.ip_addresses(v=4),
    port=st.one_of(st.just(0), st.integers(min_value=65536, max_value=10**12)),
)
def test_out_of_range_ports_are_rejected(ip: ipaddress.IPv4Address, port: int) -> None:
    with pytest.raises(ValueError, match="is not a number from 1 to 65535"):
        parse_listen(f"{ip}:{port}")


# '$' would also match before a trailing newline; the whole host must fit.
def test_host_with_trailing_newline_is_rejected() -> None:
    with pytest.raises(ValueError, match="host name"):
        parse_listen("localhost\n:5432")


# str.isdigit() alone accepts '٣' (Arabic-Indic three), which int() reads as 3.
def test_non_ascii_digits_are_not_a_port() -> None:
    with pytest.raises(ValueError, match="is not a number from 1 to 65535"):
        parse_listen("localhost:\u0663")


# str.isdigit() alone accepts '¹', which int() then rejects with Python's own message.
def test_superscript_digit_port_gets_the_port_message(tmp_path: Path) -> None:
    message = config_error(tmp_path, '[postgres]\nlisten = "localhost:\u00b9"\n')
    assert "is not a number from 1 to 65535" in message


# RFC 1123 §2.1: a host name never has the dotted-decimal form, so this is a bad IPv4 address.
def test_invalid_dotted_quad_is_rejected() -> None:
    with pytest.raises(ValueError, match=r"999\.999\.999\.999"):
        parse_listen("999.999.999.999:5432")


# other settings ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "key", "problem"),
    [
        ('[tls]\nmode = "strict"\n', "tls.mode", "'allow', 'require' or 'disable'"),
        ("[tls]\nmode = 1\n", "tls.mode", "'allow', 'require' or 'disable'"),
        ('[log]\nlevel = "verbose"\n', "log.level", "'debug', 'info', 'warning' or 'error'"),
        ('[log]\nformat = "xml"\n', "log.format", "'json', 'console' or 'auto'"),
        ('[store]\nurl = "mysql://root@localhost/qb"\n', "store.url", "unsupported store URL scheme 'mysql'"),
        ('[store]\nurl = "sqlite:///qb.db"\n', "store.url", "unsupported store URL scheme 'sqlite'"),
        ('[store]\nurl = "postgresql://u@h/d"\n', "store.url", "unsupported store URL scheme 'postgresql'"),
        ("[store]\nurl = 5\n", "store.url", "valid string"),
    ],
)
def test_bad_values_name_their_key(tmp_path: Path, text: str, key: str, problem: str) -> None:
    message = config_error(tmp_path, text)
    assert message.startswith(f"{key}: ")
    assert problem in message
    assert f"(in {tmp_path / 'querybase.toml'})" in message


def test_log_level_and_format_are_case_insensitive(tmp_path: Path) -> None:
    s = load(tmp_path, '[log]\nlevel = "DEBUG"\nformat = "Json"\n')
    assert s.log.level == "debug"
    assert s.log.format == "json"


def test_tls_mode_values(tmp_path: Path) -> None:
    for mode in ("allow", "require", "disable"):
        assert load(tmp_path / mode, f'[tls]\nmode = "{mode}"\n').tls.mode == mode


def test_unknown_section(tmp_path: Path) -> None:
    message = config_error(tmp_path, "[daemon]\nport = 1\n")
    assert message.startswith("daemon: unknown section")
    assert "postgres" in message
    assert "store" in message
    assert str(tmp_path / "querybase.toml") in message


def test_unknown_key(tmp_path: Path) -> None:
    message = config_error(tmp_path, "[postgres]\nport = 5432\n")
    assert message.startswith("postgres.port: unknown key")
    assert "listen" in message


def test_section_that_is_not_a_table(tmp_path: Path) -> None:
    message = config_error(tmp_path, 'store = "sqlite+aiosqlite:///x.db"\n')
    assert message.startswith("store: must be a [store] table")


# A quoted TOML key may hold a newline; the message must still be one line.
def test_unknown_key_with_newline_still_gives_one_line(tmp_path: Path) -> None:
    assert config_error(tmp_path, '[postgres]\n"bad\\nkey" = 1\n').startswith("postgres.")
    assert "unknown section" in config_error(tmp_path, '["bad\\nsection"]\nx = 1\n')


def test_toml_syntax_error_names_the_file(tmp_path: Path) -> None:
    message = config_error(tmp_path, "[postgres\nlisten = \n")
    assert str(tmp_path / "querybase.toml") in message
    assert "TOML syntax error" in message


def test_missing_file_suggests_init(tmp_path: Path) -> None:
    path = tmp_path / "nowhere" / "querybase.toml"
    with pytest.raises(ConfigError) as info:
        load_settings(path, {})
    message = str(info.value)
    assert str(path) in message
    assert "querybase init" in message
    assert "\n" not in message


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_unreadable_file(tmp_path: Path) -> None:
    path = write_config(tmp_path, "")
    path.chmod(0)
    try:
        with pytest.raises(ConfigError) as info:
            load_settings(path, {})
    finally:
        path.chmod(0o600)
    message = str(info.value)
    assert str(path) in message
    assert "cannot read" in message
    assert "Permission denied" in message
    assert "\n" not in message


def test_directory_instead_of_file(tmp_path: Path) -> None:
    path = tmp_path / "querybase.toml"
    path.mkdir()
    with pytest.raises(ConfigError) as info:
        load_settings(path, {})
    assert str(info.value).startswith(f"config file {path}: cannot read it")


def test_file_that_is_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "querybase.toml"
    path.write_bytes(b'[log]\nlevel = "\xff\xfe"\n')
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_settings(path, {})


# environment overrides -----------------------------------------------------------------------


def test_environment_overrides_win_over_the_file(tmp_path: Path) -> None:
    text = """
    [postgres]
    listen = "127.0.0.1:7000"
    [mysql]
    listen = "127.0.0.1:7001"
    [log]
    level = "error"
    """
    env = {
        "QUERYBASE_POSTGRES__LISTEN": "0.0.0.0:6432",
        "QUERYBASE_ADMIN__LISTEN": "",
        "QUERYBASE_LOG__LEVEL": "debug",
        "QUERYBASE_TLS__MODE": "require",
        "QUERYBASE_SECRETS__KEY_FILE": "from-env.key",
        "QUERYBASE_STORE__URL": "sqlite+aiosqlite:///env.db",
    }
    s = load(tmp_path, text, env)
    assert str(s.postgres.listen) == "0.0.0.0:6432"
    assert str(s.mysql.listen) == "127.0.0.1:7001"  # not overridden: the file's value
    assert s.admin.listen is None
    assert s.log.level == "debug"
    assert s.tls.mode == "require"
    # Relative paths from the environment are relative to the config directory too.
    assert s.secrets.key_file == tmp_path / "from-env.key"
    assert s.store.url == f"{SQLITE}{tmp_path}/env.db"


def test_environment_is_read_from_os_environ_by_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("QUERYBASE_MYSQL__LISTEN", "[::1]:3307")
    s = load_settings(write_config(tmp_path, ""))
    assert str(s.mysql.listen) == "[::1]:3307"


def test_error_from_an_environment_value_names_the_variable(tmp_path: Path) -> None:
    message = config_error(tmp_path, "", {"QUERYBASE_POSTGRES__LISTEN": "localhost:99999"})
    assert message.startswith("postgres.listen: ")
    assert "port '99999'" in message
    assert "(from QUERYBASE_POSTGRES__LISTEN)" in message
    assert "(in " not in message


def test_error_from_the_file_names_the_file_even_with_other_overrides(tmp_path: Path) -> None:
    message = config_error(tmp_path, '[log]\nformat = "xml"\n', {"QUERYBASE_LOG__LEVEL": "debug"})
    assert message.startswith("log.format: ")
    assert f"(in {tmp_path / 'querybase.toml'})" in message
    assert "QUERYBASE_LOG__LEVEL" not in message


@pytest.mark.parametrize(
    ("variable", "setting"),
    [("QUERYBASE_FOO__BAR", "foo.bar"), ("QUERYBASE_POSTGRES__PORT", "postgres.port")],
)
def test_unknown_environment_setting_names_the_variable(tmp_path: Path, variable: str, setting: str) -> None:
    message = config_error(tmp_path, "", {variable: "1"})
    assert message.startswith(f"{variable}: ")
    assert setting in message


def test_variables_without_double_underscore_are_not_overrides(tmp_path: Path) -> None:
    env = {
        "QUERYBASE_CONFIG": "/somewhere/else.toml",
        "QUERYBASE_SECRET_KEY": "not-a-setting",
        "QUERYBASE_ANYTHING": "x",
        "OTHER_POSTGRES__LISTEN": "garbage",
        "POSTGRES__LISTEN": "garbage",
    }
    s = load(tmp_path, "", env)
    assert str(s.postgres.listen) == "127.0.0.1:15432"
    assert s.secrets.key_file == tmp_path / "querybase.key"


# the model -----------------------------------------------------------------------------------


def test_settings_are_frozen(tmp_path: Path) -> None:
    s = load(tmp_path, "")
    with pytest.raises(ValidationError):
        s.log = s.log  # type: ignore[misc]
    with pytest.raises(ValidationError):
        s.log.level = "debug"  # type: ignore[misc]
    with pytest.raises(ValidationError):
        s.postgres.listen = None  # type: ignore[misc]
    assert s.postgres.listen is not None
    with pytest.raises(ValidationError):
        s.postgres.listen.port = 1  # type: ignore[misc]
    assert s.postgres.listen.port == 15432


def test_build_settings_takes_parsed_toml(tmp_path: Path) -> None:
    path = tmp_path / "querybase.toml"  # never read
    s = build_settings(path, {"mysql": {"listen": ""}}, {"QUERYBASE_LOG__FORMAT": "console"})
    assert s.mysql.listen is None
    assert s.log.format == "console"
    assert s.config_path == path


def test_build_settings_does_not_mutate_the_defaults(tmp_path: Path) -> None:
    build_settings(tmp_path / "q.toml", {"postgres": {"listen": "1.2.3.4:5"}}, {})
    s = build_settings(tmp_path / "q.toml", {}, {})
    assert str(s.postgres.listen) == "127.0.0.1:15432"


# where the file is ---------------------------------------------------------------------------


def test_config_path_from_the_command_line_wins(tmp_path: Path) -> None:
    cli = tmp_path / "cli.toml"
    env = {"QUERYBASE_CONFIG": str(tmp_path / "env.toml")}
    assert resolve_config_path(str(cli), env) == cli


def test_config_path_from_the_environment_is_next(tmp_path: Path) -> None:
    env = {"QUERYBASE_CONFIG": str(tmp_path / "env.toml")}
    assert resolve_config_path(None, env) == tmp_path / "env.toml"


def test_config_path_defaults_to_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert resolve_config_path(None, {}) == tmp_path / "querybase.toml"
    # A relative path is made absolute against the working directory.
    assert resolve_config_path("conf/qb.toml", {}) == tmp_path / "conf" / "qb.toml"
    assert resolve_config_path(None, {"QUERYBASE_CONFIG": "x.toml"}) == tmp_path / "x.toml"


def test_config_path_reads_os_environ_by_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QUERYBASE_CONFIG", str(tmp_path / "from-os.toml"))
    assert resolve_config_path(None) == tmp_path / "from-os.toml"


def test_config_path_expands_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    assert resolve_config_path("~/qb.toml", {}) == tmp_path / "qb.toml"


@settings(max_examples=25)
@given(port=st.integers(min_value=1, max_value=65535))
def test_listen_from_the_environment_round_trips(port: int) -> None:
    s = build_settings(Path("/etc/qb/querybase.toml"), {}, {"QUERYBASE_ADMIN__LISTEN": f"0.0.0.0:{port}"})
    assert s.admin.listen == ListenAddress(host="0.0.0.0", port=port)


# ------------------------------------------------------------------------------ notify targets

HOOK = "https://hooks.example.com/services/T000/B000/secret-token"


def test_webhook_url_from_the_environment(tmp_path: Path) -> None:
    text = '[notify]\ntargets = [{ name = "ops", kind = "slack", url_env = "OPS_HOOK" }]\n'
    settings = load(tmp_path, text, {"OPS_HOOK": HOOK})
    assert settings.notify.targets[0].url == HOOK
    assert HOOK not in repr(settings.notify.targets[0])  # never printed with the settings
    message = config_error(tmp_path, text, {})
    assert "url_env names 'OPS_HOOK', which is not set" in message
    both = f'[notify]\ntargets = [{{ name = "ops", url = "{HOOK}", url_env = "OPS_HOOK" }}]\n'
    assert "not both" in config_error(tmp_path, both, {"OPS_HOOK": HOOK})


def test_webhook_targets_are_checked(tmp_path: Path) -> None:
    typo = f'[notify]\ntargets = [{{ name = "a", url = "{HOOK}", events = ["executd"] }}]\n'
    assert "unknown events ['executd']" in config_error(tmp_path, typo)
    twice = f'[notify]\ntargets = [{{ name = "a", url = "{HOOK}" }}, {{ name = "a", url = "{HOOK}" }}]\n'
    assert "unique: a" in config_error(tmp_path, twice)
    bad = '[notify]\ntargets = [{ name = "a", url = "ftp://x/secret" }]\n'
    message = config_error(tmp_path, bad)
    assert "is not an http:// or https:// URL" in message
    assert "secret" not in message
