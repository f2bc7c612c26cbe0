"""Errors the inventory service raises on purpose; their code and type cross the wire."""

from cliffracer_core import Conflict, NotFound


class UnknownSku(NotFound):
    type = "unknown_sku"
    default_message = "No stock item has that sku."


class OutOfStock(Conflict):
    type = "out_of_stock"
    default_message = "Not enough stock to reserve."
