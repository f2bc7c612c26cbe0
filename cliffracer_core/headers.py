"""Names of the NATS headers Cliffracer reads and writes."""

# ADR-32 error headers.
ERROR_CODE = "Nats-Service-Error-Code"
ERROR_MESSAGE = "Nats-Service-Error"

# The same name as on HTTP, so one id can be followed from a browser to the last service.
CORRELATION_ID = "X-Correlation-ID"
# The caller's identity, "Bearer <access token>" as on HTTP.
AUTHORIZATION = "Authorization"
# W3C trace context.
TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"

# Headers a handler's outgoing calls and events carry onward from the message it handles.
PROPAGATED = (CORRELATION_ID, AUTHORIZATION, TRACEPARENT, TRACESTATE)
