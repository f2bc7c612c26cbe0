"""Who may call the orders service's RPCs, with orders and inventory running in-process."""

import pytest
from django.contrib.auth.models import Permission, User

from apps.inventory.logic import stock_item_create
from apps.inventory.service import InventoryService
from apps.orders.models import Order
from apps.orders.service import OrdersService
from cliffracer_core import PermissionDenied, call
from cliffracer_core.contrib.rest.auth import TokenObtainPairSerializer
from cliffracer_core.core.errors import RemoteNotFound

pytestmark = [
    pytest.mark.django_db(transaction=True),
    # In-process services on an in-memory broker: no nats-server (docs/testing.md).
    pytest.mark.usefixtures("memory_transport"),
]

CUSTOMER = ("orders.add_order", "orders.view_order", "inventory.reserve_stock")


@pytest.fixture
def services(start_service):
    stock_item_create(sku="S-BOOK", name="Book", price="10.00", quantity_on_hand=5)
    start_service(InventoryService)
    start_service(OrdersService, relay=True)


def user(username: str, *permissions: str) -> User:
    person = User.objects.create_user(username, f"{username}@example.com")
    for permission in permissions:
        app_label, codename = permission.split(".")
        person.user_permissions.add(
            Permission.objects.get(content_type__app_label=app_label, codename=codename)
        )
    return person


def as_user(person: User) -> dict[str, str]:
    token = TokenObtainPairSerializer.get_token(person).access_token
    return {"Authorization": f"Bearer {token}"}


def create_order(person: User, customer_id: int | None = None) -> dict:
    return call(
        "orders.create_order",
        {
            "customer_id": customer_id or person.pk,
            "customer_email": person.email,
            "lines": [{"sku": "S-BOOK", "quantity": 1}],
            "payment_token": "tok_visa",
        },
        headers=as_user(person),
    )


def test_a_customer_places_an_order_for_themselves(services):
    ada = user("ada", *CUSTOMER)

    placed = create_order(ada)

    assert Order.objects.get(pk=placed["order_id"]).customer_id == ada.pk


def test_placing_an_order_needs_add_order(services):
    with pytest.raises(PermissionDenied) as refused:
        create_order(user("eve"))

    assert refused.value.details == {"missing_permissions": ["orders.add_order"]}


def test_a_customer_may_not_place_an_order_for_someone_else(services):
    with pytest.raises(PermissionDenied):
        create_order(user("ada", *CUSTOMER), customer_id=999)

    assert not Order.objects.exists()


def test_place_order_for_others_lifts_the_limit(services):
    placed = create_order(user("otto", *CUSTOMER, "orders.place_order_for_others"), customer_id=999)

    assert Order.objects.get(pk=placed["order_id"]).customer_id == 999


def test_get_order_shows_customers_their_own_and_staff_every_order(services):
    ada, grace = user("ada", *CUSTOMER), user("grace", *CUSTOMER)
    linus = user("linus", "orders.view_order", "orders.view_all_orders")
    order_id = create_order(ada)["order_id"]

    def get(person: User) -> dict:
        return call("orders.get_order", {"order_id": order_id}, headers=as_user(person))

    assert get(ada)["customer_id"] == ada.pk
    assert get(linus)["order_id"] == order_id
    # Outside any request the test acts as the system identity, which reads every order.
    assert call("orders.get_order", {"order_id": order_id})["order_id"] == order_id
    with pytest.raises(RemoteNotFound):
        get(grace)
