from django.contrib import admin

from apps.orders.models import Order, OrderLine


class OrderLineInline(admin.TabularInline):
    model = OrderLine
    extra = 0
    fields = ["sku", "name", "quantity", "unit_price"]
    readonly_fields = fields
    can_delete = False

    def has_add_permission(self, request, obj=None) -> bool:
        return False


@admin.register(Order)
class OrderAdmin(admin.ModelAdmin):
    list_display = [
        "id",
        "reference",
        "customer_id",
        "customer_email",
        "status",
        "total",
        "created_at",
        "updated_at",
    ]
    list_filter = ["status", "created_at"]
    search_fields = ["reference", "customer_email"]
    date_hierarchy = "created_at"
    readonly_fields = ["reference", "total", "created_at", "updated_at"]
    inlines = [OrderLineInline]
