"""Errors the orders service raises on purpose; their code and type cross the wire."""

from cliffracer_core import Conflict, NotFound, Unavailable


class OrderNotFound(NotFound):
    type = "order_not_found"
    default_message = "No such order."


class UnknownSku(NotFound):
    type = "unknown_sku"
    default_message = "The order names a sku that does not exist."


class OutOfStock(Conflict):
    type = "out_of_stock"
    default_message = "Not enough stock for the order."


class PaymentNotConfirmed(Conflict):
    type = "payment_not_confirmed"
    default_message = "The payment event does not match what payments recorded."


class InventoryUnavailable(Unavailable):
    type = "inventory_unavailable"
    default_message = "Stock could not be reserved; try again later."
