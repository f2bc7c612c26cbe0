"""The views of ``benchmarks/http_serving.py`` (benchmark-only; not part of the project's URLs).

* ``ConstantView``: the cost of Django + DRF + the project's middleware, nothing else.
* ``OneRpcView``: the same, plus one RPC through the sync client ``call()`` to the benchmark
  service ``bench`` (see ``benchmarks/http_serving.py``), whose reply it returns.
"""

from __future__ import annotations

from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from cliffracer_core import call

# The request both the view of case (b) and the gateway case (c) send to bench.echo.
ECHO_REQUEST = {"id": 1, "name": "widget-42", "values": [1.5, 2.25, 0.5]}


class ConstantView(APIView):
    permission_classes = [AllowAny]
    authentication_classes = []

    def get(self, request: Request) -> Response:
        return Response({"ok": True})


class OneRpcView(APIView):
    permission_classes = [AllowAny]
    authentication_classes = []

    def get(self, request: Request) -> Response:
        return Response(call("bench.echo", ECHO_REQUEST))
