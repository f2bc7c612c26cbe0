"""Schedule ``cancel_unpaid_orders`` every minute, as a periodic task beat reads from the database.

Created once, here, rather than from ``CELERY_BEAT_SCHEDULE``: django-celery-beat writes that
setting over the database at every start, which would undo what an operator changed in the
admin (the interval, or the task switched off). From here on the admin is where it is edited.
"""

from django.db import migrations
from django.utils import timezone

NAME = "Cancel orders left unpaid"
TASK = "apps.orders.tasks.cancel_unpaid_orders"


def schedule(apps, schema_editor):
    IntervalSchedule = apps.get_model("django_celery_beat", "IntervalSchedule")
    PeriodicTask = apps.get_model("django_celery_beat", "PeriodicTask")
    PeriodicTasks = apps.get_model("django_celery_beat", "PeriodicTasks")
    every_minute, _ = IntervalSchedule.objects.get_or_create(every=1, period="minutes")
    PeriodicTask.objects.get_or_create(
        name=NAME,
        defaults={
            "task": TASK,
            "interval": every_minute,
            "description": (
                "Cancels the orders still unpaid ORDERS_PAYMENT_DEADLINE after they were placed; "
                "inventory releases their stock when it hears orders.cancelled."
            ),
        },
    )
    # What a running beat checks to notice changes (the model's signals do not run here).
    PeriodicTasks.objects.update_or_create(ident=1, defaults={"last_update": timezone.now()})


def unschedule(apps, schema_editor):
    PeriodicTask = apps.get_model("django_celery_beat", "PeriodicTask")
    PeriodicTask.objects.filter(name=NAME, task=TASK).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("orders", "0004_order_cancelled"),
        ("django_celery_beat", "0019_alter_periodictasks_options"),
    ]

    operations = [migrations.RunPython(schedule, unschedule)]
