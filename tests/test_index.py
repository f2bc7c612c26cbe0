"""The site root (``cliffracer_core/dev/index.py``) served by daphne, as ``make run`` serves it."""

from __future__ import annotations

import http.client
import re
from urllib.parse import urlsplit

import pytest
from pydantic import BaseModel

from cliffracer_core import Service, rpc

# Every page the start page must lead to (settings/urls.py), and the tools it must name.
PAGES = [
    "/live/",
    "/admin/",
    "/admin/services/",
    "/admin/service-errors/",
    "/api/docs/",
    "/api/schema/",
    "/metrics",
    "/healthz",
    "/readyz",
]
COMMANDS = ["manage.py services", "manage.py call ", "manage.py listen ", "manage.py shell"]


class Greeting(BaseModel):
    text: str


def get(url: str, path: str) -> tuple[int, dict[str, str], str]:
    """GET ``path`` without following a redirect: (status, headers, body)."""
    address = urlsplit(url)
    connection = http.client.HTTPConnection(address.hostname, address.port, timeout=10)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read().decode()
    finally:
        connection.close()


@pytest.fixture
def greeter(start_service, unique_name) -> str:
    class Greeter(Service):
        name = unique_name
        version = "7.8.9"

        @rpc(public=True)
        async def hello(self) -> Greeting:
            return Greeting(text="hello")

    start_service(Greeter)
    return unique_name


@pytest.mark.django_db(transaction=True)
def test_the_root_page_says_what_runs_and_links_to_everything(web_process, greeter):
    web = web_process(DEBUG="1")
    status, headers, page = get(web.url, "/")
    assert status == 200, page
    assert "Cliffracer is running" in page
    # A running service, found by discovery, with its instance, version and endpoints.
    cells = [greeter, "1", "7.8.9", "hello", "-"]
    row = r'<tr class="up">\s*' + r"\s*".join(f"<td>{re.escape(cell)}</td>" for cell in cells)
    assert re.search(row, page), page
    # An installed service app that is not running is listed as such.
    assert re.search(r"<td>orders</td>\s*<td>not running</td>", page)
    links = re.findall(r'href="([^"]+)"', page)
    assert set(PAGES) <= set(links)
    for command in COMMANDS:
        assert command in page
    # No script, and nothing from another site: it works offline and without JavaScript.
    assert "<script" not in page
    assert all(link.startswith("/") for link in links)
    assert "script-src" not in headers["Content-Security-Policy"]
    [stylesheet] = [link for link in links if link.endswith(".css")]
    assert get(web.url, stylesheet)[0] == 200


@pytest.mark.django_db(transaction=True)
def test_with_debug_off_the_root_redirects_to_the_admin(web_process):
    web = web_process(DEBUG="0")
    status, headers, _ = get(web.url, "/")
    assert status == 302
    assert headers["Location"] == "/admin/"
