from django.contrib import admin

from apps.notifications.models import Notification


@admin.register(Notification)
class NotificationAdmin(admin.ModelAdmin):
    list_display = ["id", "kind", "order_id", "customer_id", "email", "created_at", "emailed_at"]
    list_filter = ["kind", "created_at"]
    search_fields = ["email", "message"]
    date_hierarchy = "created_at"
    readonly_fields = [field.name for field in Notification._meta.fields]

    def has_add_permission(self, request, obj=None) -> bool:
        return False
