import subprocess
import sys
from pathlib import Path

import pytest

from paxyo.settings import Settings, SettingsError

ROOT = Path(__file__).resolve().parents[1]


def test_defaults_match_the_design():
    s = Settings.from_env({})
    assert s.redis_url == "redis://localhost:6379/0"
    assert s.port == 8080 and s.poll_interval == 30 and s.money_decimals == 2
    assert s.database_url.startswith("sqlite:///") and s.database_url.endswith("paxyo.db")
    assert s.providers == {}


def test_providers_and_url_normalisation():
    s = Settings.from_env({
        "PAXYO_PROVIDER_GODOFPANEL_URL": "https://godofpanel.com/api/v2",
        "PAXYO_PROVIDER_GODOFPANEL_KEY": "k1",
        "DATABASE_URL": "postgres://u:p@db:5432/app",
    })
    assert s.providers["godofpanel"].url == "https://godofpanel.com/api/v2"
    assert s.providers["godofpanel"].key == "k1"
    assert s.database_url == "postgresql+psycopg://u:p@db:5432/app"
    assert Settings.from_env({"DATABASE_URL": "mysql://root@h/db"}).database_url == \
        "mysql+pymysql://root@h/db"


@pytest.mark.parametrize(("env", "variable"), [
    ({"PORT": "eighty"}, "PORT"),
    ({"PORT": "70000"}, "PORT"),
    ({"PAXYO_POLL_INTERVAL": "0"}, "PAXYO_POLL_INTERVAL"),
    ({"PAXYO_MONEY_DECIMALS": "2.5"}, "PAXYO_MONEY_DECIMALS"),
    ({"DATABASE_URL": "oracle://x"}, "DATABASE_URL"),
    ({"REDIS_URL": "http://localhost"}, "REDIS_URL"),
    ({"PAXYO_PROVIDER_X_URL": "http://p/api/v2"}, "PAXYO_PROVIDER_X_KEY"),
    ({"PAXYO_PROVIDER_X_KEY": "k", "PAXYO_PROVIDER_X_URL": "ftp://p"}, "PAXYO_PROVIDER_X_URL"),
    ({"PAXYO_LOG_FORMAT": "xml"}, "PAXYO_LOG_FORMAT"),
    ({"PAXYO_JWT_SECRET": "  "}, "PAXYO_JWT_SECRET"),
])
def test_bad_values_name_their_variable(env, variable):
    with pytest.raises(SettingsError) as info:
        Settings.from_env(env)
    assert info.value.variable == variable
    assert str(info.value).startswith(variable)


def test_secrets_required_outside_demo():
    with pytest.raises(SettingsError, match="PAXYO_JWT_SECRET"):
        Settings.from_env({}).require_secrets()
    with pytest.raises(SettingsError, match="PAXYO_ADMIN_TOKEN"):
        Settings.from_env({"PAXYO_JWT_SECRET": "s" * 32}).require_secrets()
    Settings.from_env({"PAXYO_DEMO": "1"}).require_secrets()


def test_cli_stops_with_one_line_naming_the_variable(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "paxyo.cli", "check-once"], cwd=tmp_path,
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT),
                               "PAXYO_POLL_INTERVAL": "soon"},
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "paxyo: configuration error: PAXYO_POLL_INTERVAL: must be a number, not 'soon'"]


HEAD = sorted(p.name[:4] for p in (ROOT / "paxyo/store/migrations/versions").glob("0*.py"))[-1]


def test_db_upgrade_is_repeatable(tmp_path):
    url = f"sqlite:///{tmp_path / 'x.db'}"
    for _ in range(2):
        proc = subprocess.run([sys.executable, "-m", "paxyo.cli", "--database-url", url,
                               "db", "upgrade"], cwd=tmp_path, capture_output=True, text=True,
                              env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)},
                              timeout=60)
        assert proc.returncode == 0, proc.stderr
        assert f"database at revision {HEAD}" in proc.stdout


@pytest.mark.parametrize("var", ["PAXYO_SHARDS_PER_JOB", "PAXYO_WEBHOOK_TIMEOUT", "PORT",
                                 "PAXYO_POLL_INTERVAL", "PAXYO_HISTORY_TTL"])
@pytest.mark.parametrize("raw", ["٣", "\uff15", "1_0", "1e1", "nan", "inf", "1,5", "5\x00",
                                 "9" * 400, "-3", "", "true", "0x10"])
def test_numbers_are_ascii_digits_within_range(var: str, raw: str) -> None:
    with pytest.raises(SettingsError) as caught:
        Settings.from_env({var: raw})
    assert caught.value.variable == var


def test_the_new_numbers_take_their_values() -> None:
    settings = Settings.from_env({"PAXYO_SHARDS_PER_JOB": " 7 ", "PAXYO_WEBHOOK_TIMEOUT": "2.5"})
    assert settings.shards_per_job == 7 and settings.webhook_timeout == 2.5
