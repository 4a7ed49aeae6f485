"""Settings for engagement: one file, every knob an environment variable with a safe local default.

A bad value stops the process at start with a message naming the variable. Every variable read here is
documented in README.md (tests/test_docs.py fails otherwise).
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def env_str(name: str, default: str = "") -> str:
    return os.environ.get(name, default).strip()


def env_bool(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None or value.strip() == "":
        return default
    lowered = value.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ImproperlyConfigured(f"{name} must be one of {sorted(_TRUE | _FALSE)}, not {value!r}")


def env_int(name: str, default: int, *, minimum: int = 0) -> int:
    value = os.environ.get(name)
    if value is None or value.strip() == "":
        return default
    try:
        number = int(value)
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be a whole number, not {value!r}") from None
    if number < minimum:
        raise ImproperlyConfigured(f"{name} must be at least {minimum}, not {number}")
    return number


def env_list(name: str, default: list[str]) -> list[str]:
    value = os.environ.get(name)
    if value is None:
        return default
    return [part.strip() for part in value.split(",") if part.strip()]


def parse_database_url(url: str, *, name: str = "DATABASE_URL") -> dict:
    """postgres://USER:PASSWORD@HOST:PORT/NAME, or ?host=/socket/dir for a Unix socket."""
    parts = urlsplit(url)
    if parts.scheme not in ("postgres", "postgresql"):
        raise ImproperlyConfigured(f"{name} must be a postgresql:// URL (PostgreSQL is the only engine), not {url!r}")
    database = unquote(parts.path.lstrip("/"))
    if not database:
        raise ImproperlyConfigured(f"{name} must name a database, as in postgresql://user@host/engagement")
    query = parse_qs(parts.query)
    try:
        port = parts.port
    except ValueError:
        raise ImproperlyConfigured(f"{name} has a bad port: {url!r}") from None
    return {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": database,
        "USER": unquote(parts.username or "") or "postgres",
        "PASSWORD": unquote(parts.password or ""),
        "HOST": query.get("host", [unquote(parts.hostname or "")])[0],
        "PORT": str(port or ""),
        "CONN_MAX_AGE": env_int("DATABASE_CONN_MAX_AGE", 60),
        "CONN_HEALTH_CHECKS": True,
        "OPTIONS": {"connect_timeout": 5},
    }


def validate_redis_url(url: str) -> str:
    if urlsplit(url).scheme not in ("redis", "rediss"):
        raise ImproperlyConfigured(f"REDIS_URL must be a redis:// or rediss:// URL, not {url!r}")
    return url


# --- data folder and embedded servers ------------------------------------------------------------

DATA_DIR = Path(env_str("ENGAGEMENT_DATA_DIR") or BASE_DIR / ".data")

DATABASE_URL = env_str("DATABASE_URL")
REDIS_URL = env_str("REDIS_URL")
if not DATABASE_URL or not REDIS_URL:
    # No server configured: start (or join) the embedded ones of DATA_DIR. See engagement/embedded.py.
    from engagement.embedded import EmbeddedServices

    _embedded = EmbeddedServices(DATA_DIR).acquire(postgres=not DATABASE_URL, redis=not REDIS_URL)
    DATABASE_URL = DATABASE_URL or _embedded.database_url
    REDIS_URL = REDIS_URL or _embedded.redis_url

DATABASES = {"default": parse_database_url(DATABASE_URL)}
REDIS_URL = validate_redis_url(REDIS_URL)
# Shared state between processes (login sessions of platforms); the broker's Redis, its own key prefix.
CACHES = {
    "default": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": REDIS_URL,
        "KEY_PREFIX": "engagement",
    }
}

# --- core Django ---------------------------------------------------------------------------------

DEBUG = env_bool("DEBUG", False)


def _secret_key() -> str:
    key = env_str("SECRET_KEY")
    if key:
        return key
    # Local default: a random key kept in the (git-ignored) data folder, so sessions survive restarts
    # and no known key ships with the code. Production sets SECRET_KEY.
    path = DATA_DIR / "secret_key"
    DATA_DIR.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        path.write_text(secrets.token_urlsafe(50))
        path.chmod(0o600)
    return path.read_text().strip()


SECRET_KEY = _secret_key()
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]"])
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django.contrib.postgres",
    "rest_framework",
    "django_filters",
    "drf_spectacular",
    "engagement",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "engagement.urls"
WSGI_APPLICATION = "engagement.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]

LANGUAGE_CODE = "en"
TIME_ZONE = env_str("TIME_ZONE", "UTC")
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = Path(env_str("STATIC_ROOT") or DATA_DIR / "static")  # filled by `manage.py collectstatic`
STATIC_ROOT.mkdir(parents=True, exist_ok=True)
# Without collectstatic (local runs, tests) WhiteNoise serves straight from the apps' static folders.
WHITENOISE_USE_FINDERS = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": env_str("LOG_LEVEL", "INFO").upper()},
    # pgserver logs every pg_ctl call at INFO.
    "loggers": {"django.db.backends": {"level": "INFO"}, "pgserver": {"level": "WARNING"}},
}

# --- the API -------------------------------------------------------------------------------------

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "engagement.api.authentication.ApiTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_FILTER_BACKENDS": ["django_filters.rest_framework.DjangoFilterBackend"],
    "DEFAULT_PAGINATION_CLASS": "engagement.api.pagination.NewestFirstCursorPagination",
    "PAGE_SIZE": 50,
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
}
SPECTACULAR_SETTINGS = {
    "TITLE": "engagement API",
    "DESCRIPTION": "Posts collected around the tracked hashtags.",
    "VERSION": "1",
}

# --- collection ----------------------------------------------------------------------------------

ENGAGEMENT_HASHTAGS = env_list("ENGAGEMENT_HASHTAGS", ["UkrainePeaceTalks"])
if not ENGAGEMENT_HASHTAGS:
    raise ImproperlyConfigured("ENGAGEMENT_HASHTAGS must name at least one hashtag")
# Sources may point at loopback / private addresses only when this is on (local use and tests).
ENGAGEMENT_ALLOW_PRIVATE_HOSTS = env_bool("ENGAGEMENT_ALLOW_PRIVATE_HOSTS", False)
# Narrower than the above: only these hosts ("host" or "host:port") may be private.
ENGAGEMENT_TRUSTED_HOSTS = env_list("ENGAGEMENT_TRUSTED_HOSTS", [])
# Mastodon instances that `make run` registers for each hashtag on a fresh database ("" for none).
ENGAGEMENT_DEFAULT_MASTODON_INSTANCES = env_list(
    "ENGAGEMENT_DEFAULT_MASTODON_INSTANCES",
    ["https://mastodon.social", "https://mastodon.online", "https://mstdn.social"],
)
ENGAGEMENT_DEFAULT_POLL_INTERVAL = env_int("ENGAGEMENT_DEFAULT_POLL_INTERVAL", 300, minimum=10)
# How often beat looks for due sources; each due source is queued once.
ENGAGEMENT_DISPATCH_INTERVAL = env_int("ENGAGEMENT_DISPATCH_INTERVAL", 15, minimum=1)
ENGAGEMENT_HTTP_CONNECT_TIMEOUT = env_int("ENGAGEMENT_HTTP_CONNECT_TIMEOUT", 5, minimum=1)
ENGAGEMENT_HTTP_READ_TIMEOUT = env_int("ENGAGEMENT_HTTP_READ_TIMEOUT", 20, minimum=1)
ENGAGEMENT_USER_AGENT = env_str(
    "ENGAGEMENT_USER_AGENT", "engagement/0.1 (public hashtag collector; operators set ENGAGEMENT_USER_AGENT with a contact)"
)
# Posts published within this many days are looked at again for edits and deletions, every
# ENGAGEMENT_RECHECK_INTERVAL seconds.
ENGAGEMENT_RECHECK_DAYS = env_int("ENGAGEMENT_RECHECK_DAYS", 7, minimum=0)
ENGAGEMENT_RECHECK_INTERVAL = env_int("ENGAGEMENT_RECHECK_INTERVAL", 3600, minimum=60)
# After this many failed runs in a row a source pauses for the cool-down (the circuit opens).
ENGAGEMENT_CIRCUIT_FAILURES = env_int("ENGAGEMENT_CIRCUIT_FAILURES", 5, minimum=1)
ENGAGEMENT_CIRCUIT_COOLDOWN = env_int("ENGAGEMENT_CIRCUIT_COOLDOWN", 900, minimum=1)

# Platform credentials. A platform without them runs anonymously where it can, and reports
# "needs credentials" where it cannot.
ENGAGEMENT_CREDENTIALS = {
    "bluesky": {"handle": env_str("BLUESKY_HANDLE"), "app_password": env_str("BLUESKY_APP_PASSWORD")},
    "disqus": {"api_key": env_str("DISQUS_API_KEY")},
    "youtube": {"api_key": env_str("YOUTUBE_API_KEY")},
    "reddit": {"client_id": env_str("REDDIT_CLIENT_ID"), "client_secret": env_str("REDDIT_CLIENT_SECRET")},
}
ENGAGEMENT_CREDENTIALS = {
    platform: {key: value for key, value in values.items() if value}
    for platform, values in ENGAGEMENT_CREDENTIALS.items()
}

# Moderation screening (engagement/moderation.py). A near-duplicate burst: this many different authors
# posting the same text within this many seconds (coordinated posting) flags the posts for review.
ENGAGEMENT_BURST_AUTHORS = env_int("ENGAGEMENT_BURST_AUTHORS", 5, minimum=2)
ENGAGEMENT_BURST_WINDOW = env_int("ENGAGEMENT_BURST_WINDOW", 600, minimum=1)
# A screening phase that reads the database longer than this is cancelled and recorded as "check failed".
ENGAGEMENT_SCREENING_TIMEOUT_MS = env_int("ENGAGEMENT_SCREENING_TIMEOUT_MS", 2000, minimum=1)

# Sentiment (engagement/sentiment.py). Languages lingua may detect (ISO 639-1; en, uk and ru are always
# included), and the backend scoring each language: LANG=dotted.path.Class, comma-separated. A language
# without a backend is "not scored (unsupported language)", never neutral.
ENGAGEMENT_LANGUAGES = sorted({*env_list("ENGAGEMENT_LANGUAGES", ["en", "uk", "ru", "de", "fr", "es", "pl", "it"]),
                               "en", "uk", "ru"})
ENGAGEMENT_SENTIMENT_BACKENDS = dict(
    part.split("=", 1) for part in env_list("ENGAGEMENT_SENTIMENT_BACKENDS", ["en=engagement.scoring.EnglishVader"])
    if "=" in part
)
if not ENGAGEMENT_SENTIMENT_BACKENDS and env_list("ENGAGEMENT_SENTIMENT_BACKENDS", []):
    raise ImproperlyConfigured("ENGAGEMENT_SENTIMENT_BACKENDS: expected LANG=dotted.path.Class entries")
# Posts scored per task (one task per batch, never one per post).
ENGAGEMENT_SCORE_BATCH = env_int("ENGAGEMENT_SCORE_BATCH", 500, minimum=1)
# The time zone the editors' page shows times in (buckets are UTC underneath).
ENGAGEMENT_SUMMARY_TIMEZONE = env_str("ENGAGEMENT_SUMMARY_TIMEZONE", TIME_ZONE)
# Spike alerts: an hour whose volume (or negative share) is this many times its trailing 24-hour baseline,
# with at least ENGAGEMENT_SPIKE_MIN_POSTS posts, is shown on the page and sent to the webhook (HMAC-signed
# with ENGAGEMENT_SPIKE_WEBHOOK_SECRET) and/or by email.
ENGAGEMENT_SPIKE_FACTOR = float(env_str("ENGAGEMENT_SPIKE_FACTOR", "3") or 3)
ENGAGEMENT_SPIKE_MIN_POSTS = env_int("ENGAGEMENT_SPIKE_MIN_POSTS", 20, minimum=1)
ENGAGEMENT_SPIKE_WEBHOOK_URL = env_str("ENGAGEMENT_SPIKE_WEBHOOK_URL")
ENGAGEMENT_SPIKE_WEBHOOK_SECRET = env_str("ENGAGEMENT_SPIKE_WEBHOOK_SECRET")
ENGAGEMENT_SPIKE_EMAIL = env_list("ENGAGEMENT_SPIKE_EMAIL", [])
# Outgoing mail (spike alerts): an SMTP server.
EMAIL_HOST = env_str("EMAIL_HOST", "localhost")
EMAIL_PORT = env_int("EMAIL_PORT", 25, minimum=1)
EMAIL_HOST_USER = env_str("EMAIL_HOST_USER")
EMAIL_HOST_PASSWORD = env_str("EMAIL_HOST_PASSWORD")
EMAIL_USE_TLS = env_bool("EMAIL_USE_TLS", False)
EMAIL_TIMEOUT = 10
DEFAULT_FROM_EMAIL = env_str("DEFAULT_FROM_EMAIL", "engagement@localhost")

ENGAGEMENT_ADMIN_USER = env_str("ENGAGEMENT_ADMIN_USER", "admin")
ENGAGEMENT_ADMIN_PASSWORD = env_str("ENGAGEMENT_ADMIN_PASSWORD")

# --- health --------------------------------------------------------------------------------------

ENGAGEMENT_HEALTH_WORKER_MAX_AGE = env_int("ENGAGEMENT_HEALTH_WORKER_MAX_AGE", 30, minimum=1)
ENGAGEMENT_HEALTH_BEAT_MAX_AGE = env_int("ENGAGEMENT_HEALTH_BEAT_MAX_AGE", 60, minimum=1)

# --- Celery (read by worker/celery.py) ------------------------------------------------------------

CELERY_BEAT_SCHEDULE_FILE = Path(env_str("CELERY_BEAT_SCHEDULE_FILE") or DATA_DIR / "celerybeat-schedule")
CELERY_WORKER_CONCURRENCY = env_int("CELERY_WORKER_CONCURRENCY", 2, minimum=1)
