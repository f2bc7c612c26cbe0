"""The token endpoints, and the identity a view's service calls carry.

``POST /api/auth/token/`` takes a username and password and answers an access and a refresh
token; ``…/token/refresh/`` trades a refresh token for a new access token; ``…/token/verify/``
says whether a token is valid. Access tokens carry the user's identity claims (username,
groups, permissions, is_superuser), so that services check them without a database. All
three are throttled (DRF scope ``auth``).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from django.contrib.auth import get_user_model
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiResponse, extend_schema, extend_schema_view
from rest_framework import serializers
from rest_framework.exceptions import AuthenticationFailed
from rest_framework.request import Request
from rest_framework.throttling import ScopedRateThrottle
from rest_framework_simplejwt import views as simplejwt_views
from rest_framework_simplejwt.serializers import (
    TokenObtainPairSerializer as SimpleTokenObtainPairSerializer,
)
from rest_framework_simplejwt.serializers import (
    TokenRefreshSerializer as SimpleTokenRefreshSerializer,
)
from rest_framework_simplejwt.serializers import TokenVerifySerializer
from rest_framework_simplejwt.settings import api_settings as jwt_settings
from rest_framework_simplejwt.tokens import Token

from cliffracer_core.core.auth.tokens import claims_for_user, session_access_token
from cliffracer_core.core.context import current_headers, message_context
from cliffracer_core.core.headers import AUTHORIZATION


class TokenObtainPairSerializer(SimpleTokenObtainPairSerializer):
    """Username and password in; an access and a refresh token out, with identity claims."""

    @classmethod
    def get_token(cls, user: Any) -> Any:
        token = super().get_token(user)
        for name, value in claims_for_user(user).items():
            token[name] = value
        return token


class TokenRefreshSerializer(SimpleTokenRefreshSerializer):
    """A refresh token in; a new access token out, with the user's claims as they are now.

    simplejwt copies the claims of the refresh token, which would keep a revoked permission
    alive until the refresh token expires; here a change to a user's groups or permissions
    reaches their next access token. A deleted or deactivated user gets none.
    """

    def validate(self, attrs: dict[str, Any]) -> dict[str, str]:
        refresh = self.token_class(attrs["refresh"])
        user_id = refresh.payload.get(jwt_settings.USER_ID_CLAIM)
        user = (
            get_user_model()
            .objects.filter(**{jwt_settings.USER_ID_FIELD: user_id})
            .prefetch_related("groups")
            .first()
        )
        if user is None or not jwt_settings.USER_AUTHENTICATION_RULE(user):
            raise AuthenticationFailed(
                self.error_messages["no_active_account"], "no_active_account"
            )
        data = super().validate(attrs)
        access = refresh.access_token
        for name, value in claims_for_user(user).items():
            access[name] = value
        data["access"] = str(access)
        return data


class ThrottledTokenView:
    """Throttle a token view with the ``auth`` rate of ``DEFAULT_THROTTLE_RATES``."""

    throttle_classes = [ScopedRateThrottle]
    throttle_scope = "auth"


class TokenPairOutputSerializer(serializers.Serializer):
    access = serializers.CharField(help_text="Send as 'Authorization: Bearer <access>'.")
    refresh = serializers.CharField(help_text="Trade for a new access token at token/refresh/.")

    class Meta:
        ref_name = "TokenPair"


class AccessOutputSerializer(serializers.Serializer):
    access = serializers.CharField(help_text="Send as 'Authorization: Bearer <access>'.")
    refresh = serializers.CharField(
        required=False, help_text="A new refresh token, when refresh tokens rotate."
    )

    class Meta:
        ref_name = "AccessToken"


def token_schema(answer: Any, refused: str) -> Any:
    """The OpenAPI description of a token view: its answer, and every status it may send."""
    return extend_schema_view(
        post=extend_schema(
            tags=["auth"],
            responses={
                200: answer,
                400: OpenApiResponse(description="The body is not valid."),
                401: OpenApiResponse(description=refused),
                429: OpenApiResponse(description="Too many attempts; retry after a while."),
            },
        )
    )


@token_schema(TokenPairOutputSerializer, "The username or password is wrong.")
class TokenObtainPairView(ThrottledTokenView, simplejwt_views.TokenObtainPairView):
    """Exchange a username and password for an access and a refresh token."""

    serializer_class = TokenObtainPairSerializer


@token_schema(AccessOutputSerializer, "The refresh token is not valid, or its user is gone.")
class TokenRefreshView(ThrottledTokenView, simplejwt_views.TokenRefreshView):
    """Exchange a refresh token for a new access token."""

    serializer_class = TokenRefreshSerializer


@token_schema(
    OpenApiResponse(OpenApiTypes.OBJECT, description="The token is valid: an empty object."),
    "The token is not valid.",
)
class TokenVerifyView(ThrottledTokenView, simplejwt_views.TokenVerifyView):
    """Answer 200 if the token is valid, 401 if it is not."""

    serializer_class = TokenVerifySerializer


def authorization_for(request: Request) -> str | None:
    """``Bearer <access token>`` naming the user DRF authenticated for ``request``, or None.

    A request authenticated with an access token passes that token on, as it was sent. One
    authenticated otherwise (a session: a person logged in to the admin, using the API docs)
    gets an access token minted for that user, with the same claims as one from the token
    endpoint, that lives only as long as the request needs it.
    """
    if isinstance(request.auth, Token):
        # The header as sent: str(token) would sign it again.
        return request.headers[AUTHORIZATION].strip()
    user = request.user
    if user is None or not user.is_authenticated:
        return None
    return f"Bearer {session_access_token(user)}"


@contextmanager
def calls_as(request: Request) -> Iterator[None]:
    """Make the services called inside the block see the user DRF authenticated.

    The middleware passes on the request's bearer token as it came, whether DRF accepted it
    or not; this replaces it with the identity the view actually authenticated, so that a
    session user's calls carry a token too.
    """
    values = dict(current_headers.get() or {})
    values.pop(AUTHORIZATION, None)
    if authorization := authorization_for(request):
        values[AUTHORIZATION] = authorization
    with message_context(values):
        yield
