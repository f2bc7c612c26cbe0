"""List endpoints: filtering with django-filter and bounded limit/offset pagination.

A list view subclasses ``ListApi``, sets ``filterset_class``, returns its (already scoped)
queryset from ``get_queryset`` and answers with ``self.list_response(serializer_class)``.
The attributes sit where DRF's generic views keep them, so drf-spectacular documents the
filter and pagination parameters and the paginated response.
"""

from __future__ import annotations

from typing import Any

from django.db.models import QuerySet
from rest_framework import pagination
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.settings import api_settings
from rest_framework.views import APIView


class LimitOffsetPagination(pagination.LimitOffsetPagination):
    """DRF's limit/offset pagination (``PAGE_SIZE`` by default), with bounds.

    A page holds at most ``max_limit`` items, and an offset past ``MAX_OFFSET`` reads as
    ``MAX_OFFSET`` (an empty page) instead of reaching the database, which refuses numbers
    beyond 64 bits.
    """

    max_limit = 500
    MAX_OFFSET = 2**31

    def get_offset(self, request: Request) -> int:
        return min(super().get_offset(request), self.MAX_OFFSET)


class ListApi(APIView):
    """An APIView that answers a filtered, paginated list."""

    filter_backends = api_settings.DEFAULT_FILTER_BACKENDS
    pagination_class = LimitOffsetPagination
    filterset_class: Any = None

    def get_queryset(self) -> QuerySet[Any]:
        raise NotImplementedError("A list view returns its queryset from get_queryset().")

    def list_response(self, serializer_class: type[Any]) -> Response:
        """Filter ``get_queryset()`` by the query string, and answer one page of it."""
        queryset = self.get_queryset()
        for backend in self.filter_backends:
            queryset = backend().filter_queryset(self.request, queryset, self)
        paginator = self.pagination_class()
        page = paginator.paginate_queryset(queryset, self.request, view=self)
        return paginator.get_paginated_response(serializer_class(page, many=True).data)
