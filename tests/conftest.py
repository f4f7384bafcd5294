"""Shared fixtures for the Django tests: one user per role and API clients signed in as them."""

from __future__ import annotations

import pytest


@pytest.fixture
def make_user(db, settings):  # noqa: ANN001, ANN201
    # a fast hasher: these accounts only exist inside the test database
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    from django.contrib.auth import get_user_model
    from django.contrib.auth.models import Group

    def make(username: str, *roles: str, password: str = "pass-for-tests-1"):  # noqa: ANN202
        user = get_user_model().objects.create_user(username=username, password=password)
        for role in roles:
            user.groups.add(Group.objects.get_or_create(name=role)[0])
        return user

    return make


@pytest.fixture
def builder(make_user):  # noqa: ANN001, ANN201
    return make_user("bea", "builder")


@pytest.fixture
def annotator(make_user):  # noqa: ANN001, ANN201
    return make_user("ann", "annotator")


@pytest.fixture
def moderator(make_user):  # noqa: ANN001, ANN201
    return make_user("mo", "moderator")


@pytest.fixture
def plain_user(make_user):  # noqa: ANN001, ANN201
    return make_user("pat")


@pytest.fixture
def api():  # noqa: ANN201
    """An APIClient; call ``api.force_authenticate(user)`` or use ``client_for``."""
    from rest_framework.test import APIClient

    return APIClient()


@pytest.fixture
def client_for():  # noqa: ANN201
    from rest_framework.test import APIClient

    def make(user):  # noqa: ANN001, ANN202
        client = APIClient()
        if user is not None:
            client.force_login(user)
        return client

    return make


@pytest.fixture(scope="module")
def studio_server(tmp_path_factory):  # noqa: ANN001, ANN201
    """The real studio (as ``make run`` starts it) on a free port with its own SQLite and queue."""
    from tests.live import StudioServer

    server = StudioServer(tmp_path_factory.mktemp("studio")).start()
    yield server
    code = server.stop()
    assert code == 0, f"the studio did not stop cleanly (exit {code}):\n{server.logs()[-4000:]}"


@pytest.fixture(scope="module")
def browser():  # noqa: ANN201
    """Headless Debian Chromium driven by Playwright, shared by the tests of one module.

    Module scope on purpose: sync Playwright keeps an event loop running while it is open, which
    would break ``asyncio.run`` in the websocket tests of later modules."""
    from tests.live import CHROMIUM_ARGS, chromium_path, services_required

    path = chromium_path()
    if path is None:
        message = "Debian's chromium is not installed (apt-get install chromium)"
        if services_required():
            pytest.fail(message)
        pytest.skip(message)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        launched = pw.chromium.launch(executable_path=path, headless=True, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.fixture
def page(browser):  # noqa: ANN001, ANN201
    """A fresh page; the test fails if the page raised a JavaScript error."""
    from tests.live import new_page

    pg = new_page(browser)
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    yield pg
    pg.context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"
