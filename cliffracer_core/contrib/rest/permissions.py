"""Permission classes of the REST APIs: Django permissions, composed the DRF way.

``HasPermissions("orders.add_order")`` is a permission class that lets through an
authenticated user who holds every one of the named permissions (``app_label.codename``, as
``@rpc(permission=...)`` names them). ``methods=`` limits it to some HTTP methods, so that one
view may guard ``GET`` and ``POST`` differently::

    permission_classes = [
        HasPermissions("orders.view_order", methods=["GET"]),
        HasPermissions("orders.add_order", methods=["POST"]),
    ]

The classes compose with DRF's operators (``IsAdminUser | HasPermissions(...)``). A request
without credentials is answered 401, one whose user lacks a permission 403.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from rest_framework.permissions import BasePermission
from rest_framework.request import Request


class DjangoPermissions(BasePermission):
    """Allow an authenticated user who holds every one of ``permissions``.

    Subclasses set ``permissions`` and, to guard only some HTTP methods, ``methods``; use
    ``HasPermissions(...)`` to make one.
    """

    permissions: tuple[str, ...] = ()
    # None guards every method; otherwise other methods need only an authenticated user.
    methods: frozenset[str] | None = None
    message = "You do not have permission to perform this action."

    def has_permission(self, request: Request, view: Any) -> bool:
        user = request.user
        if not (user and user.is_authenticated):
            return False
        if self.methods is not None and request.method not in self.methods:
            return True
        missing = [permission for permission in self.permissions if not user.has_perm(permission)]
        if missing:
            # Names of permissions are no secret: they say what to ask an administrator for.
            self.message = f"You need the permission {', '.join(missing)}."
            return False
        return True


def HasPermissions(  # noqa: N802  (a class factory, read as a class in permission_classes)
    *permissions: str, methods: Iterable[str] | None = None
) -> type[DjangoPermissions]:
    """A permission class requiring every one of ``permissions``, on ``methods`` (all if None)."""
    if not permissions:
        raise ValueError("Name at least one permission.")
    for permission in permissions:
        if not isinstance(permission, str) or permission.count(".") != 1:
            raise ValueError(f"Permission {permission!r} must read 'app_label.codename'.")
    guarded = None
    if methods is not None:
        guarded = frozenset(method.upper() for method in methods)
        # HEAD is answered by the GET handler, so it is guarded as GET is.
        if "GET" in guarded:
            guarded |= {"HEAD"}
    label = ", ".join(permissions)
    return type(
        f"HasPermissions({label})",
        (DjangoPermissions,),
        {"permissions": tuple(permissions), "methods": guarded, "__module__": __name__},
    )
