"""The operations console in the admin: services, instances, endpoints, traffic and errors.

The pages read what the monitor service (``cliffracer_core.contrib.monitor``) stored in the
database, so they never wait on the messaging system; the RPC console and the event tail in
the browser go through the gateway and ``/ws/events/`` as the signed-in user. docs/console.md
describes it all.
"""
