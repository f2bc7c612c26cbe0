from django.contrib import admin

from apps.inventory.models import Reservation, StockItem


@admin.register(StockItem)
class StockItemAdmin(admin.ModelAdmin):
    list_display = [
        "sku",
        "name",
        "price",
        "quantity_on_hand",
        "quantity_reserved",
        "quantity_available",
        "updated_at",
    ]
    search_fields = ["sku", "name"]
    readonly_fields = ["quantity_reserved", "updated_at"]

    @admin.display(description="available")
    def quantity_available(self, item: StockItem) -> int:
        return item.quantity_available


@admin.register(Reservation)
class ReservationAdmin(admin.ModelAdmin):
    list_display = [
        "order_reference",
        "stock_item",
        "quantity",
        "unit_price",
        "status",
        "created_at",
        "updated_at",
    ]
    list_filter = ["status", "created_at"]
    list_select_related = ["stock_item"]
    search_fields = ["order_reference", "stock_item__sku"]
    # Reservations change only through the service, so that stock counts stay consistent.
    readonly_fields = [field.name for field in Reservation._meta.fields]

    def has_add_permission(self, request, obj=None) -> bool:
        return False
