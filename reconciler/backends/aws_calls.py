"""How the ``aws`` backend talks to AWS: boto3 clients, pacing under quotas, errors as data.

``AwsCalls`` owns the ``apigateway`` and ``lambda`` clients (standard credential
chain, botocore's ``standard``/``adaptive`` retry mode for throttling and 5xx),
paces every request with a client-side ``RateLimiter`` under AWS's
control-plane quotas, and turns every AWS failure into a one-line
``BackendError`` naming the resource and the AWS error code (``temporary`` for
throttling, 5xx, timeouts and connection errors, and for missing credentials
or access denied, which a role or policy change can fix without a restart).  Used by ``aws.py`` only;
together they are the only modules that import boto3.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, TypeVar

import boto3
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionError,
    HTTPClientError,
    NoCredentialsError,
    NoRegionError,
    PartialCredentialsError,
)

from reconciler.errors import BackendError, ConflictError

if TYPE_CHECKING:
    from mypy_boto3_apigateway import APIGatewayClient
    from mypy_boto3_cloudwatch import CloudWatchClient
    from mypy_boto3_lambda import LambdaClient

T = TypeVar("T")

RATE_SCALE_ENV = "RECONCILER_AWS_RATE_SCALE"
TEMPORARY_CODES = frozenset(
    {
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "TooManyRequestsException",
        "RequestThrottled",
        "RequestThrottledException",
        "RequestLimitExceeded",
        "LimitExceededException",
        "SlowDown",
        "PriorRequestNotComplete",
        "ServiceUnavailable",
        "ServiceUnavailableException",
        "InternalFailure",
        "InternalServerError",
        "InternalServerErrorException",
        "ServiceException",
        "RequestTimeout",
        "RequestTimeoutException",
    }
)
# credentials or permissions that are wrong *now* and may be fixed without a restart (an IRSA role, a policy):
# retried with capped backoff, and they keep the daemon not ready (DESIGN §13)
ACCESS_CODES = frozenset(
    {
        "AccessDenied",
        "AccessDeniedException",
        "UnauthorizedOperation",
        "UnrecognizedClientException",
        "InvalidClientTokenId",
        "InvalidSignatureException",
        "SignatureDoesNotMatch",
        "IncompleteSignature",
        "MissingAuthenticationTokenException",
        "ExpiredToken",
        "ExpiredTokenException",
        "RequestExpired",
    }
)
CONFLICT_CODES = frozenset({"PreconditionFailedException"})
# 409s that only say another change to the resource is still in flight (AWS: "try again later")
BUSY_CODES = frozenset({"ConflictException", "ResourceConflictException"})
BUSY_MESSAGES = ("concurrent modification", "update is in progress", "try again later")


@dataclass(frozen=True)
class Rates:
    """Requests per second the backend allows itself (burst = bucket size), under AWS's quotas.

    API Gateway: 10 rps for all control calls (AWS allows a burst of 40; we
    stay at 10), ``CreateDeployment`` 1 per 5 s per account, ``CreateRestApi``
    1 per 3 s, ``PutRestApi`` 1/s.  Lambda control calls: 15 rps.  Tests scale
    them up with ``scaled``.
    """

    apigateway: float = 10.0
    apigateway_burst: int = 10
    create_deployment: float = 0.2
    create_rest_api: float = 1 / 3
    put_rest_api: float = 1.0
    lambda_: float = 15.0
    lambda_burst: int = 15

    def scaled(self, factor: float) -> Rates:
        """Every rate multiplied by ``factor`` (bursts unchanged)."""
        return replace(
            self,
            apigateway=self.apigateway * factor,
            create_deployment=self.create_deployment * factor,
            create_rest_api=self.create_rest_api * factor,
            put_rest_api=self.put_rest_api * factor,
            lambda_=self.lambda_ * factor,
        )

    @classmethod
    def from_env(cls) -> Rates:
        """The quotas, scaled by ``$RECONCILER_AWS_RATE_SCALE`` if set (e.g. 1000 for moto)."""
        raw = os.environ.get(RATE_SCALE_ENV)
        if not raw:
            return cls()
        try:
            factor = float(raw)
        except ValueError:
            raise BackendError(f"{RATE_SCALE_ENV}={raw!r}: expected a positive number") from None
        if factor <= 0:
            raise BackendError(f"{RATE_SCALE_ENV}={raw!r}: expected a positive number")
        return cls().scaled(factor)


class _Bucket:
    def __init__(self, rate: float, burst: int, now: float) -> None:
        self.rate = rate
        self.burst = float(max(burst, 1))
        self.tokens = self.burst
        self.stamp = now

    def refill(self, now: float) -> None:
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now

    def wait(self) -> float:
        # a hair of tolerance: float rounding must not leave a deficit too small to sleep off
        return 0.0 if self.tokens >= 1 - 1e-9 else (1 - self.tokens) / self.rate


QUOTA_NAMES = {"apigateway": "API Gateway request rate", "lambda": "Lambda request rate"}


def quota_name(bucket: str) -> str:
    """``apigateway.CreateDeployment`` -> ``CreateDeployment quota``; ``lambda`` -> ``Lambda request rate``."""
    return QUOTA_NAMES.get(bucket) or f"{bucket.rsplit('.', 1)[-1]} quota"


class RateLimiter:
    """Token buckets by name; ``acquire(names)`` blocks until each named bucket has a token.

    ``on_wait(seconds, quota)`` is told before each wait, naming the bucket that holds the call back
    (the CLI shows "waiting 4.2s for the CreateDeployment quota").
    """

    def __init__(
        self,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        on_wait: Callable[[float, str], None] | None = None,
    ) -> None:
        self.clock = clock
        self.sleep = sleep
        self.on_wait = on_wait
        self.buckets: dict[str, _Bucket] = {}
        self.waited = 0.0
        self._lock = threading.Lock()

    def add(self, name: str, rate: float, burst: int = 1) -> None:
        self.buckets[name] = _Bucket(rate, burst, self.clock())

    def acquire(self, names: Iterable[str]) -> float:
        """Take one token from every named bucket (unknown names are free); return the seconds waited."""
        buckets = [(n, self.buckets[n]) for n in names if n in self.buckets]
        waited = 0.0
        with self._lock:
            while True:
                now = self.clock()
                for _, bucket in buckets:
                    bucket.refill(now)
                delay, holder = max(((b.wait(), n) for n, b in buckets), default=(0.0, ""))
                if delay <= 0:
                    break
                if self.on_wait is not None:
                    self.on_wait(delay, quota_name(holder))
                self.sleep(delay)
                waited += delay
            for _, bucket in buckets:
                bucket.tokens -= 1
            self.waited += waited
        return waited


def make_limiter(
    rates: Rates,
    clock: Callable[[], float],
    sleep: Callable[[float], None],
    on_wait: Callable[[float, str], None] | None = None,
) -> RateLimiter:
    limiter = RateLimiter(clock, sleep, on_wait)
    limiter.add("apigateway", rates.apigateway, rates.apigateway_burst)
    limiter.add("apigateway.CreateDeployment", rates.create_deployment, 1)
    limiter.add("apigateway.CreateRestApi", rates.create_rest_api, 1)
    limiter.add("apigateway.PutRestApi", rates.put_rest_api, 1)
    limiter.add("lambda", rates.lambda_, rates.lambda_burst)
    return limiter


def one_line(text: str, limit: int = 300) -> str:
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def to_backend_error(exc: Exception, resource: str, operation: str) -> BackendError:
    """Any boto3/botocore failure as a one-line ``BackendError`` naming resource and AWS error code."""
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code") or "Unknown")
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        message = one_line(str(error.get("Message") or exc))
        text = f"{resource}: {operation} failed: {code} (HTTP {status}): {message}"
        if code in CONFLICT_CODES or status == 412:
            return ConflictError(f"{text}; re-plan from live state", code=code)
        busy = code in BUSY_CODES and any(words in message.lower() for words in BUSY_MESSAGES)
        temporary = code in TEMPORARY_CODES | ACCESS_CODES or status == 429 or status >= 500 or busy
        return BackendError(text, temporary=temporary, code=code)
    code = type(exc).__name__
    if isinstance(exc, NoCredentialsError | PartialCredentialsError):
        return BackendError(
            f"{resource}: {operation} failed: {code}: no usable AWS credentials in the standard chain "
            "(environment, shared config/credentials files, SSO, container or instance role)",
            temporary=True,  # a role or a mounted secret may appear without a restart
            code=code,
        )
    if isinstance(exc, NoRegionError):
        return BackendError(
            f"{resource}: {operation} failed: {code}: pass --region or set AWS_DEFAULT_REGION", code=code
        )
    temporary = isinstance(exc, ConnectionError | HTTPClientError)
    return BackendError(f"{resource}: {operation} failed: {code}: {one_line(str(exc))}", temporary=temporary, code=code)


def _attempt(request: Any) -> int:
    """Which attempt at one operation this HTTP request is (1 = the first; botocore counts them in the context)."""
    context = getattr(request, "context", None) or {}
    return int(context.get("retries", {}).get("attempt", 1))


class AwsCalls:
    """The two boto3 clients, paced and retried; ``call`` runs one request with errors as data."""

    def __init__(
        self,
        region: str | None,
        endpoint_url: str | None,
        rates: Rates,
        retry_mode: str | None = None,
        max_attempts: int | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        on_wait: Callable[[float, str], None] | None = None,
    ) -> None:
        mode = retry_mode or os.environ.get("AWS_RETRY_MODE") or "standard"
        if mode not in ("standard", "adaptive"):
            raise BackendError(f"retry mode {mode!r}: expected standard or adaptive")
        raw_attempts = os.environ.get("AWS_MAX_ATTEMPTS") or "5"
        if max_attempts is None and not raw_attempts.isdigit():
            raise BackendError(f"AWS_MAX_ATTEMPTS={raw_attempts!r}: expected a whole number of attempts")
        attempts = max_attempts or max(int(raw_attempts), 1)
        config = Config(
            retries={"mode": "adaptive" if mode == "adaptive" else "standard", "total_max_attempts": attempts},
            connect_timeout=5,
            read_timeout=30,
            user_agent_extra="reconciler",
        )
        self.limiter = make_limiter(rates, clock, sleep, on_wait)
        self._endpoint_url, self._config = endpoint_url, config
        self._cloudwatch: CloudWatchClient | None = None
        try:
            session = self._session = boto3.session.Session(region_name=region)
            self.apigateway: APIGatewayClient = session.client("apigateway", endpoint_url=endpoint_url, config=config)
            self.lambda_: LambdaClient = session.client("lambda", endpoint_url=endpoint_url, config=config)
            # CreateDeployment is not idempotent: one attempt, and the caller looks for the hash if it fails
            once = config.merge(Config(retries={"mode": "standard", "total_max_attempts": 1}))
            self.apigateway_once: APIGatewayClient = session.client(
                "apigateway", endpoint_url=endpoint_url, config=once
            )
        except (BotoCoreError, ValueError) as exc:
            if isinstance(exc, NoRegionError):
                raise BackendError("the aws backend needs a region: pass --region or set AWS_DEFAULT_REGION") from None
            raise BackendError(f"cannot create AWS clients: {one_line(str(exc))}") from None
        self.region: str = self.apigateway.meta.region_name
        self.apigateway.meta.events.register("before-call", self._pace_apigateway)
        self.apigateway_once.meta.events.register("before-call", self._pace_apigateway)
        self.lambda_.meta.events.register("before-call", self._pace_lambda)
        # botocore's retries (throttling, 5xx) send again without a new before-call: pace each resend too
        self.apigateway.meta.events.register("before-send", self._pace_apigateway_retry)
        self.lambda_.meta.events.register("before-send", self._pace_lambda_retry)

    def _pace_apigateway(self, model: Any, **_: Any) -> None:
        self.limiter.acquire(("apigateway", f"apigateway.{model.name}"))

    def _pace_lambda(self, model: Any, **_: Any) -> None:
        self.limiter.acquire(("lambda", f"lambda.{model.name}"))

    def _pace_apigateway_retry(self, request: Any, event_name: str, **_: Any) -> None:
        if _attempt(request) > 1:
            self.limiter.acquire(("apigateway", f"apigateway.{event_name.rsplit('.', 1)[-1]}"))

    def _pace_lambda_retry(self, request: Any, event_name: str, **_: Any) -> None:
        if _attempt(request) > 1:
            self.limiter.acquire(("lambda", f"lambda.{event_name.rsplit('.', 1)[-1]}"))

    def call(self, resource: str, operation: str, request: Callable[[], T]) -> T:
        """Run ``request`` (one AWS operation, or one paginated listing); failures become ``BackendError``."""
        try:
            return request()
        except (ClientError, BotoCoreError) as exc:
            raise to_backend_error(exc, resource, operation) from None

    @property
    def cloudwatch(self) -> CloudWatchClient:
        """The CloudWatch client (rollout alarms), made on first use: most passes never read an alarm."""
        if self._cloudwatch is None:
            self._cloudwatch = self._session.client(
                "cloudwatch", region_name=self.region, endpoint_url=self._endpoint_url, config=self._config
            )
        return self._cloudwatch

    def close(self) -> None:
        self.apigateway.close()
        self.apigateway_once.close()
        self.lambda_.close()
        if self._cloudwatch is not None:
            self._cloudwatch.close()
