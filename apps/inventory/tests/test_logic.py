from decimal import Decimal

import pytest

from apps.inventory import logic
from apps.inventory.errors import OutOfStock, UnknownSku
from apps.inventory.models import Reservation, StockItem
from cliffracer_core import BadRequest

pytestmark = pytest.mark.django_db


@pytest.fixture
def shelf() -> dict[str, StockItem]:
    return {
        "T-BOOK": logic.stock_item_create(
            sku="T-BOOK", name="Book", price="10.00", quantity_on_hand=5
        ),
        "T-PEN": logic.stock_item_create(sku="T-PEN", name="Pen", price="1.50", quantity_on_hand=2),
    }


def levels(*skus: str) -> dict[str, tuple[int, int]]:
    return {
        item.sku: (item.quantity_on_hand, item.quantity_reserved)
        for item in StockItem.objects.filter(sku__in=skus)
    }


def test_quantities_by_sku_sums_repeated_skus():
    assert logic.quantities_by_sku([("A", 1), ("B", 2), ("A", 3)]) == {"A": 4, "B": 2}


def test_stock_reserve_reserves_every_line_at_the_current_price(shelf):
    reservations = logic.stock_reserve(order_reference="o-1", quantities={"T-BOOK": 2, "T-PEN": 2})

    assert [(r.stock_item.sku, r.quantity, r.unit_price) for r in reservations] == [
        ("T-BOOK", 2, Decimal("10.00")),
        ("T-PEN", 2, Decimal("1.50")),
    ]
    assert levels("T-BOOK", "T-PEN") == {"T-BOOK": (5, 2), "T-PEN": (2, 2)}
    assert set(
        Reservation.objects.filter(order_reference="o-1").values_list("status", flat=True)
    ) == {"reserved"}
    assert StockItem.objects.get(sku="T-PEN").quantity_available == 0


def test_stock_reserve_refuses_short_lines_and_reserves_nothing(shelf):
    logic.stock_reserve(order_reference="o-1", quantities={"T-PEN": 1})

    with pytest.raises(OutOfStock) as raised:
        logic.stock_reserve(order_reference="o-2", quantities={"T-BOOK": 1, "T-PEN": 2})

    assert raised.value.code == 409
    assert "T-PEN" in raised.value.message and "T-BOOK" not in raised.value.message
    assert raised.value.details == {"short": [{"sku": "T-PEN", "requested": 2, "available": 1}]}
    assert levels("T-BOOK", "T-PEN") == {"T-BOOK": (5, 0), "T-PEN": (2, 1)}
    assert not Reservation.objects.filter(order_reference="o-2").exists()


def test_stock_reserve_names_unknown_skus(shelf):
    with pytest.raises(UnknownSku) as raised:
        logic.stock_reserve(order_reference="o-1", quantities={"T-BOOK": 1, "T-NOPE": 1})

    assert raised.value.code == 404
    assert raised.value.details == {"unknown_skus": ["T-NOPE"]}
    assert levels("T-BOOK") == {"T-BOOK": (5, 0)}


def test_stock_reserve_again_for_the_same_order_returns_the_first_reservation(shelf):
    first = logic.stock_reserve(order_reference="o-1", quantities={"T-BOOK": 2})
    again = logic.stock_reserve(order_reference="o-1", quantities={"T-BOOK": 2})

    assert [r.pk for r in again] == [r.pk for r in first]
    assert levels("T-BOOK") == {"T-BOOK": (5, 2)}


@pytest.mark.parametrize("quantities", [{}, {"T-BOOK": 0}])
def test_stock_reserve_needs_positive_quantities(shelf, quantities):
    with pytest.raises(BadRequest):
        logic.stock_reserve(order_reference="o-1", quantities=quantities)


def test_stock_commit_takes_reserved_stock_off_the_shelf_once(shelf):
    logic.stock_reserve(order_reference="o-1", quantities={"T-BOOK": 2, "T-PEN": 1})

    assert logic.stock_commit(order_reference="o-1") == 2
    assert logic.stock_commit(order_reference="o-1") == 0
    assert logic.stock_release(order_reference="o-1") == 0

    assert levels("T-BOOK", "T-PEN") == {"T-BOOK": (3, 0), "T-PEN": (1, 0)}
    assert set(
        Reservation.objects.filter(order_reference="o-1").values_list("status", flat=True)
    ) == {"committed"}


def test_stock_release_makes_reserved_stock_available_again_once(shelf):
    logic.stock_reserve(order_reference="o-1", quantities={"T-BOOK": 2})
    logic.stock_reserve(order_reference="o-2", quantities={"T-BOOK": 1})

    assert logic.stock_release(order_reference="o-1") == 1
    assert logic.stock_release(order_reference="o-1") == 0
    assert logic.stock_commit(order_reference="o-1") == 0

    assert levels("T-BOOK") == {"T-BOOK": (5, 1)}
    assert Reservation.objects.get(order_reference="o-1").status == "released"
    assert Reservation.objects.get(order_reference="o-2").status == "reserved"


def test_stock_levels_of_named_skus(shelf):
    assert [item.sku for item in logic.stock_levels(skus=["T-PEN", "T-BOOK"])] == [
        "T-BOOK",
        "T-PEN",
    ]
    assert {"T-BOOK", "T-PEN"} <= {item.sku for item in logic.stock_levels()}
    with pytest.raises(UnknownSku):
        logic.stock_levels(skus=["T-PEN", "T-NOPE"])


def test_stock_seed_demo_creates_missing_items_and_keeps_existing_ones():
    StockItem.objects.filter(sku__in=[sku for sku, *_ in logic.DEMO_STOCK]).delete()
    first_sku = logic.DEMO_STOCK[0][0]

    logic.stock_seed_demo()
    StockItem.objects.filter(sku=first_sku).update(quantity_on_hand=1)
    items = logic.stock_seed_demo()

    assert [item.sku for item in items] == [sku for sku, *_ in logic.DEMO_STOCK]
    assert StockItem.objects.get(sku=first_sku).quantity_on_hand == 1
