"""The live page (/live/) in a real browser: Debian's chromium, driven by Playwright.

Everything behind the page is real: daphne serving the project, the four example services as
``runservice`` processes, the suite's nats-server and database. The test reads the page's DOM;
the screenshots in test-artifacts/ are for people.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import Group, User
from django.core.cache import cache
from playwright.sync_api import expect

from apps.inventory.logic import stock_seed_demo
from apps.orders.models import Order
from cliffracer_core.testing.browser import browser_path, launch_chromium
from tests.roles import restore_roles

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
SERVICES = ("inventory", "orders", "payments", "notifications")
PASSWORD = "correct horse battery staple"
TIMEOUT_MS = 20_000

pytestmark = pytest.mark.django_db(transaction=True)


def make_user(username: str, group: str) -> User:
    user = User.objects.create_user(username, f"{username}@example.com", PASSWORD)
    user.groups.add(Group.objects.get(name=group))
    return user


@pytest.fixture
def roles(transactional_db) -> None:
    restore_roles()
    # The token endpoint is throttled per client address; start without earlier tests' counts.
    cache.clear()


@pytest.fixture
def shop(roles, runservice_process) -> None:
    """The demo stock, and every service of the example in its own process."""
    stock_seed_demo()
    processes = [runservice_process(label, wait=False) for label in SERVICES]
    for process in processes:
        process.wait_serving()


@pytest.fixture(autouse=True)
def browser_present() -> None:
    """Skip (fail under CI=true) before any service starts when there is no browser."""
    browser_path()


def open_page(browser: Any, base_url: str, *, route: Any = None) -> Any:
    """A page of its own browser context: its own cookies, as a second browser would have.

    Its script errors, and what the browser refused (Content-Security-Policy), gather in
    ``page.problems``; ``route`` handles its WebSockets to /ws/events/.
    """
    page = browser.new_context(viewport={"width": 1200, "height": 900}).new_page()
    page.set_default_timeout(TIMEOUT_MS)
    page.problems = []

    def on_console(message: Any) -> None:
        # Refused requests (the wrong password's 401) are the page's business, in its DOM.
        if message.type == "error" and not message.text.startswith("Failed to load resource"):
            page.problems.append(message.text)

    page.on("console", on_console)
    page.on("pageerror", lambda error: page.problems.append(str(error)))
    if route is not None:
        page.route_web_socket("**/ws/events/", route)
    page.goto(f"{base_url}/live/")
    return page


def log_in(page: Any, username: str, password: str = PASSWORD) -> None:
    page.fill("#username", username)
    page.fill("#password", password)
    page.click("#login button[type=submit]")


def expect_subscribed(page: Any, subject: str) -> None:
    expect(page.locator(f'#subscriptions li[data-subject="{subject}"]')).to_have_attribute(
        "data-state", "subscribed", timeout=TIMEOUT_MS
    )


def place_order(page: Any, sku: str, quantity: int, payment: str) -> dict[str, str]:
    """Place an order with the page's form; the reply's order id and correlation id."""
    page.select_option("#sku", sku)
    page.fill("#quantity", str(quantity))
    page.check(f'input[name=payment_token][value="{payment}"]')
    page.click("#place-order")
    # The form says "pending" from the click until the reply or error frame comes.
    result = page.locator("#order-result")
    expect(result).not_to_have_attribute("data-outcome", "pending", timeout=TIMEOUT_MS)
    return {
        "outcome": result.get_attribute("data-outcome"),
        "order_id": result.get_attribute("data-order-id"),
        "correlation_id": result.get_attribute("data-correlation-id"),
        "text": result.inner_text(),
    }


def expect_status(page: Any, order_id: str, status: str) -> None:
    cell = page.locator(f'#orders tr[data-order-id="{order_id}"] td.status')
    expect(cell).to_have_attribute("data-status", status, timeout=TIMEOUT_MS)


def screenshot(page: Any, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"live-page-{name}.png"), full_page=True)


def test_a_customer_orders_and_an_operator_watches_live(shop, web_process):
    ada = make_user("ada", "customer")
    make_user("olga", "operator")
    web = web_process("web")

    with launch_chromium() as browser:
        operator = open_page(browser, web.url)
        log_in(operator, "olga")
        expect(operator.locator("#connection")).to_have_attribute("data-state", "connected")
        expect_subscribed(operator, "orders.*")
        expect(operator.locator("#order-panel")).to_be_hidden()

        customer = open_page(browser, web.url)
        log_in(customer, "ada", "not the password")
        expect(customer.locator("#login-error")).to_have_text("Wrong username or password.")
        screenshot(customer, "login")
        log_in(customer, "ada")
        expect(customer.locator("#connection")).to_have_attribute("data-state", "connected")
        expect_subscribed(customer, f"notifications.user.{ada.pk}")
        expect(customer.locator('#sku option[value="CLIFF-TEE"]')).to_have_count(1)
        customer.fill("#email", "ada@example.com")

        paid = place_order(customer, "CLIFF-TEE", 2, "tok_visa")
        declined = place_order(customer, "CLIFF-MUG", 1, "tok_decline")
        too_many = place_order(customer, "DJANGO-PONY", 6, "tok_visa")

        assert paid["outcome"] == declined["outcome"] == "placed", (paid, declined)
        assert "38.00" in paid["text"]
        assert (too_many["outcome"], too_many["order_id"]) == ("error", "")
        assert "out_of_stock" in too_many["text"]
        assert "DJANGO-PONY: 6 requested, 5 available" in too_many["text"]
        # The customer's table follows both orders to the end, from their notifications.
        expect_status(customer, paid["order_id"], "paid")
        expect_status(customer, declined["order_id"], "payment_failed")
        customer_log = customer.locator(f'#log li[data-subject="notifications.user.{ada.pk}"]')
        expect(customer_log).to_have_count(4)  # created and paid; created and payment failed
        # The operator sees the same orders, and every event of them, with the customer's
        # correlation ids: one id follows each order through every service.
        expect_status(operator, paid["order_id"], "paid")
        expect_status(operator, declined["order_id"], "payment_failed")
        operator_log = operator.locator("#log li.event")
        for order, final in ((paid, "orders.paid"), (declined, "orders.payment_failed")):
            trail = operator.locator(f'#log li[data-correlation-id="{order["correlation_id"]}"]')
            expect(trail).to_have_count(2)
            subjects = [item.get_attribute("data-subject") for item in trail.all()]
            assert subjects == [final, "orders.created"]  # newest first
        expect(operator_log).to_have_count(4)
        assert "ada@example.com" in operator.inner_text(
            f'#orders tr[data-order-id="{paid["order_id"]}"]'
        )
        screenshot(customer, "customer")
        screenshot(operator, "operator")
        assert customer.problems == operator.problems == []

    statuses = dict(Order.objects.values_list("pk", "status"))
    assert statuses == {
        int(paid["order_id"]): "paid",
        int(declined["order_id"]): "payment_failed",
    }


class SocketProxy:
    """Stands between the page and /ws/events/ (Playwright's WebSocket routing), keeping the
    frames the page sends, so that a test can read them and close a socket as a server would.
    """

    def __init__(self) -> None:
        self.routes: list[Any] = []
        self.sent: list[list[dict[str, Any]]] = []

    def __call__(self, route: Any) -> None:
        server = route.connect_to_server()
        frames: list[dict[str, Any]] = []

        def forward(message: str | bytes) -> None:
            frames.append(json.loads(message))
            server.send(message)

        route.on_message(forward)
        self.routes.append(route)
        self.sent.append(frames)

    def auth_frames(self, socket: int) -> int:
        return sum(frame["type"] == "auth" for frame in self.sent[socket])


def wait_until(page: Any, condition: Any, what: str) -> None:
    """Let the page run until ``condition()`` holds (Playwright's handlers run meanwhile)."""
    for _ in range(TIMEOUT_MS // 100):
        if condition():
            return
        page.wait_for_timeout(100)
    pytest.fail(f"Timed out waiting for {what}.")


def test_the_page_renews_its_token_reconnects_and_signs_out_on_4401(roles, web_process):
    ada = make_user("ada", "customer")
    # One-minute access tokens: the page renews them at once (a minute before they expire).
    web = web_process("web", JWT_ACCESS_MINUTES="1")
    proxy = SocketProxy()
    subject = f"notifications.user.{ada.pk}"

    with launch_chromium() as browser:
        page = open_page(browser, web.url, route=proxy)
        log_in(page, "ada")
        expect_subscribed(page, subject)

        # A renewed token goes to the open socket in a new auth frame; the socket lives on.
        wait_until(page, lambda: proxy.auth_frames(0) >= 2, "a renewed token on the socket")
        expect(page.locator("#connection")).to_have_attribute("data-state", "connected")
        assert len(proxy.routes) == 1

        # A socket the server closes comes back after a backoff, signed in and subscribed.
        proxy.routes[0].close(code=1012, reason="restarting")
        expect(page.locator("#log li.note")).to_contain_text(
            "Disconnected (the server restarted); reconnecting in"
        )
        expect_subscribed(page, subject)
        expect(page.locator("#connection")).to_have_attribute("data-state", "connected")
        assert len(proxy.routes) == 2
        assert proxy.auth_frames(1) >= 1

        # 4401: the credentials are no good any more; back to the login form.
        proxy.routes[1].close(code=4401, reason="token expired")
        expect(page.locator("#login-panel")).to_be_visible()
        expect(page.locator("#login-error")).to_contain_text("log in again")
        expect(page.locator("#connection")).to_have_attribute("data-state", "signed-out")
        expect(page.locator("#app")).to_be_hidden()
        page.wait_for_timeout(1000)
        assert len(proxy.routes) == 2  # no reconnecting after 4401
        assert page.problems == []
