"""The REST surface: token endpoints, roles, the example's APIs, and their OpenAPI description.

These run through Django's test client against the real database. Placing an order needs the
inventory service; tests/test_ecommerce_flow.py places orders over REST with every service
running, and here the inventory runs in-process on the test nats-server.
"""

from __future__ import annotations

import uuid
from decimal import Decimal
from typing import Any

import jwt
import pytest
from django.contrib.auth.models import Group, Permission, User
from django.core.cache import cache
from django.test import Client
from rest_framework.throttling import ScopedRateThrottle
from rest_framework_simplejwt.settings import api_settings as jwt_settings

from apps.inventory.logic import stock_item_create
from apps.inventory.models import Reservation, StockItem
from apps.inventory.schemas import ReservedLine
from apps.inventory.service import InventoryService
from apps.notifications.logic import notification_for_order_status
from apps.orders import logic as orders_logic
from apps.orders.models import Order
from cliffracer_core import call
from cliffracer_core.contrib.rest.auth import TokenObtainPairSerializer
from cliffracer_core.core.errors import PermissionDenied
from tests.roles import restore_roles

PASSWORD = "correct horse battery staple"


@pytest.fixture(autouse=True)
def fresh_throttle() -> None:
    """Throttle counts live in the cache; each test starts with none."""
    cache.clear()


@pytest.fixture
def make_user(django_user_model) -> Any:
    def make(username: str, *roles: str, email: str | None = None) -> User:
        user = django_user_model.objects.create_user(
            username, f"{username}@example.com" if email is None else email, PASSWORD
        )
        user.groups.add(*(Group.objects.get(name=role) for role in roles))
        return user

    return make


def access_token(user: User) -> str:
    return str(TokenObtainPairSerializer.get_token(user).access_token)


def api(user: User | None = None) -> Client:
    """A test client that sends ``user``'s access token with every request."""
    headers = {"Authorization": f"Bearer {access_token(user)}"} if user else {}
    return Client(headers=headers)


def decode(token: str) -> dict[str, Any]:
    return jwt.decode(
        token,
        jwt_settings.VERIFYING_KEY,
        algorithms=[jwt_settings.ALGORITHM],
        issuer=jwt_settings.ISSUER,
    )


def make_order(customer: User, status: str = "pending_payment", total: str = "10.00") -> Order:
    order = orders_logic.order_create(
        reference=uuid.uuid4(),
        customer_id=customer.pk,
        customer_email=customer.email,
        lines=[ReservedLine(sku="R-BOOK", name="Book", quantity=1, unit_price=Decimal(total))],
    )
    Order.objects.filter(pk=order.pk).update(status=status)
    return order


# Tokens


@pytest.mark.django_db
def test_token_endpoint_issues_tokens_with_identity_claims(client, make_user):
    user = make_user("ada", "customer")

    response = client.post(
        "/api/auth/token/",
        {"username": "ada", "password": PASSWORD},
        content_type="application/json",
    )

    assert response.status_code == 200
    tokens = response.json()
    assert set(tokens) == {"access", "refresh"}
    claims = decode(tokens["access"])
    assert claims["user_id"] == str(user.pk)
    assert claims["username"] == "ada"
    assert claims["groups"] == ["customer"]
    assert "orders.add_order" in claims["permissions"]
    assert "inventory.reserve_stock" not in claims["permissions"]
    assert claims["is_superuser"] is False
    assert claims["iss"] == jwt_settings.ISSUER


@pytest.mark.django_db
def test_token_endpoint_refuses_a_wrong_password(client, make_user):
    make_user("ada", "customer")

    response = client.post(
        "/api/auth/token/", {"username": "ada", "password": "nope"}, content_type="application/json"
    )

    assert response.status_code == 401
    assert PASSWORD not in response.content.decode()


@pytest.mark.django_db
def test_refresh_gives_an_access_token_with_the_permissions_of_now(client, make_user):
    user = make_user("ada", "customer")
    refresh = client.post(
        "/api/auth/token/",
        {"username": "ada", "password": PASSWORD},
        content_type="application/json",
    ).json()["refresh"]
    user.groups.add(Group.objects.get(name="staff"))

    response = client.post(
        "/api/auth/token/refresh/", {"refresh": refresh}, content_type="application/json"
    )

    assert response.status_code == 200
    claims = decode(response.json()["access"])
    assert claims["groups"] == ["customer", "staff"]
    assert "orders.view_all_orders" in claims["permissions"]


@pytest.mark.django_db
@pytest.mark.parametrize("change", ["deactivate", "delete"])
def test_refresh_refuses_a_user_who_is_gone(client, make_user, change):
    user = make_user("ada", "customer")
    refresh = client.post(
        "/api/auth/token/",
        {"username": "ada", "password": PASSWORD},
        content_type="application/json",
    ).json()["refresh"]
    if change == "deactivate":
        User.objects.filter(pk=user.pk).update(is_active=False)
    else:
        user.delete()

    response = client.post(
        "/api/auth/token/refresh/", {"refresh": refresh}, content_type="application/json"
    )

    assert response.status_code == 401


@pytest.mark.django_db
def test_verify_accepts_a_valid_token_and_refuses_a_tampered_one(client, make_user):
    token = access_token(make_user("ada", "customer"))
    header, payload, signature = token.split(".")
    tampered = f"{header}.{payload}.{signature[:-4]}AAAA"

    valid = client.post(
        "/api/auth/token/verify/", {"token": token}, content_type="application/json"
    )
    invalid = client.post(
        "/api/auth/token/verify/", {"token": tampered}, content_type="application/json"
    )

    assert (valid.status_code, invalid.status_code) == (200, 401)


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/api/auth/token/", {"username": "ada", "password": "nope"}),
        ("/api/auth/token/refresh/", {"refresh": "x"}),
        ("/api/auth/token/verify/", {"token": "x"}),
    ],
)
def test_token_endpoints_are_throttled(client, monkeypatch, path, body):
    monkeypatch.setattr(ScopedRateThrottle, "THROTTLE_RATES", {"auth": "3/minute"})

    statuses = [
        client.post(path, body, content_type="application/json").status_code for _ in range(4)
    ]

    assert statuses == [401, 401, 401, 429]


# Roles

ROLES = {
    # Not inventory.reserve_stock: orders reserves as the system identity (docs/security.md).
    "customer": {
        "inventory.view_stockitem",
        "notifications.view_notification",
        "orders.add_order",
        "orders.view_order",
    },
    "staff": {
        "cliffracer_core.view_services",
        "inventory.change_stockitem",
        "inventory.view_reservation",
        "inventory.view_stockitem",
        "notifications.change_notification",
        "notifications.view_all_notifications",
        "notifications.view_notification",
        "orders.change_order",
        "orders.change_orderline",
        "orders.view_all_orders",
        "orders.view_order",
        "orders.view_orderline",
        "payments.change_payment",
        "payments.view_payment",
    },
}


@pytest.mark.django_db
def test_the_migrations_create_the_roles_with_their_permissions():
    def permissions(role: str) -> set[str]:
        return {
            f"{app_label}.{codename}"
            for app_label, codename in Group.objects.get(name=role).permissions.values_list(
                "content_type__app_label", "codename"
            )
        }

    assert permissions("customer") == ROLES["customer"]
    assert permissions("staff") == ROLES["staff"]
    # Operators hold every permission of the example's apps, and use the operations console.
    assert permissions("operator") == {
        f"{app_label}.{codename}"
        for app_label, codename in Permission.objects.filter(
            content_type__app_label__in=["orders", "inventory", "payments", "notifications"]
        ).values_list("content_type__app_label", "codename")
    } | {"cliffracer_core.view_services", "cliffracer_core.call_services"}


@pytest.mark.django_db
def test_the_permissions_that_guard_rpcs_exist_for_the_admin():
    names = dict(
        Permission.objects.filter(
            codename__in=[
                "reserve_stock",
                "release_stock",
                "view_all_orders",
                "place_order_for_others",
                "view_all_notifications",
            ]
        ).values_list("codename", "name")
    )

    assert names == {
        "reserve_stock": "Can reserve stock for an order",
        "release_stock": "Can release the stock reserved for an order",
        "view_all_orders": "Can view every customer's orders",
        "place_order_for_others": "Can place orders for other customers",
        "view_all_notifications": "Can view every customer's notifications",
    }


# Orders


@pytest.mark.django_db
def test_orders_list_shows_a_customer_their_own_and_staff_everyone(make_user):
    ada, grace = make_user("ada", "customer"), make_user("grace", "customer")
    staff = make_user("linus", "staff")
    ada_order, grace_order = make_order(ada), make_order(grace)

    mine = api(ada).get("/api/orders/").json()
    everyone = api(staff).get("/api/orders/").json()

    assert [order["id"] for order in mine["results"]] == [ada_order.pk]
    assert mine["results"][0]["customer_email"] == "ada@example.com"
    assert mine["results"][0]["lines"] == [
        {
            "sku": "R-BOOK",
            "name": "Book",
            "quantity": 1,
            "unit_price": "10.00",
            "line_total": "10.00",
        }
    ]
    assert {order["id"] for order in everyone["results"]} == {ada_order.pk, grace_order.pk}


@pytest.mark.django_db
def test_orders_list_filters_by_status_and_paginates(make_user):
    staff = make_user("linus", "staff")
    customer = make_user("ada", "customer")
    paid = [make_order(customer, "paid") for _ in range(3)]
    make_order(customer, "payment_failed")
    client = api(staff)

    first = client.get("/api/orders/", {"status": "paid", "limit": 2}).json()
    second = client.get(first["next"]).json()

    assert first["count"] == 3
    assert [order["id"] for order in first["results"] + second["results"]] == [
        order.pk for order in reversed(paid)
    ]
    assert second["next"] is None
    assert client.get("/api/orders/", {"status": "lost"}).status_code == 400
    assert client.get("/api/orders/", {"offset": 10**30}).json()["results"] == []


@pytest.mark.django_db
def test_order_detail_of_another_customers_order_is_not_found(make_user):
    ada, grace = make_user("ada", "customer"), make_user("grace", "customer")
    order = make_order(ada)

    own = api(ada).get(f"/api/orders/{order.pk}/")
    other = api(grace).get(f"/api/orders/{order.pk}/")
    staff = api(make_user("linus", "staff")).get(f"/api/orders/{order.pk}/")

    assert own.status_code == 200
    assert own.json()["reference"] == str(order.reference)
    assert other.status_code == 404
    assert other.json()["error"]["type"] == "order_not_found"
    assert staff.status_code == 200


@pytest.mark.django_db
@pytest.mark.parametrize(
    "path", ["/api/orders/", "/api/orders/1/", "/api/inventory/stock/", "/api/notifications/"]
)
def test_lists_need_credentials_and_a_permission(make_user, path):
    nobody = make_user("eve")

    anonymous = Client().get(path)
    forbidden = api(nobody).get(path)

    assert anonymous.status_code == 401
    assert forbidden.status_code == 403
    assert "You need the permission" in forbidden.json()["detail"]


@pytest.mark.django_db
def test_placing_an_order_needs_add_order(make_user):
    staff = make_user("linus", "staff")

    response = api(staff).post(
        "/api/orders/",
        {"lines": [{"sku": "R-BOOK", "quantity": 1}], "payment_token": "tok_visa"},
        content_type="application/json",
    )

    assert response.status_code == 403
    assert "orders.add_order" in response.json()["detail"]


@pytest.mark.django_db
@pytest.mark.parametrize(
    "body",
    [
        {},
        {"lines": [], "payment_token": "tok_visa"},
        {"lines": [{"sku": "R-BOOK", "quantity": 0}], "payment_token": "tok_visa"},
        {"lines": [{"sku": "R-BOOK", "quantity": 1}]},
        {"lines": [{"sku": "a b", "quantity": 1}], "payment_token": "tok_visa"},
        {"lines": [{"sku": "R-BOOK\n", "quantity": 1}], "payment_token": "tok_visa"},
        {"lines": [{"sku": 7, "quantity": 1}], "payment_token": "tok_visa"},
        {"lines": [{"sku": "R-BOOK", "quantity": 1}], "payment_token": "tok visa"},
        {"lines": [{"sku": "R-BOOK", "quantity": 1}], "payment_token": " tok_visa"},
        {"lines": [{"sku": "R-BOOK", "quantity": 1}], "payment_token": "tok_\u00e9"},
    ],
)
def test_placing_an_invalid_order_is_400_and_calls_nobody(make_user, body):
    # Nobody answers inventory.reserve_stock here: a body that got that far would be a 503.
    response = api(make_user("ada", "customer")).post(
        "/api/orders/", body, content_type="application/json"
    )

    assert response.status_code == 400, response.content
    assert not Order.objects.exists()


@pytest.mark.django_db
def test_an_order_is_validated_by_the_services_contract_with_field_paths(make_user):
    # The REST body is held to orders.create_order's CreateOrder, as an RPC caller would be.
    body = {
        "lines": [{"sku": "R-BOOK", "quantity": 1}, {"sku": "a b", "quantity": 1}],
        "payment_token": "tok visa",
    }
    response = api(make_user("ada", "customer")).post(
        "/api/orders/", body, content_type="application/json"
    )

    assert response.status_code == 400
    errors = response.json()
    assert set(errors) == {"lines", "payment_token"}
    assert list(errors["lines"]) == ["1"]
    assert "pattern" in errors["lines"]["1"]["sku"][0]
    assert "pattern" in errors["payment_token"][0]


@pytest.mark.django_db
def test_placing_an_order_without_an_email_is_400(make_user):
    response = api(make_user("ada", "customer", email="")).post(
        "/api/orders/",
        {"lines": [{"sku": "R-BOOK", "quantity": 1}], "payment_token": "tok_visa"},
        content_type="application/json",
    )

    assert response.status_code == 400
    assert "email" in response.json()


@pytest.mark.django_db(transaction=True)
def test_placing_an_order_without_inventory_running_is_503(nats_server, make_user):
    restore_roles()
    response = api(make_user("ada", "customer")).post(
        "/api/orders/",
        {"lines": [{"sku": "R-BOOK", "quantity": 1}], "payment_token": "tok_visa"},
        content_type="application/json",
    )

    assert response.status_code == 503
    assert response.json()["error"]["type"] == "inventory_unavailable"
    assert not Order.objects.exists()


@pytest.fixture
def inventory(transactional_db, start_service) -> Any:
    restore_roles()
    stock_item_create(sku="R-BOOK", name="Book", price="10.00", quantity_on_hand=5)
    return start_service(InventoryService)


def test_placing_an_order_reserves_its_stock(inventory, make_user):
    ada = make_user("ada", "customer")

    response = api(ada).post(
        "/api/orders/",
        {"lines": [{"sku": "R-BOOK", "quantity": 2}], "payment_token": "tok_visa"},
        content_type="application/json",
    )

    assert response.status_code == 201, response.content
    body = response.json()
    assert response["Location"] == f"/api/orders/{body['id']}/"
    assert (body["customer_id"], body["customer_email"]) == (ada.pk, "ada@example.com")
    assert (body["status"], body["total"]) == ("pending_payment", "20.00")
    assert Reservation.objects.get(order_reference=body["reference"]).quantity == 2


def test_a_session_users_order_reaches_inventory_with_a_token(inventory, make_user):
    client = Client()
    client.force_login(make_user("ada", "customer"))

    response = client.post(
        "/api/orders/",
        {"lines": [{"sku": "R-BOOK", "quantity": 1}], "payment_token": "tok_visa"},
        content_type="application/json",
    )

    assert response.status_code == 201, response.content


def test_a_customer_cannot_reserve_stock_without_an_order(inventory, make_user):
    # Orders reserves for the orders it accepts, as the system identity; a customer's own token
    # may not hold stock (an attack run reserved all of it this way, with no order).
    ada = make_user("ada", "customer")
    with pytest.raises(PermissionDenied) as refused:
        call(
            "inventory.reserve_stock",
            {"order_reference": "attack", "lines": [{"sku": "R-BOOK", "quantity": 5}]},
            headers={"Authorization": f"Bearer {access_token(ada)}"},
        )
    assert refused.value.details == {"missing_permissions": ["inventory.reserve_stock"]}
    assert not Reservation.objects.exists()
    assert StockItem.objects.get(sku="R-BOOK").quantity_reserved == 0


def test_an_order_for_an_unknown_sku_is_404_with_details(inventory, make_user):
    response = api(make_user("ada", "customer")).post(
        "/api/orders/",
        {"lines": [{"sku": "R-NOPE", "quantity": 1}], "payment_token": "tok_visa"},
        content_type="application/json",
    )

    assert response.status_code == 404
    assert response.json()["error"]["details"] == {"unknown_skus": ["R-NOPE"]}


# Inventory and notifications


@pytest.mark.django_db
def test_stock_list_filters_by_sku_name_and_availability(make_user):
    stock_item_create(sku="S-MUG", name="Mug", price="12.50", quantity_on_hand=3)
    stock_item_create(sku="S-CAP", name="Cap", price="15.00", quantity_on_hand=0)
    stock_item_create(sku="S-TEE", name="T-shirt", price="19.00", quantity_on_hand=9)
    client = api(make_user("ada", "customer"))

    def skus(**query: Any) -> list[str]:
        response = client.get("/api/inventory/stock/", {"sku": "S-MUG,S-CAP,S-TEE", **query})
        return [item["sku"] for item in response.json()["results"]]

    assert skus() == ["S-CAP", "S-MUG", "S-TEE"]
    assert skus(sku="S-MUG,S-TEE") == ["S-MUG", "S-TEE"]
    assert skus(name="shirt") == ["S-TEE"]
    assert skus(in_stock="true") == ["S-MUG", "S-TEE"]
    assert skus(in_stock="false") == ["S-CAP"]
    [mug] = client.get("/api/inventory/stock/", {"sku": "S-MUG"}).json()["results"]
    assert mug == {
        "sku": "S-MUG",
        "name": "Mug",
        "price": "12.50",
        "quantity_on_hand": 3,
        "quantity_reserved": 0,
        "quantity_available": 3,
    }


@pytest.mark.django_db
def test_notifications_list_shows_a_customer_their_own(make_user):
    ada, grace = make_user("ada", "customer"), make_user("grace", "customer")
    for order_id, customer in ((1, ada), (2, grace)):
        for status in ("pending_payment", "paid"):
            notification_for_order_status(
                order_id=order_id,
                customer_id=customer.pk,
                email=customer.email,
                status=status,
                total=Decimal("5.00"),
            )

    mine = api(ada).get("/api/notifications/").json()["results"]
    paid = api(make_user("linus", "staff")).get("/api/notifications/", {"kind": "order_paid"})

    assert {(n["order_id"], n["kind"]) for n in mine} == {(1, "order_created"), (1, "order_paid")}
    assert sorted(n["order_id"] for n in paid.json()["results"]) == [1, 2]


# The OpenAPI description


@pytest.mark.django_db
def test_the_schema_describes_the_rest_apis(client):
    response = client.get("/api/schema/", {"format": "json"})

    assert response.status_code == 200
    paths = response.json()["paths"]
    assert {"get", "post"} <= set(paths["/api/orders/"])
    post = paths["/api/orders/"]["post"]
    assert post["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/OrderPlaceRequest"
    }
    assert {"201", "400", "401", "403", "404", "409", "503"} <= set(post["responses"])
    listing = {parameter["name"] for parameter in paths["/api/orders/"]["get"]["parameters"]}
    assert {"status", "limit", "offset"} <= listing
    assert {"/api/orders/{order_id}/", "/api/inventory/stock/", "/api/notifications/"} <= set(paths)
    assert {"/api/auth/token/", "/api/auth/token/refresh/", "/api/auth/token/verify/"} <= set(paths)


@pytest.mark.django_db
def test_the_api_docs_load_nothing_from_a_cdn(client):
    response = client.get("/api/docs/")

    assert response.status_code == 200
    page = response.content.decode()
    assert "swagger-ui" in page
    assert "cdn" not in page.lower()
    assert "/static/drf_spectacular_sidecar/" in page
