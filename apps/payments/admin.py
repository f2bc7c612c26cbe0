from django.contrib import admin

from apps.payments.models import Payment


@admin.register(Payment)
class PaymentAdmin(admin.ModelAdmin):
    list_display = ["id", "order_id", "amount", "status", "failure_reason", "created_at"]
    list_filter = ["status", "failure_reason", "created_at"]
    search_fields = ["order_reference"]
    date_hierarchy = "created_at"
    # A payment is a record of money taken; nobody edits it by hand.
    readonly_fields = [field.name for field in Payment._meta.fields]

    def has_add_permission(self, request, obj=None) -> bool:
        return False
