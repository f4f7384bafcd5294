"""Django settings, read from the environment (see README "Configuration").

Embedded defaults: SQLite (WAL) and Huey on SQLite under ``STUDIO_DATA_DIR`` (``var/``), live
events that follow the stored events table (no Redis). With ``REDIS_URL``: Huey on Redis and
channels_redis. With ``DATABASE_URL``: PostgreSQL.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from studio.env import SettingError, database_from_url, env_bool, env_int, env_list, redis_url_checked

BASE_DIR = Path(__file__).resolve().parent.parent
DATA_DIR = Path(os.environ.get("STUDIO_DATA_DIR") or BASE_DIR / "var").resolve()
DATA_DIR.mkdir(parents=True, exist_ok=True)

DEV_SECRET_KEY = "studio-development-key-not-for-production"
DEBUG = env_bool("DEBUG", True)
SECRET_KEY = os.environ.get("SECRET_KEY") or (DEV_SECRET_KEY if DEBUG else "")
if not DEBUG and (not SECRET_KEY or SECRET_KEY == DEV_SECRET_KEY):
    raise SettingError("SECRET_KEY", "production mode (DEBUG=0) needs a real secret key, not the development one",
                       "$(python -c 'import secrets; print(secrets.token_urlsafe(50))')")
if not DEBUG and len(SECRET_KEY) < 50:
    raise SettingError("SECRET_KEY", "must be at least 50 characters long in production",
                       "$(python -c 'import secrets; print(secrets.token_urlsafe(50))')")

ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["127.0.0.1", "localhost", "[::1]"] if DEBUG else [])
if not DEBUG and not ALLOWED_HOSTS:
    raise SettingError("ALLOWED_HOSTS", "production mode (DEBUG=0) needs the host names the studio is served on",
                       "studio.example.org")
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [])

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "channels",
    "huey.contrib.djhuey",
    "studio",
    "training",
    "labeling",
    "frontend",
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

ROOT_URLCONF = "studio.urls"
ASGI_APPLICATION = "studio.asgi.application"
WSGI_APPLICATION = None

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
                "frontend.context.navigation",
            ],
        },
    },
]

# ---- database -------------------------------------------------------------------------------
DATABASE_URL = os.environ.get("DATABASE_URL", "").strip()
if DATABASE_URL:
    DATABASES = {"default": database_from_url(DATABASE_URL)}
    if DATABASES["default"]["ENGINE"].endswith("postgresql"):
        if env_bool("STUDIO_DB_SERVER_BINDING", False):
            # every statement's parameters sent apart from it, and a statement run
            # STUDIO_DB_PREPARE_THRESHOLD times on a connection prepared there. Off by default: some ORM
            # queries fail with server-side binding (the same JSON key bound twice in SELECT and GROUP
            # BY); the labeling hot path prepares its own statements either way (labeling/sql.py)
            DATABASES["default"].setdefault("OPTIONS", {}).update({
                "server_side_binding": True,
                "prepare_threshold": env_int("STUDIO_DB_PREPARE_THRESHOLD", 5, minimum=0)})
        if env_bool("STUDIO_DB_POOL", False):
            # a pool per process instead of one connection per request thread
            DATABASES["default"].setdefault("OPTIONS", {})["pool"] = {
                "min_size": 1, "max_size": env_int("STUDIO_DB_POOL_SIZE", 8, minimum=1), "timeout": 30}
        else:
            # web requests run on long-lived threads (studio/asgi_threads.py): each keeps its
            # connection (web processes × STUDIO_WEB_THREADS connections at most, plus the queue's)
            DATABASES["default"]["CONN_MAX_AGE"] = env_int("STUDIO_DB_CONN_MAX_AGE", 300, minimum=0)
            DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
else:
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": DATA_DIR / "studio.sqlite3",
            # WAL: readers never block the writer; IMMEDIATE: writers queue instead of failing
            "OPTIONS": {
                "transaction_mode": "IMMEDIATE",
                "timeout": 20,
                "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA busy_timeout=20000;",
            },
            # web requests run on long-lived threads (studio/asgi_threads.py): keep their connections
            "CONN_MAX_AGE": env_int("STUDIO_SQLITE_CONN_MAX_AGE", 300, minimum=0),
            # one test database per pytest process, so that two test sessions never share a file
            "TEST": {"NAME": DATA_DIR / f"test-studio-{os.getpid()}.sqlite3"},
        }
    }
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# ---- queue, channel layer -------------------------------------------------------------------
REDIS_URL = redis_url_checked(os.environ["REDIS_URL"].strip()) if os.environ.get("REDIS_URL", "").strip() else ""
HUEY_WORKERS = env_int("HUEY_WORKERS", 2, minimum=1)
HUEY_IMMEDIATE = env_bool("HUEY_IMMEDIATE", False)
if REDIS_URL:
    HUEY = {
        "huey_class": "huey.RedisHuey",
        "name": os.environ.get("HUEY_NAME", "studio"),
        "url": REDIS_URL,
        "immediate": HUEY_IMMEDIATE,
        "consumer": {"workers": HUEY_WORKERS, "worker_type": "thread"},
    }
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {"hosts": [REDIS_URL], "prefix": os.environ.get("HUEY_NAME", "studio")},
        }
    }
    # channels_redis carries events between machines: consumers join groups.
    STUDIO_EVENTS_TRANSPORT = "channel_layer"
else:
    HUEY = {
        "huey_class": "huey.SqliteHuey",
        "name": "studio",
        "filename": str(DATA_DIR / "huey.sqlite3"),
        "immediate": HUEY_IMMEDIATE,
        "consumer": {"workers": HUEY_WORKERS, "worker_type": "thread"},
    }
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
    # The in-memory layer does not cross processes: consumers follow the stored events table.
    STUDIO_EVENTS_TRANSPORT = "database"
STUDIO_EVENTS_POLL_SECONDS = float(os.environ.get("STUDIO_EVENTS_POLL_SECONDS", "0.25"))

# ---- web server (runstudio) -------------------------------------------------------------------
# Uvicorn worker processes behind one port; a laptop's cores, at most 4 (each holds a copy of the app)
STUDIO_WEB_WORKERS = env_int("STUDIO_WEB_WORKERS", max(1, min(4, os.cpu_count() or 1)), minimum=1)
STUDIO_WEB_SERVER = os.environ.get("STUDIO_WEB_SERVER", "uvicorn").strip() or "uvicorn"
if STUDIO_WEB_SERVER not in ("uvicorn", "daphne"):
    raise SettingError("STUDIO_WEB_SERVER", f"unknown web server {STUDIO_WEB_SERVER!r}", "uvicorn")
STUDIO_ACCESS_LOG = env_bool("STUDIO_ACCESS_LOG", True)
# threads per web process that run requests' sync code (studio/asgi_threads.py); each keeps its
# database connection between requests
STUDIO_WEB_THREADS = env_int("STUDIO_WEB_THREADS", 16, minimum=1)

# ---- auth, API --------------------------------------------------------------------------------
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "dashboard"
LOGOUT_REDIRECT_URL = "login"

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "studio.tokens.TokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["studio.roles.DenyUndeclared"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "studio.errors.exception_handler",
    "DEFAULT_PAGINATION_CLASS": "rest_framework.pagination.LimitOffsetPagination",
    "PAGE_SIZE": 50,
    "UNAUTHENTICATED_USER": "django.contrib.auth.models.AnonymousUser",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "LLM Studio API",
    "DESCRIPTION": "Data, tokenizers, training runs, human feedback and models. Authenticate with a session "
                   "(browser) or an API token: `Authorization: Token <key>`. Errors share one shape: "
                   "`{code, detail, hint}`.",
    "VERSION": "0.1.0",
    "SERVE_PERMISSIONS": ["rest_framework.permissions.AllowAny"],
    "COMPONENT_SPLIT_REQUEST": True,
    # stable names for choice sets shared by several fields
    "ENUM_NAME_OVERRIDES": {
        "RunKindEnum": "training.models.RUN_KINDS",
        "RunStatusEnum": "training.models.RUN_STATUSES",
        "ArtifactKindEnum": "training.models.ARTIFACT_KINDS",
        "ArtifactFormatEnum": "training.models.ARTIFACT_FORMATS",
        "ArtifactStatusEnum": "training.models.ARTIFACT_STATUSES",
        "VoteEnum": "training.models.VOTES",
        "ReportSourceEnum": "labeling.models.REPORT_SOURCES",
        "ReportStatusEnum": "labeling.models.REPORT_STATUSES",
        "AssignmentStatusEnum": "labeling.models.ASSIGN_STATUSES",
        "ResponseSourceKindEnum": "labeling.models.SOURCE_KINDS",
        "PreAnnotationModeEnum": "labeling.models.PRE_ANNOTATION_MODES",
    },
    # Swagger UI from npm (frontend/package.json), served as static files: nothing from a CDN.
    "SWAGGER_UI_DIST": "/static/vendor/swagger-ui-dist",
    "SWAGGER_UI_FAVICON_HREF": "/static/vendor/swagger-ui-dist/favicon-32x32.png",
}

# ---- security -------------------------------------------------------------------------------
SESSION_COOKIE_HTTPONLY = True
CSRF_COOKIE_HTTPONLY = False  # the page JS reads it for fetch() requests
X_FRAME_OPTIONS = "DENY"
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
if not DEBUG:
    SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", True)
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 31536000, minimum=0)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", False)
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")

# ---- static files, i18n ---------------------------------------------------------------------
STATIC_URL = "/static/"
STATIC_ROOT = DATA_DIR / "staticfiles"
STATIC_ROOT.mkdir(exist_ok=True)
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage" if DEBUG
        else "whitenoise.storage.CompressedManifestStaticFilesStorage",
    },
}
WHITENOISE_USE_FINDERS = DEBUG
MEDIA_ROOT = DATA_DIR / "media"
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain", "stream": sys.stderr}},
    "root": {"handlers": ["console"], "level": os.environ.get("LOG_LEVEL", "INFO")},
    "loggers": {"django.channels.server": {"level": "WARNING"}, "daphne": {"level": "WARNING"}},
}
