"""The ``local`` backend: API Gateway and Lambda simulated in SQLite (WAL).

``LocalCloud`` is the simulation, with AWS's rules and error codes (immutable
deployments, stages pointing at deployments, published versions, aliases
with at most one weighted extra version, never ``$LATEST`` weighted), and is
also what a test uses to play "someone clicked in the console".
``LocalBackend`` implements the ``Backend`` protocol on top of it: one SQLite
transaction per action, every action idempotent.  Used by the engine.
"""

from __future__ import annotations

import json
import secrets
import sqlite3
import string
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, assert_never, cast

from reconciler.backends.base import ALARM_STATES, AlarmState
from reconciler.errors import BackendError, ConflictError
from reconciler.model import (
    DEFAULT_INSTANCE,
    Action,
    AdoptAlias,
    AdoptApi,
    AdoptBasePathMapping,
    AdoptStage,
    CreateAlias,
    CreateApi,
    CreateBasePathMapping,
    CreateDeployment,
    CreateStage,
    DeleteAlias,
    DeleteBasePathMapping,
    DeleteStage,
    LiveAlias,
    LiveApi,
    LiveBasePathMapping,
    LiveCanary,
    LiveDeployment,
    LiveStage,
    LiveState,
    UpdateAlias,
    UpdateApi,
    UpdateBasePathMapping,
    UpdateStage,
    copy_live,
    routing_from_lambda,
    routing_to_lambda,
)
from reconciler.openapi import definition_problems
from reconciler.settings import (
    ENDPOINT_TYPES,
    NEW_API_ENDPOINT_TYPE,
    StageSettings,
    check_tags,
    endpoint_change_problem,
    problems_of,
    settings_from_json,
)
from reconciler.specs import LATEST, NONE_BASE_PATH, DesiredCanary, DesiredState, check_domain_name, normalize_percent

DB_NAME = "local-backend.sqlite3"
REGION = "local"
ACCOUNT = "000000000000"
_ID_ALPHABET = string.ascii_lowercase + string.digits
POLICY = "x-amazon-apigateway-policy"  # a private API deploys only with a resource policy

SCHEMA = """
CREATE TABLE IF NOT EXISTS rest_apis (
    id TEXT PRIMARY KEY, name TEXT NOT NULL UNIQUE, description TEXT,
    definition_sha256 TEXT, definition TEXT, managed INTEGER NOT NULL, created_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS deployments (
    id TEXT PRIMARY KEY, api_id TEXT NOT NULL REFERENCES rest_apis(id), description TEXT,
    definition_sha256 TEXT, revision TEXT, definition TEXT, created_at TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS deployments_by_hash ON deployments(api_id, definition_sha256);
CREATE TABLE IF NOT EXISTS stages (
    api_id TEXT NOT NULL REFERENCES rest_apis(id), name TEXT NOT NULL,
    deployment_id TEXT NOT NULL REFERENCES deployments(id), description TEXT,
    variables TEXT NOT NULL, canary TEXT, managed INTEGER NOT NULL,
    created_at TEXT NOT NULL, updated_at TEXT NOT NULL, PRIMARY KEY (api_id, name));
CREATE TABLE IF NOT EXISTS functions (name TEXT PRIMARY KEY, created_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS versions (
    function TEXT NOT NULL REFERENCES functions(name), version INTEGER NOT NULL,
    created_at TEXT NOT NULL, PRIMARY KEY (function, version));
CREATE TABLE IF NOT EXISTS aliases (
    function TEXT NOT NULL REFERENCES functions(name), name TEXT NOT NULL, description TEXT,
    function_version TEXT NOT NULL, additional_weights TEXT NOT NULL, revision_id TEXT NOT NULL,
    managed INTEGER NOT NULL, PRIMARY KEY (function, name));
CREATE TABLE IF NOT EXISTS alarms (name TEXT PRIMARY KEY, state TEXT NOT NULL, updated_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS domain_names (name TEXT PRIMARY KEY, created_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS base_path_mappings (
    domain TEXT NOT NULL REFERENCES domain_names(name), base_path TEXT NOT NULL,
    api_id TEXT NOT NULL REFERENCES rest_apis(id), stage TEXT, managed INTEGER NOT NULL, owner TEXT,
    PRIMARY KEY (domain, base_path));
"""


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _new_id(length: int) -> str:
    return "".join(secrets.choice(_ID_ALPHABET) for _ in range(length))


def _error(code: str, message: str) -> BackendError:
    if code == "PreconditionFailedException":
        return ConflictError(f"{code}: {message}", code=code)
    return BackendError(f"{code}: {message}", temporary=False, code=code)


class LocalCloud:
    """API Gateway + Lambda in one SQLite file, with AWS's rules."""

    def __init__(self, state_dir: Path) -> None:
        state_dir.mkdir(parents=True, exist_ok=True)
        self.path = state_dir / DB_NAME
        self.db = sqlite3.connect(self.path, isolation_level=None, timeout=30, check_same_thread=False)
        self.db.row_factory = sqlite3.Row
        try:
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            self.db.execute("PRAGMA foreign_keys=ON")
            self.db.executescript(SCHEMA)
            self._add_owner_columns()
        except sqlite3.Error as exc:  # not a database, or a schema of its own: say which file, not a traceback
            self.db.close()
            locked = isinstance(exc, sqlite3.OperationalError)  # busy: retrying may help; corrupt: it will not
            raise BackendError(f"local backend: cannot open {self.path}: {exc}", temporary=locked) from None

    def _add_owner_columns(self) -> None:
        """Databases made before ownership per instance get an ``owner`` column (NULL: ``default``'s)."""
        for table in ("rest_apis", "stages", "aliases"):
            columns = {row[1] for row in self.db.execute(f"PRAGMA table_info({table})")}
            if "owner" not in columns:
                self.db.execute(f"ALTER TABLE {table} ADD COLUMN owner TEXT")
            if table == "stages" and "settings" not in columns:  # stage settings (DESIGN §10); NULL: defaults
                self.db.execute("ALTER TABLE stages ADD COLUMN settings TEXT")
            if table == "rest_apis" and "endpoint_type" not in columns:  # RestApi settings; NULL: REGIONAL, none
                for column in ("endpoint_type", "vpc_endpoint_ids", "tags"):
                    self.db.execute(f"ALTER TABLE rest_apis ADD COLUMN {column} TEXT")

    def close(self) -> None:
        self.db.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One atomic unit: everything inside commits together or not at all."""
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            if self.db.in_transaction:  # SQLite may have rolled back already (interrupt, I/O error, full disk)
                self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    @contextmanager
    def snapshot(self) -> Iterator[sqlite3.Connection]:
        """One read transaction: every SELECT inside sees the same committed state (WAL: writers go on).

        Separate SELECTs outside a transaction could see a stage whose API row an
        earlier SELECT missed, when an apply commits between them.  Inside a
        transaction already (a caller's own), that one is the snapshot.
        """
        if self.db.in_transaction:
            yield self.db
            return
        self.db.execute("BEGIN")
        try:
            yield self.db
        finally:
            if self.db.in_transaction:
                self.db.execute("COMMIT")  # a read-only transaction: ends the snapshot, writes nothing

    # ------------------------------------------------------------ API Gateway

    def url(self, api_id: str, stage: str) -> str:
        return f"https://{api_id}.execute-api.{REGION}.localhost/{stage}"

    def api_id(self, name: str) -> str:
        row = self.db.execute("SELECT id FROM rest_apis WHERE name = ?", (name,)).fetchone()
        if row is None:
            raise _error("NotFoundException", f"Invalid API identifier specified: no REST API named {name!r}")
        return str(row["id"])

    def create_rest_api(
        self,
        name: str,
        description: str | None,
        managed: bool,
        owner: str | None = None,
        endpoint_type: str = "EDGE",
        vpc_endpoint_ids: Sequence[str] = (),
        tags: dict[str, str] | None = None,
    ) -> str:
        """CreateRestApi; with no endpoint type, API Gateway's own default (EDGE)."""
        _check_endpoint(endpoint_type, vpc_endpoint_ids)
        _check_tags(tags or {})
        api_id = _new_id(10)
        try:
            self.db.execute(
                "INSERT INTO rest_apis (id, name, description, managed, owner, created_at, endpoint_type,"
                " vpc_endpoint_ids, tags) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    api_id,
                    name,
                    description,
                    int(managed),
                    owner,
                    _now(),
                    endpoint_type,
                    json.dumps(sorted(vpc_endpoint_ids)),
                    json.dumps(tags or {}, sort_keys=True),
                ),
            )
        except sqlite3.IntegrityError:
            raise _error("ConflictException", f"a REST API named {name!r} already exists") from None
        return api_id

    def update_rest_api_endpoint(self, api_id: str, endpoint_type: str, vpc_endpoint_ids: Sequence[str]) -> None:
        """UpdateRestApi on ``/endpointConfiguration``: the type changes in place, by API Gateway's rules."""
        row = self.db.execute("SELECT endpoint_type FROM rest_apis WHERE id = ?", (api_id,)).fetchone()
        if row is None:
            raise _error("NotFoundException", f"Invalid API identifier specified {ACCOUNT}:{api_id}")
        old = row["endpoint_type"] or NEW_API_ENDPOINT_TYPE
        problem = endpoint_change_problem(old, endpoint_type)
        if problem is not None:
            raise _error("BadRequestException", problem)
        _check_endpoint(endpoint_type, vpc_endpoint_ids)
        self.db.execute(
            "UPDATE rest_apis SET endpoint_type = ?, vpc_endpoint_ids = ? WHERE id = ?",
            (endpoint_type, json.dumps(sorted(vpc_endpoint_ids)), api_id),
        )

    def set_rest_api_tags(self, api_id: str, tags: dict[str, str]) -> None:
        """TagResource/UntagResource on the API: its tags become ``tags``."""
        _check_tags(tags)
        cursor = self.db.execute(
            "UPDATE rest_apis SET tags = ? WHERE id = ?", (json.dumps(tags, sort_keys=True), api_id)
        )
        if cursor.rowcount == 0:
            raise _error("NotFoundException", f"Invalid API identifier specified {ACCOUNT}:{api_id}")

    def put_rest_api(self, api_id: str, definition: str, definition_sha256: str, description: str | None) -> None:
        """Import (overwrite) the API's current definition (canonical JSON), refusing what API Gateway refuses."""
        try:
            problems = definition_problems(json.loads(definition))
        except ValueError:
            problems = ["the body is not a JSON or YAML OpenAPI document"]
        if problems:
            raise _error("BadRequestException", f"Errors found during import: {'; '.join(problems)}")
        cursor = self.db.execute(
            "UPDATE rest_apis SET definition = ?, definition_sha256 = ?, description = ? WHERE id = ?",
            (definition, definition_sha256, description, api_id),
        )
        if cursor.rowcount == 0:
            raise _error("NotFoundException", f"Invalid API identifier specified {ACCOUNT}:{api_id}")

    def create_deployment(self, api_id: str, description: str, revision: str | None) -> str:
        """Snapshot the API's current definition; deployments never change afterwards."""
        row = self.db.execute(
            "SELECT definition, definition_sha256, endpoint_type FROM rest_apis WHERE id = ?", (api_id,)
        ).fetchone()
        if row is None:
            raise _error("NotFoundException", f"Invalid API identifier specified {ACCOUNT}:{api_id}")
        if row["definition"] is None:
            raise _error("BadRequestException", "The REST API doesn't contain any methods")
        if row["endpoint_type"] == "PRIVATE" and POLICY not in json.loads(row["definition"]):
            raise _error(
                "BadRequestException",
                f"Private REST API doesn't have a resource policy attached to it; expected {POLICY} in the definition",
            )
        deployment_id = _new_id(6)
        self.db.execute(
            "INSERT INTO deployments (id, api_id, description, definition_sha256, revision, definition, created_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (deployment_id, api_id, description, row["definition_sha256"], revision, row["definition"], _now()),
        )
        return deployment_id

    def _check_deployment(self, api_id: str, deployment_id: str) -> None:
        found = self.db.execute(
            "SELECT 1 FROM deployments WHERE id = ? AND api_id = ?", (deployment_id, api_id)
        ).fetchone()
        if found is None:
            raise _error("NotFoundException", f"Invalid deployment identifier specified: {deployment_id}")

    def _check_stage_deployments(self, api_id: str, deployment_id: str, canary: dict[str, Any] | None) -> None:
        """The stage's deployment, and its canary's, must be deployments of this API."""
        self._check_deployment(api_id, deployment_id)
        if canary is not None:
            self._check_deployment(api_id, canary["deploymentId"])

    def create_stage(
        self,
        api_id: str,
        name: str,
        deployment_id: str,
        description: str | None,
        variables: dict[str, str],
        canary: dict[str, Any] | None,
        managed: bool,
        owner: str | None = None,
    ) -> None:
        self._check_stage_deployments(api_id, deployment_id, canary)
        try:
            self.db.execute(
                "INSERT INTO stages (api_id, name, deployment_id, description, variables, canary, managed,"
                " owner, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    api_id,
                    name,
                    deployment_id,
                    description,
                    json.dumps(variables),
                    _dump(canary),
                    int(managed),
                    owner,
                    _now(),
                    _now(),
                ),
            )
        except sqlite3.IntegrityError:
            raise _error("ConflictException", "Stage already exists") from None

    def update_stage(
        self,
        api_id: str,
        name: str,
        deployment_id: str,
        description: str | None,
        variables: dict[str, str],
        canary: dict[str, Any] | None,
    ) -> None:
        self._check_stage_deployments(api_id, deployment_id, canary)
        cursor = self.db.execute(
            "UPDATE stages SET deployment_id = ?, description = ?, variables = ?, canary = ?, updated_at = ?"
            " WHERE api_id = ? AND name = ?",
            (deployment_id, description, json.dumps(variables), _dump(canary), _now(), api_id, name),
        )
        if cursor.rowcount == 0:
            raise _error("NotFoundException", f"Invalid stage identifier specified: {name}")

    def set_stage_settings(self, api_id: str, name: str, settings: StageSettings) -> None:
        """Replace a stage's settings, refusing what API Gateway refuses (cache sizes, log levels, limits)."""
        problems = problems_of(settings)
        if problems:
            raise _error("BadRequestException", "; ".join(problems))
        cursor = self.db.execute(
            "UPDATE stages SET settings = ?, updated_at = ? WHERE api_id = ? AND name = ?",
            (json.dumps(settings.as_json(), sort_keys=True), _now(), api_id, name),
        )
        if cursor.rowcount == 0:
            raise _error("NotFoundException", f"Invalid stage identifier specified: {name}")

    def delete_stage(self, api_id: str, name: str) -> None:
        mapped = self.db.execute(
            "SELECT domain FROM base_path_mappings WHERE api_id = ? AND stage = ? ORDER BY domain", (api_id, name)
        ).fetchall()
        if mapped:  # API Gateway keeps a stage that a custom domain maps
            raise _error(
                "BadRequestException",
                f"Deleting stage {name} failed. Please remove all base path mappings related to the stage in your "
                f"domain: {', '.join(row['domain'] for row in mapped)}",
            )
        cursor = self.db.execute("DELETE FROM stages WHERE api_id = ? AND name = ?", (api_id, name))
        if cursor.rowcount == 0:
            raise _error("NotFoundException", f"Invalid stage identifier specified: {name}")

    # --------------------------------------------------- custom domain names

    def create_domain_name(self, name: str) -> bool:
        """Create the custom domain ``name`` (its certificate is taken as given); False if it exists already."""
        try:
            check_domain_name(name)
        except ValueError as exc:
            raise _error("BadRequestException", f"domain name: {exc}") from None
        with self.transaction() as db:
            found = db.execute("INSERT OR IGNORE INTO domain_names (name, created_at) VALUES (?, ?)", (name, _now()))
        return found.rowcount == 1

    def _check_mapping_target(self, domain: str, api_id: str, stage: str | None) -> None:
        if self.db.execute("SELECT 1 FROM domain_names WHERE name = ?", (domain,)).fetchone() is None:
            raise _error("NotFoundException", f"Invalid domain name identifier specified: {domain}")
        if self.db.execute("SELECT 1 FROM rest_apis WHERE id = ?", (api_id,)).fetchone() is None:
            raise _error("BadRequestException", f"Invalid REST API identifier specified: {api_id}")
        if (
            stage is not None
            and not self.db.execute("SELECT 1 FROM stages WHERE api_id = ? AND name = ?", (api_id, stage)).fetchone()
        ):
            raise _error("BadRequestException", f"Invalid stage identifier specified: {stage}")

    def create_base_path_mapping(
        self, domain: str, base_path: str, api_id: str, stage: str | None, managed: bool, owner: str | None = None
    ) -> None:
        """Map ``domain``/``base_path`` to a stage, by API Gateway's rules (one mapping per base path; a root
        mapping, "(none)", only alone on its domain)."""
        self._check_mapping_target(domain, api_id, stage)
        others = {
            str(r[0]) for r in self.db.execute("SELECT base_path FROM base_path_mappings WHERE domain = ?", (domain,))
        }
        if base_path in others:
            raise _error("ConflictException", "Base path already exists for this domain name")
        if others and NONE_BASE_PATH in others | {base_path}:
            raise _error("BadRequestException", "Only one base path mapping is allowed if the base path is empty.")
        self.db.execute(
            "INSERT INTO base_path_mappings (domain, base_path, api_id, stage, managed, owner)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (domain, base_path, api_id, stage, int(managed), owner),
        )

    def update_base_path_mapping(self, domain: str, base_path: str, api_id: str, stage: str | None) -> None:
        self._check_mapping_target(domain, api_id, stage)
        cursor = self.db.execute(
            "UPDATE base_path_mappings SET api_id = ?, stage = ? WHERE domain = ? AND base_path = ?",
            (api_id, stage, domain, base_path),
        )
        if cursor.rowcount == 0:
            raise _error("NotFoundException", f"Invalid base path mapping identifier specified: {base_path}")

    # ----------------------------------------------------------------- Lambda

    def function_arn(self, function: str, qualifier: str | None = None) -> str:
        arn = f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:{function}"
        return f"{arn}:{qualifier}" if qualifier else arn

    def publish_version(self, function: str) -> int:
        """Create the function if needed and publish its next version."""
        with self.transaction() as db:
            db.execute("INSERT OR IGNORE INTO functions (name, created_at) VALUES (?, ?)", (function, _now()))
            row = db.execute("SELECT MAX(version) AS v FROM versions WHERE function = ?", (function,)).fetchone()
            version = int(row["v"] or 0) + 1
            db.execute(
                "INSERT INTO versions (function, version, created_at) VALUES (?, ?, ?)", (function, version, _now())
            )
        return version

    def _check_alias_target(self, function: str, name: str, version: str, weights: dict[str, float]) -> None:
        if name.isdigit():
            raise _error(
                "ValidationException",
                f"1 validation error detected: Value '{name}' at 'name' failed to satisfy constraint",
            )
        if self.db.execute("SELECT 1 FROM functions WHERE name = ?", (function,)).fetchone() is None:
            raise _error("ResourceNotFoundException", f"Function not found: {self.function_arn(function)}")
        if len(weights) > 1:
            raise _error(
                "InvalidParameterValueException", "Number of items in AdditionalVersionWeights cannot be greater than 1"
            )
        for extra, weight in weights.items():
            if extra == LATEST or version == LATEST:
                raise _error(
                    "InvalidParameterValueException",
                    "$LATEST is not supported for an alias pointing to more than 1 version",
                )
            if not 0.0 <= weight <= 1.0:
                raise _error("ValidationException", f"weight {weight} for version {extra} is outside 0.0-1.0")
            if extra == version:
                raise _error(
                    "InvalidParameterValueException", "Main version and additional version weight cannot be the same"
                )
        for candidate in [version, *weights]:
            if candidate == LATEST:
                continue
            found = (
                self.db.execute(
                    "SELECT 1 FROM versions WHERE function = ? AND version = ?", (function, int(candidate))
                ).fetchone()
                if candidate.isdigit()
                else None
            )
            if found is None:
                raise _error(
                    "ResourceNotFoundException", f"Function not found: {self.function_arn(function, candidate)}"
                )

    def create_alias(
        self,
        function: str,
        name: str,
        version: str,
        weights: dict[str, float],
        description: str | None,
        managed: bool,
        owner: str | None = None,
    ) -> None:
        self._check_alias_target(function, name, version, weights)
        try:
            self.db.execute(
                "INSERT INTO aliases (function, name, description, function_version, additional_weights, revision_id,"
                " managed, owner) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (function, name, description, version, json.dumps(weights), str(uuid.uuid4()), int(managed), owner),
            )
        except sqlite3.IntegrityError:
            raise _error(
                "ResourceConflictException", f"Alias already exists: {self.function_arn(function, name)}"
            ) from None

    def update_alias(
        self,
        function: str,
        name: str,
        version: str,
        weights: dict[str, float],
        description: str | None,
        revision_id: str | None = None,
    ) -> None:
        self._check_alias_target(function, name, version, weights)
        row = self.db.execute(
            "SELECT revision_id FROM aliases WHERE function = ? AND name = ?", (function, name)
        ).fetchone()
        if row is None:
            raise _error("ResourceNotFoundException", f"Alias not found: {self.function_arn(function, name)}")
        if revision_id is not None and row["revision_id"] != revision_id:
            raise _error(
                "PreconditionFailedException",
                "The RevisionId provided does not match the latest RevisionId for the Lambda function or alias",
            )
        self.db.execute(
            "UPDATE aliases SET description = ?, function_version = ?, additional_weights = ?, revision_id = ?"
            " WHERE function = ? AND name = ?",
            (description, version, json.dumps(weights), str(uuid.uuid4()), function, name),
        )

    def delete_alias(self, function: str, name: str) -> None:
        self.db.execute("DELETE FROM aliases WHERE function = ? AND name = ?", (function, name))

    # ------------------------------------------------------------- CloudWatch

    def set_alarm(self, name: str, state: str) -> bool:
        """Set a simulated alarm (created on first use); True if its state changed (the time moves only then)."""
        if state not in ALARM_STATES:
            raise _error("ValidationException", f"state {state!r}; expected one of {', '.join(ALARM_STATES)}")
        with self.transaction() as db:
            row = db.execute("SELECT state FROM alarms WHERE name = ?", (name,)).fetchone()
            if row is not None and row["state"] == state:
                return False
            db.execute(
                "INSERT INTO alarms (name, state, updated_at) VALUES (?, ?, ?)"
                " ON CONFLICT(name) DO UPDATE SET state = excluded.state, updated_at = excluded.updated_at",
                (name, state, time.time()),
            )
        return True

    def alarms(self, names: Sequence[str]) -> dict[str, AlarmState]:
        marks = ",".join("?" * len(names))
        rows = self.db.execute(f"SELECT name, state, updated_at FROM alarms WHERE name IN ({marks})", tuple(names))
        return {row["name"]: AlarmState(row["name"], row["state"], float(row["updated_at"])) for row in rows}


def _check_endpoint(endpoint_type: str, vpc_endpoint_ids: Sequence[str]) -> None:
    if endpoint_type not in ENDPOINT_TYPES:
        raise _error("BadRequestException", f"Invalid endpoint configuration type {endpoint_type!r}")
    if vpc_endpoint_ids and endpoint_type != "PRIVATE":
        raise _error("BadRequestException", "VPC endpoint IDs can only be set on a PRIVATE endpoint configuration")


def _check_tags(tags: dict[str, str]) -> None:
    try:
        check_tags(tags)
    except ValueError as exc:
        raise _error("BadRequestException", str(exc)) from None


def _dump(value: Any) -> str | None:
    return None if value is None else json.dumps(value, sort_keys=True)


def _alias_target(row: sqlite3.Row) -> tuple[str, dict[str, float], str | None]:
    return row["function_version"], json.loads(row["additional_weights"]), row["description"]


class LocalBackend:
    """The ``Backend`` protocol over ``LocalCloud``: managed resources, one transaction per action."""

    name = "local"

    def __init__(self, state_dir: Path, instance: str = DEFAULT_INSTANCE) -> None:
        self.cloud = LocalCloud(state_dir)
        self.instance = instance
        self._live: LiveState | None = None  # the last whole read, kept up to date with this backend's own applies
        self._seen: tuple[int, int] = (-1, -1)  # (PRAGMA data_version, total_changes) that _live reflects
        self._decoded: dict[str, Any] | None = None  # JSON texts decoded during the whole read under way

    def close(self) -> None:
        self.cloud.close()

    def read(self, desired: DesiredState) -> LiveState:
        """Everything the simulation holds, as one consistent snapshot.

        Read whole once, then kept in memory: this backend's own applies update
        the resources they touched, and the whole is read again only when SQLite
        says another connection wrote (``PRAGMA data_version``) or this one
        wrote outside ``apply`` (``total_changes``).
        """
        try:
            with self.cloud.snapshot() as db:
                seen = (int(db.execute("PRAGMA data_version").fetchone()[0]), self.cloud.db.total_changes)
                if self._live is None or seen != self._seen:
                    self._live, self._seen = self._read(db), seen
                live = self._live
        except sqlite3.OperationalError as exc:  # locked or busy: retrying may help
            raise BackendError(f"local backend: cannot read {self.cloud.path}: {exc}", temporary=True) from None
        except (sqlite3.Error, ValueError, KeyError, TypeError) as exc:  # a damaged page or row: it will not
            raise BackendError(
                f"local backend: {self.cloud.path} is damaged ({exc}); restore it from a backup, or delete it "
                "to start afresh"
            ) from None
        return copy_live(live)

    def kept_state(self) -> LiveState | None:
        """The state the last read saw, with this backend's own applies since (``backends.base.KeptState``);
        None when a whole read is due.  Writes of other connections since are not looked for: no I/O."""
        if self._live is None or self.cloud.db.total_changes != self._seen[1]:
            return None
        return copy_live(self._live)

    def _refresh(self, action: Action) -> None:
        """After ``action`` committed: its resource as the database now has it, or a whole read next time."""
        live = self._live
        if live is None:
            return
        changes = self.cloud.db.total_changes
        with self.cloud.snapshot() as db:
            if isinstance(action, CreateAlias | UpdateAlias | DeleteAlias):
                key = (action.function, action.alias)
                row = db.execute("SELECT * FROM aliases WHERE function = ? AND name = ?", key).fetchone()
                if row is None:
                    live.aliases.pop(key, None)
                else:
                    live.aliases[key] = self._alias_of(row)
            elif isinstance(action, CreateStage | UpdateStage | DeleteStage):
                ids = db.execute("SELECT id FROM rest_apis WHERE name = ?", (action.api,)).fetchall()
                if len(ids) != 1:  # no API, or two of one name: as the whole read resolves it
                    self._live = None
                    return
                api_id = ids[0]["id"]
                key = (action.api, action.stage)
                row = db.execute(
                    "SELECT * FROM stages WHERE api_id = ? AND name = ?", (api_id, action.stage)
                ).fetchone()
                if row is None:
                    live.stages.pop(key, None)
                else:
                    hashes = dict(
                        db.execute("SELECT id, definition_sha256 FROM deployments WHERE api_id = ?", (api_id,))
                    )
                    live.stages[key] = self._stage_of(row, action.api, hashes)
            else:  # APIs and deployments (rare: a definition changed): read everything again
                self._live = None
                return
        self._seen = (self._seen[0], changes)

    def _read(self, db: sqlite3.Connection) -> LiveState:
        self._decoded = {}  # one whole read decodes each distinct JSON text once
        try:
            return self._read_all(db)
        finally:
            self._decoded = {}

    def _json(self, text: str) -> Any:
        """``json.loads(text)``, remembered during a whole read (thousands of stages share a few texts); the
        caller copies what it keeps mutable."""
        if self._decoded is None:
            return json.loads(text)
        value = self._decoded.get(text)
        if value is None:
            value = self._decoded[text] = json.loads(text)
        return value

    def _settings(self, text: str | None) -> StageSettings:
        if not text:
            return settings_from_json(None)
        if self._decoded is None:
            return settings_from_json(json.loads(text))
        key = f"settings:{text}"
        value = self._decoded.get(key)
        if value is None:
            value = self._decoded[key] = settings_from_json(json.loads(text))  # frozen: shared as it is
        return cast(StageSettings, value)

    def _read_all(self, db: sqlite3.Connection) -> LiveState:
        live = LiveState(instance=self.instance)
        names: dict[str, str] = {}
        for row in db.execute(
            "SELECT id, name, description, definition_sha256, managed, owner, endpoint_type, vpc_endpoint_ids, tags"
            " FROM rest_apis"
        ):
            names[row["id"]] = row["name"]
            live.apis[row["name"]] = LiveApi(
                row["name"],
                row["id"],
                row["description"],
                row["definition_sha256"],
                bool(row["managed"]),
                row["owner"],
                endpoint_type=row["endpoint_type"] or NEW_API_ENDPOINT_TYPE,
                vpc_endpoint_ids=tuple(json.loads(row["vpc_endpoint_ids"] or "[]")),
                tags=json.loads(row["tags"] or "{}"),
                url=self.cloud.url(row["id"], "").rstrip("/"),
            )
        hashes: dict[str, str | None] = {}
        for row in db.execute("SELECT id, api_id, definition_sha256, revision FROM deployments ORDER BY created_at"):
            hashes[row["id"]] = row["definition_sha256"]
            by_hash = live.deployments.setdefault(names[row["api_id"]], {})
            by_hash.setdefault(
                row["definition_sha256"], LiveDeployment(row["id"], row["definition_sha256"], row["revision"])
            )
        for row in db.execute("SELECT * FROM stages"):
            api = names[row["api_id"]]
            live.stages[(api, row["name"])] = self._stage_of(row, api, hashes)
        for row in db.execute("SELECT name FROM functions"):
            live.versions[row["name"]] = {LATEST}
        for row in db.execute("SELECT function, version FROM versions"):
            live.versions[row["function"]].add(str(row["version"]))
        for row in db.execute("SELECT * FROM aliases"):
            live.aliases[(row["function"], row["name"])] = self._alias_of(row)
        live.domains = {str(row[0]) for row in db.execute("SELECT name FROM domain_names")}
        for row in db.execute("SELECT * FROM base_path_mappings"):
            key = (row["domain"], row["base_path"])
            live.mappings[key] = LiveBasePathMapping(
                *key, row["api_id"], names.get(row["api_id"]), row["stage"], bool(row["managed"]), row["owner"]
            )
        return live

    def read_alarms(self, names: Sequence[str]) -> dict[str, AlarmState]:
        try:
            return self.cloud.alarms(names)
        except sqlite3.Error as exc:
            raise BackendError(f"local backend: {exc}", temporary=True, code="SQLiteError") from None

    def _stage_of(self, row: sqlite3.Row, api: str, hashes: dict[str, str | None]) -> LiveStage:
        canary = None
        if row["canary"]:
            raw = json.loads(row["canary"])
            canary = LiveCanary(
                percent_traffic=normalize_percent(raw["percentTraffic"]),
                definition_sha256=hashes.get(raw["deploymentId"]),
                deployment_id=raw["deploymentId"],
                variables=raw.get("stageVariableOverrides", {}),
                use_stage_cache=bool(raw.get("useStageCache", False)),
            )
        return LiveStage(
            api=api,
            name=row["name"],
            deployment_id=row["deployment_id"],
            definition_sha256=hashes.get(row["deployment_id"]),
            description=row["description"],
            variables=dict(self._json(row["variables"])),
            canary=canary,
            url=self.cloud.url(row["api_id"], row["name"]),
            managed=bool(row["managed"]),
            owner=row["owner"],
            settings=self._settings(row["settings"]),
        )

    def _alias_of(self, row: sqlite3.Row) -> LiveAlias:
        return LiveAlias(
            function=row["function"],
            name=row["name"],
            description=row["description"],
            routing=routing_from_lambda(row["function_version"], self._json(row["additional_weights"])),
            managed=bool(row["managed"]),
            revision_id=row["revision_id"],
            owner=row["owner"],
        )

    def apply(self, action: Action) -> None:
        if self.cloud.db.total_changes != self._seen[1]:  # written outside apply since: the kept state is unsure
            self._live = None
        try:
            with self.cloud.transaction():
                self._apply(action)
        except sqlite3.Error as exc:  # locked, interrupted, disk full: nothing was written, retrying may help
            damaged = "malformed" in str(exc) or "not a database" in str(exc)  # a damaged page: it will not
            where = f" ({self.cloud.path} is damaged)" if damaged else ""
            raise BackendError(f"local backend: {exc}{where}", temporary=not damaged, code="SQLiteError") from None
        try:
            self._refresh(action)
        except sqlite3.Error:  # the action is done; only the kept state is unsure: read it whole next time
            self._live = None

    def _deployment_for(self, api_id: str, sha256: str) -> str:
        row = self.cloud.db.execute(
            "SELECT id FROM deployments WHERE api_id = ? AND definition_sha256 = ? ORDER BY created_at LIMIT 1",
            (api_id, sha256),
        ).fetchone()
        if row is None:
            raise _error("NotFoundException", f"no deployment of definition {sha256[:12]} exists; re-plan")
        return str(row["id"])

    def _canary(self, api_id: str, canary: DesiredCanary | None) -> dict[str, Any] | None:
        if canary is None:
            return None
        return {
            "percentTraffic": canary.percent_traffic,
            "deploymentId": self._deployment_for(api_id, canary.definition.sha256),
            "stageVariableOverrides": dict(canary.variables),
            **({"useStageCache": True} if canary.use_stage_cache else {}),
        }

    def _check_owner(self, row: sqlite3.Row | None, what: str, code: str = "ConflictException") -> None:
        """Refuse to touch ``row`` unless this instance manages it."""
        if row is None:
            return
        if not row["managed"]:
            raise _error(code, f"{what} exists and is not managed by reconciler")
        owner = row["owner"] or DEFAULT_INSTANCE
        if owner != self.instance:
            raise _error(code, f"{what} is managed by reconciler instance {owner!r}, not {self.instance!r}")

    def _adopt(self, table: str, where: str, params: tuple[str, ...], what: str) -> None:
        """Mark an unmanaged resource as this instance's; adopting one's own again is a no-op."""
        row = self.cloud.db.execute(f"SELECT managed, owner FROM {table} WHERE {where}", params).fetchone()
        if row is None:
            raise _error("NotFoundException", f"{what} does not exist; re-plan")
        if row["managed"]:
            self._check_owner(row, what)
            return
        self.cloud.db.execute(f"UPDATE {table} SET managed = 1, owner = ? WHERE {where}", (self.instance, *params))

    def _managed_api_id(self, name: str) -> str | None:
        """The id of this instance's API ``name``, None if there is none; anyone else's is a conflict."""
        row = self.cloud.db.execute("SELECT id, managed, owner FROM rest_apis WHERE name = ?", (name,)).fetchone()
        self._check_owner(row, f"REST API {name}")
        return None if row is None else str(row["id"])

    def _managed_stage_exists(self, api_id: str, stage: str) -> bool:
        row = self.cloud.db.execute(
            "SELECT managed, owner FROM stages WHERE api_id = ? AND name = ?", (api_id, stage)
        ).fetchone()
        self._check_owner(row, f"stage {stage}")
        return row is not None

    def _put_mapping(self, action: CreateBasePathMapping | UpdateBasePathMapping) -> None:
        """Create the mapping, or point this instance's at the action's stage (a repeat changes nothing)."""
        cloud = self.cloud
        api_id = cloud.api_id(action.api)
        row = cloud.db.execute(
            "SELECT managed, owner FROM base_path_mappings WHERE domain = ? AND base_path = ?",
            (action.domain, action.base_path),
        ).fetchone()
        if row is None:
            cloud.create_base_path_mapping(
                action.domain, action.base_path, api_id, action.stage, managed=True, owner=self.instance
            )
            return
        self._check_owner(row, action.resource)
        cloud.update_base_path_mapping(action.domain, action.base_path, api_id, action.stage)

    def _apply(self, action: Action) -> None:
        cloud = self.cloud
        match action:
            case CreateApi():
                found = self._managed_api_id(action.api)
                wanted = action.settings
                api_id = found or cloud.create_rest_api(
                    action.api,
                    action.description,
                    managed=True,
                    owner=self.instance,
                    endpoint_type=wanted.endpointType or NEW_API_ENDPOINT_TYPE,
                    vpc_endpoint_ids=wanted.vpcEndpointIds,
                    tags=wanted.tags,
                )
                cloud.put_rest_api(api_id, action.definition.body, action.definition.sha256, action.description)
            case UpdateApi():
                api_id = self._managed_api_id(action.api) or cloud.api_id(action.api)
                cloud.put_rest_api(api_id, action.definition.body, action.definition.sha256, action.description)
                wanted = action.settings
                if wanted.endpointType is not None:
                    vpc = wanted.vpcEndpointIds if wanted.endpointType == "PRIVATE" else ()
                    cloud.update_rest_api_endpoint(api_id, wanted.endpointType, vpc)
                cloud.set_rest_api_tags(api_id, wanted.tags)
            case CreateDeployment():
                api_id = cloud.api_id(action.api)
                exists = cloud.db.execute(
                    "SELECT 1 FROM deployments WHERE api_id = ? AND definition_sha256 = ?",
                    (api_id, action.definition.sha256),
                ).fetchone()
                if exists:
                    return
                current = cloud.db.execute("SELECT description FROM rest_apis WHERE id = ?", (api_id,)).fetchone()
                cloud.put_rest_api(api_id, action.definition.body, action.definition.sha256, current["description"])
                description = json.dumps({"sha256": action.definition.sha256, "revision": action.revision})
                cloud.create_deployment(api_id, description, action.revision)
                if action.api_definition.sha256 != action.definition.sha256:
                    cloud.put_rest_api(
                        api_id, action.api_definition.body, action.api_definition.sha256, current["description"]
                    )
            case CreateStage() | UpdateStage():
                api_id = cloud.api_id(action.api)
                deployment_id = self._deployment_for(api_id, action.definition.sha256)
                canary = self._canary(api_id, action.canary)
                if self._managed_stage_exists(api_id, action.stage):
                    cloud.update_stage(
                        api_id, action.stage, deployment_id, action.description, action.variables, canary
                    )
                else:
                    cloud.create_stage(
                        api_id,
                        action.stage,
                        deployment_id,
                        action.description,
                        action.variables,
                        canary,
                        managed=True,
                        owner=self.instance,
                    )
                if action.settings is not None:
                    cloud.set_stage_settings(api_id, action.stage, action.settings)
            case CreateAlias() | UpdateAlias():
                version, weights = routing_to_lambda(action.routing)
                row = cloud.db.execute(
                    "SELECT managed, owner, function_version, additional_weights, description FROM aliases"
                    " WHERE function = ? AND name = ?",
                    (action.function, action.alias),
                ).fetchone()
                if row is None:
                    cloud.create_alias(
                        action.function,
                        action.alias,
                        version,
                        weights,
                        action.description,
                        managed=True,
                        owner=self.instance,
                    )
                    return
                self._check_owner(row, f"alias {action.alias}", "ResourceConflictException")
                if _alias_target(row) == (version, weights, action.description):
                    return  # already as wanted: a repeated action is a no-op, whatever the RevisionId
                else:
                    revision_id = action.revision_id if isinstance(action, UpdateAlias) else None
                    cloud.update_alias(action.function, action.alias, version, weights, action.description, revision_id)
            case DeleteStage():
                row = cloud.db.execute("SELECT id FROM rest_apis WHERE name = ?", (action.api,)).fetchone()
                if row is not None and self._managed_stage_exists(str(row["id"]), action.stage):
                    cloud.delete_stage(str(row["id"]), action.stage)
            case DeleteAlias():
                cloud.db.execute(
                    "DELETE FROM aliases WHERE function = ? AND name = ? AND managed = 1 AND coalesce(owner, ?) = ?",
                    (action.function, action.alias, DEFAULT_INSTANCE, self.instance),
                )
            case AdoptApi():
                self._adopt("rest_apis", "name = ?", (action.api,), f"REST API {action.api}")
            case AdoptStage():
                api_id = cloud.api_id(action.api)
                self._adopt("stages", "api_id = ? AND name = ?", (api_id, action.stage), f"stage {action.stage}")
            case AdoptAlias():
                self._adopt(
                    "aliases", "function = ? AND name = ?", (action.function, action.alias), f"alias {action.alias}"
                )
            case CreateBasePathMapping() | UpdateBasePathMapping():
                self._put_mapping(action)
            case DeleteBasePathMapping():
                cloud.db.execute(
                    "DELETE FROM base_path_mappings WHERE domain = ? AND base_path = ? AND managed = 1"
                    " AND coalesce(owner, ?) = ?",
                    (action.domain, action.base_path, DEFAULT_INSTANCE, self.instance),
                )
            case AdoptBasePathMapping():
                where = "domain = ? AND base_path = ?"
                self._adopt("base_path_mappings", where, (action.domain, action.base_path), action.resource)
            case _:
                assert_never(action)
