"""The monitor: a built-in service app that samples every service into the database.

It is what the operations console in the admin reads (docs/console.md): ``runservices`` and
``make run`` start it like any other service app, ``manage.py runservice monitor`` alone.
"""
