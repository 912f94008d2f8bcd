"""The ``aws`` backend: the ``Backend`` protocol over API Gateway REST APIs and Lambda aliases.

Called by the engine (``make_backend``).  ``read`` makes one paginated
``GetRestApis``, then per API ``GetDeployments`` + ``GetStages``, and per
function ``ListAliases`` + ``ListVersionsByFunction``: never one call per
resource.  ``apply`` runs one plan action, idempotently, from the live state
that ``read`` saw (kept here and updated after every write).

What marks a resource as the tool's own (README.md, "The aws backend", has the details):
* RestApi: tag ``reconciler:managed=true`` (set by ``CreateRestApi``), and its
  current definition hash at the end of its description
  (``Orders service [reconciler:definition-sha256=<hex>]``), because
  ``GetRestApis`` returns descriptions and tags but moto cannot tag an API later;
* Deployment: description ``{"revision": ..., "sha256": ...}``;
* Stage: tag ``reconciler:managed=true``;
* Alias: description ``[reconciler] <the spec's description>``;
* BasePathMapping (no tags of its own): a tag of its custom domain,
  ``reconciler:mapping:<base path>=<instance>`` (``aws_model.mapping_tag``).
Unmarked resources are never changed or deleted.  Markers, patches and
parsing: ``aws_model.py``; calls, pacing and errors: ``aws_calls.py``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any, TypeGuard, TypeVar, assert_never

import structlog

from reconciler.backends.aws_calls import ACCESS_CODES, AwsCalls, Rates
from reconciler.backends.aws_model import (
    ALIAS_DESCRIPTION_MAX,
    ALIAS_MARKER,
    INSTANCE_TAG,
    INVOKE_PRINCIPAL,
    MANAGED_TAG,
    MAPPING_TAG,
    STATEMENT_PREFIX,
    AliasRef,
    CanaryTarget,
    PatchOp,
    alias_description,
    alias_refs,
    api_description,
    api_url,
    deployment_description,
    desired_refs,
    endpoint_patch,
    live_alias,
    live_api,
    live_mapping,
    live_stage,
    mapping_tag,
    parse_deployment_description,
    patch_replace,
    stage_patch,
    tag_changes,
)
from reconciler.backends.base import AlarmState
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
    LiveDeployment,
    LiveStage,
    LiveState,
    PlanWarning,
    UpdateAlias,
    UpdateApi,
    UpdateBasePathMapping,
    UpdateStage,
    copy_live,
    owner_of,
    routing_to_lambda,
)
from reconciler.openapi import UNKNOWN_ACCOUNT
from reconciler.settings import NEW_API_ENDPOINT_TYPE
from reconciler.specs import Definition, DesiredState

ALARM_BATCH = 100  # DescribeAlarms takes at most 100 AlarmNames

log = structlog.get_logger("reconciler.backends.aws")
_K = TypeVar("_K", bound=tuple[str, ...])
_Owned = TypeVar("_Owned", LiveStage, LiveAlias, LiveBasePathMapping)

# ------------------------------------------------------------------- backend


def _same(a: object, b: object) -> bool:
    """The same spec in two desired states (a memoised one is the same object: no field-by-field compare)."""
    return a is b or a == b


class AwsBackend:
    """The ``Backend`` protocol over boto3 ``apigateway`` and ``lambda``; every action idempotent."""

    name = "aws"

    def __init__(
        self,
        region: str | None = None,
        endpoint_url: str | None = None,
        rates: Rates | None = None,
        retry_mode: str | None = None,
        max_attempts: int | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        instance: str = DEFAULT_INSTANCE,
        on_wait: Callable[[float, str], None] | None = None,
    ) -> None:
        self.instance = instance
        self.calls = AwsCalls(
            region,
            endpoint_url,
            rates or Rates.from_env(),
            retry_mode,
            max_attempts,
            clock=clock,
            sleep=sleep,
            on_wait=on_wait,
        )
        self.region = self.calls.region
        self._live = LiveState()
        self._desired = DesiredState()
        self._definitions: dict[str, Definition] = {}
        self._functions_read: set[str] = set()
        self._imported: dict[str, str] = {}  # api id -> sha256 this process imported last
        self._granted: set[tuple[str, str, str]] = set()
        self._hashes: dict[str, dict[str, str]] = {}  # api name -> deployment id -> definition sha256
        self._accounts: dict[str, str] = {}  # function -> account id, from its aliases' ARNs
        self._policies: dict[tuple[str, str], set[str]] = {}
        self._listed = False  # read() has listed every REST API: a name it did not see does not exist
        self._domain_arns: dict[str, str] = {}  # custom domain name -> its ARN (the tags' resource)
        self._warnings: list[PlanWarning] = []  # of the actions applied since take_warnings
        self._acted_apis: set[str] = set()  # APIs, functions and mappings written since the last read:
        self._acted_functions: set[str] = set()  # read_touched reads them again, whatever the specs say
        self._acted_mappings = False

    def read_alarms(self, names: Sequence[str]) -> dict[str, AlarmState]:
        """CloudWatch ``DescribeAlarms`` for rollout analysis, 100 names per request (its limit)."""
        found: dict[str, AlarmState] = {}
        unique = sorted(set(names))
        paginator = self.calls.cloudwatch.get_paginator("describe_alarms")
        for start in range(0, len(unique), ALARM_BATCH):
            batch = unique[start : start + ALARM_BATCH]
            pages = self.calls.call(
                "CloudWatch",
                "DescribeAlarms",
                lambda batch=batch: list(  # type: ignore[misc]
                    paginator.paginate(AlarmNames=batch, AlarmTypes=["MetricAlarm", "CompositeAlarm"])
                ),
            )
            for page in pages:
                for alarm in [*page.get("MetricAlarms", []), *page.get("CompositeAlarms", [])]:
                    name, stamp = str(alarm["AlarmName"]), alarm.get("StateUpdatedTimestamp")
                    updated = stamp.timestamp() if stamp is not None else 0.0
                    found[name] = AlarmState(name, str(alarm.get("StateValue", "INSUFFICIENT_DATA")), updated)
        return found

    def close(self) -> None:
        self.calls.close()

    # ------------------------------------------------------------------ read

    def read(self, desired: DesiredState) -> LiveState:
        """APIs named in ``desired`` or this instance's, their deployments and stages; the functions named."""
        live = LiveState(instance=self.instance)
        self._hashes = {}
        for item in self._list_apis():
            api = live_api(item, self.region)
            if api.name not in desired.apis and owner_of(api) != self.instance:
                continue
            known = live.apis.get(api.name)
            if known is None or self._rank(api) < self._rank(known):
                live.apis[api.name] = api
        for name in sorted(live.apis):
            self._read_api(live, live.apis[name])
        for function in sorted(desired.functions):
            self._read_function(live, function)
        self._read_mappings(live, desired)
        self._remember(desired, live)
        self._listed = True
        return copy_live(live)

    def read_touched(self, desired: DesiredState) -> LiveState:
        """After a commit: read again only what the commit touched, the rest as the last read (and this
        backend's own writes since) left it; ``read`` (the resync) reads everything and so sees all drift.

        Touched: an API whose spec, or any of whose stages' specs, differs from the last read's desired
        state, or that an action wrote since; likewise a function and its aliases.  A touched API is looked
        for in a fresh listing (it may be new, or gone).  Custom domains and their mappings are read again
        whole when any mapping or (with mappings) any API is touched.  Before any whole read, ``read`` runs.
        """
        previous = self._desired
        if not self._listed or previous.revision is None:
            return self.read(desired)
        apis = set(self._acted_apis)
        for name in desired.apis.keys() | previous.apis.keys():
            if not _same(desired.apis.get(name), previous.apis.get(name)):
                apis.add(name)
        for key in desired.stages.keys() | previous.stages.keys():
            if not _same(desired.stages.get(key), previous.stages.get(key)):
                apis.add(key[0])
        functions = set(self._acted_functions) & desired.functions
        for key in desired.aliases.keys() | previous.aliases.keys():
            if key[0] in desired.functions and not _same(desired.aliases.get(key), previous.aliases.get(key)):
                functions.add(key[0])
        live = copy_live(self._live)
        live.aliases = {key: alias for key, alias in live.aliases.items() if key[0] in desired.functions}
        live.versions = {f: versions for f, versions in live.versions.items() if f in desired.functions}
        if apis:
            listed: dict[str, LiveApi] = {}
            for item in self._list_apis():
                api = live_api(item, self.region)
                if api.name in apis and (api.name in desired.apis or owner_of(api) == self.instance):
                    known = listed.get(api.name)
                    if known is None or self._rank(api) < self._rank(known):
                        listed[api.name] = api
            for name in sorted(apis):
                live.apis.pop(name, None)
                live.deployments.pop(name, None)
                self._hashes.pop(name, None)
                for key in [key for key in live.stages if key[0] == name]:
                    del live.stages[key]
                if name in listed:
                    live.apis[name] = listed[name]
                    self._read_api(live, listed[name])
        for function in sorted(functions):
            live.versions.pop(function, None)
            for key in [key for key in live.aliases if key[0] == function]:
                del live.aliases[key]
            self._read_function(live, function)
        mapped = desired.mappings.keys() | previous.mappings.keys() | live.mappings.keys()
        if self._acted_mappings or (apis and mapped) or desired.mappings != previous.mappings:
            live.domains, live.mappings = set(), {}  # rare: read whole again (a mapping names its API by id)
            self._read_mappings(live, desired)
        self._remember(desired, live)
        return copy_live(live)

    def kept_state(self) -> LiveState | None:
        """What the last read saw, with this backend's own writes since (``backends.base.KeptState``); None
        before the first read.  No API call: drift made since shows at the next read (the resync)."""
        return copy_live(self._live) if self._listed else None

    def _rank(self, api: LiveApi) -> int:
        """Which of several APIs of one name the tool means: this instance's, another's, then any (oldest first)."""
        owner = owner_of(api)
        return 0 if owner == self.instance else 1 if owner is not None else 2

    def _mine(self, resource: LiveApi | LiveStage | LiveAlias | LiveBasePathMapping, what: str) -> None:
        """Refuse to write to a resource this instance does not manage."""
        owner = owner_of(resource)
        if owner is None:
            raise BackendError(f"{what}: exists and is not managed by reconciler; not touching it")
        if owner != self.instance:
            raise BackendError(f"{what}: is managed by reconciler instance {owner!r}, not {self.instance!r}")

    def _unclaimed(self, current: _Owned | None, resource: str, what: str) -> TypeGuard[_Owned]:
        """Whether an adoption has work left: not if ``current`` is this instance's already; an error if it is
        gone since the read (re-plan) or another instance's."""
        if current is None:
            raise BackendError(f"{resource}: no such {what}; re-plan", code="NotFoundException")
        if owner_of(current) == self.instance:
            return False
        if owner_of(current) is not None:
            self._mine(current, resource)
        return True

    def _remember(self, desired: DesiredState, live: LiveState) -> None:
        self._live = copy_live(live)
        self._acted_apis = set()
        self._acted_functions = set()
        self._acted_mappings = False
        self._desired = desired
        self._functions_read = set(desired.functions)
        self._imported = {}  # someone may have imported since the last pass: import again before snapshotting
        self._granted = set()  # or removed a permission: grant again when a stage or alias changes
        self._policies = {}  # statement ids per alias, read (GetPolicy) at most once per pass
        self._definitions = {}
        for api in desired.apis.values():
            self._definitions[api.definition.sha256] = api.definition
        for stage in desired.stages.values():
            self._definitions[stage.definition.sha256] = stage.definition
            if stage.canary is not None:
                self._definitions[stage.canary.definition.sha256] = stage.canary.definition

    def _list_apis(self) -> list[Mapping[str, Any]]:
        """Every REST API of the account and region, oldest first (one paginated listing)."""
        paginator = self.calls.apigateway.get_paginator("get_rest_apis")
        items: list[Mapping[str, Any]] = self.calls.call(
            "RestApi/*",
            "GetRestApis",
            lambda: [i for page in paginator.paginate(PaginationConfig={"PageSize": 500}) for i in page["items"]],
        )
        return sorted(items, key=lambda i: str(i.get("createdDate", "")))

    def _read_api(self, live: LiveState, api: LiveApi) -> None:
        resource = f"RestApi/{api.name}"
        paginator = self.calls.apigateway.get_paginator("get_deployments")
        deployments: list[Mapping[str, Any]] = self.calls.call(
            resource,
            "GetDeployments",
            lambda: [
                i
                for page in paginator.paginate(restApiId=api.id, PaginationConfig={"PageSize": 500})
                for i in page["items"]
            ],
        )
        by_sha = live.deployments.setdefault(api.name, {})
        hashes = self._hashes.setdefault(api.name, {})  # every deployment id, duplicates of a hash included
        for item in sorted(deployments, key=lambda i: str(i.get("createdDate", ""))):
            sha, revision = parse_deployment_description(item.get("description"))
            if sha is not None:
                by_sha.setdefault(sha, LiveDeployment(str(item["id"]), sha, revision))
                hashes[str(item["id"])] = sha
        stages = self.calls.call(resource, "GetStages", lambda: self.calls.apigateway.get_stages(restApiId=api.id))
        for item in stages.get("item", []):
            stage = live_stage(api, item, hashes, self.region)
            live.stages[(api.name, stage.name)] = stage

    def _read_mappings(self, live: LiveState, desired: DesiredState) -> None:
        """One ``GetDomainNames`` listing (the domains and their tags, which name each mapping's owner), then
        ``GetBasePathMappings`` of every domain the specs name or this instance maps a path of.

        Specs without mappings still list the domains, so that a pruned last mapping is found; there an
        account that may not list domains (no apigateway:GET on /domainnames) has no mapping of this tool.
        """
        paginator = self.calls.apigateway.get_paginator("get_domain_names")
        try:
            domains: list[Mapping[str, Any]] = self.calls.call(
                "DomainName/*",
                "GetDomainNames",
                lambda: [i for page in paginator.paginate(PaginationConfig={"PageSize": 500}) for i in page["items"]],
            )
        except BackendError as exc:
            if desired.mappings or exc.code not in ACCESS_CODES:
                raise
            log.info("domains_not_listed", error=str(exc))
            return
        named = {domain for domain, _ in desired.mappings}
        api_names = {api.id: api.name for api in live.apis.values()}
        for item in domains:
            domain = str(item["domainName"])
            live.domains.add(domain)
            tags: Mapping[str, str] = item.get("tags") or {}
            self._domain_arns[domain] = str(item.get("domainNameArn") or self._domain_arn(domain))
            if domain not in named and self.instance not in {v for k, v in tags.items() if k.startswith(MAPPING_TAG)}:
                continue
            for mapping in self._list_mappings(domain):
                found = live_mapping(domain, mapping, tags, api_names)
                live.mappings[(domain, found.base_path)] = found

    def _list_mappings(self, domain: str) -> list[Mapping[str, Any]]:
        """Every base path mapping of ``domain`` (one paginated listing)."""
        paginator = self.calls.apigateway.get_paginator("get_base_path_mappings")
        items: list[Mapping[str, Any]] = self.calls.call(
            f"DomainName/{domain}",
            "GetBasePathMappings",
            lambda: [
                i
                for page in paginator.paginate(domainName=domain, PaginationConfig={"PageSize": 500})
                for i in page.get("items", [])
            ],
        )
        return items

    def _read_function(self, live: LiveState, function: str) -> None:
        resource = f"Function/{function}"
        aliases_paginator = self.calls.lambda_.get_paginator("list_aliases")
        try:
            aliases: list[Mapping[str, Any]] = self.calls.call(
                resource,
                "ListAliases",
                lambda: [
                    a
                    for page in aliases_paginator.paginate(FunctionName=function, PaginationConfig={"PageSize": 50})
                    for a in page["Aliases"]
                ],
            )
        except BackendError as exc:
            if exc.code == "ResourceNotFoundException":
                return  # no such function: absent from live.versions, the plan says so
            raise
        versions_paginator = self.calls.lambda_.get_paginator("list_versions_by_function")
        versions: list[str] = self.calls.call(
            resource,
            "ListVersionsByFunction",
            lambda: [
                str(v["Version"])
                for page in versions_paginator.paginate(FunctionName=function, PaginationConfig={"PageSize": 50})
                for v in page["Versions"]
            ],
        )
        live.versions[function] = set(versions)
        for item in aliases:
            alias = live_alias(function, item)
            live.aliases[(function, alias.name)] = alias
            self._note_account(function, item)

    # ----------------------------------------------------------------- apply

    def apply(self, action: Action) -> None:
        if isinstance(action, CreateAlias | UpdateAlias | DeleteAlias | AdoptAlias):
            self._acted_functions.add(action.function)
        elif hasattr(action, "domain"):  # a base path mapping
            self._acted_mappings = True
        else:
            self._acted_apis.add(str(getattr(action, "api", "")))
        match action:
            case CreateApi():
                self._create_api(action)
            case UpdateApi():
                self._update_api(action)
            case CreateDeployment():
                self._create_deployment(action)
            case CreateStage() | UpdateStage():
                self._put_stage(action)
            case CreateAlias() | UpdateAlias():
                self._put_alias(action)
            case DeleteStage():
                self._delete_stage(action)
            case DeleteAlias():
                self._delete_alias(action)
            case AdoptApi():
                self._adopt_api(action)
            case AdoptStage():
                self._adopt_stage(action)
            case AdoptAlias():
                self._adopt_alias(action)
            case CreateBasePathMapping() | UpdateBasePathMapping():
                self._put_mapping(action)
            case AdoptBasePathMapping():
                self._adopt_mapping(action)
            case DeleteBasePathMapping():
                self._delete_mapping(action)
            case _:
                assert_never(action)

    # ------------------------------------------------------------- REST APIs

    def _api(self, name: str, own: bool = True) -> LiveApi:
        """This instance's API ``name`` as ``read`` saw it (or as listed now, if ``read`` was not called)."""
        api = self._live.apis.get(name)
        if api is None and not self._listed:
            for item in self._list_apis():
                found = live_api(item, self.region)
                if found.name == name and (api is None or self._rank(found) < self._rank(api)):
                    api = found
            if api is not None:
                self._live.apis[name] = api
                self._read_api(self._live, api)
        if api is None:
            raise BackendError(f"RestApi/{name}: no REST API of that name exists; re-plan", code="NotFoundException")
        if own:
            self._mine(api, f"RestApi/{name}")
        return api

    def _adopt_api(self, action: AdoptApi) -> None:
        """Write this instance's mark into the API's description (the API keeps its id, URL and definition)."""
        api = self._api(action.api, own=False)
        if owner_of(api) == self.instance:
            return
        if owner_of(api) is not None:
            self._mine(api, action.resource)
        self._patch_api(api, [patch_replace("/description", api_description(api.description, None, self.instance))])
        self._live.apis[action.api] = replace(api, managed=True, owner=self.instance, definition_sha256=None)

    def _adopt_stage(self, action: AdoptStage) -> None:
        """Tag the stage as this instance's (it keeps its deployment and settings until an update)."""
        api = self._api(action.api)
        key = (api.name, action.stage)
        current = self._live.stages.get(key)
        if not self._unclaimed(current, action.resource, "stage"):
            return
        arn = f"arn:{self.partition}:apigateway:{self.region}::/restapis/{api.id}/stages/{action.stage}"
        self.calls.call(
            action.resource,
            "TagResource",
            lambda: self.calls.apigateway.tag_resource(resourceArn=arn, tags=self._owner_tags()),
        )
        self._live.stages[key] = replace(current, managed=True, owner=self.instance)

    def _adopt_alias(self, action: AdoptAlias) -> None:
        """Write this instance's marker into the alias description (its routing stays until an update)."""
        key = (action.function, action.alias)
        current = self._live.aliases.get(key)
        if not self._unclaimed(current, action.resource, "alias"):
            return
        params: dict[str, Any] = {
            "FunctionName": action.function,
            "Name": action.alias,
            "Description": alias_description(current.description, self.instance)[:ALIAS_DESCRIPTION_MAX],
        }
        if action.revision_id:
            params["RevisionId"] = action.revision_id
        updated = self.calls.call(action.resource, "UpdateAlias", lambda: self.calls.lambda_.update_alias(**params))
        self._live.aliases[key] = live_alias(action.function, updated)

    def _owner_tags(self) -> dict[str, str]:
        return {MANAGED_TAG: "true", INSTANCE_TAG: self.instance}

    @property
    def partition(self) -> str:
        return self.calls.apigateway.meta.partition

    def _create_api(self, action: CreateApi) -> None:
        resource = action.resource
        try:
            api = self._api(action.api)
        except BackendError as exc:
            if exc.code != "NotFoundException":
                raise
            sha = action.definition.sha256
            wanted = action.settings
            endpoint: dict[str, Any] = {"types": [wanted.endpointType or NEW_API_ENDPOINT_TYPE]}  # DESIGN §10
            if wanted.vpcEndpointIds:
                endpoint["vpcEndpointIds"] = list(wanted.vpcEndpointIds)
            created = self.calls.call(
                resource,
                "CreateRestApi",
                lambda: self.calls.apigateway.create_rest_api(
                    name=action.api,
                    description=api_description(action.description, sha, self.instance),
                    tags={**wanted.tags, **self._owner_tags()},
                    endpointConfiguration=endpoint,  # type: ignore[arg-type]
                ),
            )
            api = LiveApi(
                action.api,
                str(created["id"]),
                action.description,
                sha,
                True,
                self.instance,
                endpoint_type=endpoint["types"][0],
                vpc_endpoint_ids=wanted.vpcEndpointIds,
                tags=dict(wanted.tags),
                url=api_url(str(created["id"]), self.region),
            )
            self._live.apis[action.api] = api
            self._live.deployments[action.api] = {}
        description = api_description(action.description, action.definition.sha256, self.instance)
        self._import(api, action.definition, description, action.settings.failOnWarnings)
        self._live.apis[action.api] = replace(
            api, description=action.description, definition_sha256=action.definition.sha256
        )

    def _update_api(self, action: UpdateApi) -> None:
        api = self._api(action.api)
        wanted = api_description(action.description, action.definition.sha256, self.instance)
        settings = action.settings
        if api.definition_sha256 != action.definition.sha256:
            self._import(api, action.definition, wanted, settings.failOnWarnings)
        elif api_description(api.description, api.definition_sha256, self.instance) != wanted:
            self._patch_api(api, [patch_replace("/description", wanted)])
        ops = endpoint_patch(api.endpoint_type, api.vpc_endpoint_ids, settings)
        if ops:
            self._patch_api(api, ops)
        self._tag(
            action.resource,
            f"arn:{self.partition}:apigateway:{self.region}::/restapis/{api.id}",
            api.tags,
            settings.tags,
        )
        endpoint_type = settings.endpointType or api.endpoint_type
        vpc = settings.vpcEndpointIds if settings.endpointType is not None else api.vpc_endpoint_ids
        self._live.apis[action.api] = replace(
            api,
            description=action.description,
            definition_sha256=action.definition.sha256,
            endpoint_type=endpoint_type,
            vpc_endpoint_ids=vpc if endpoint_type == "PRIVATE" else (),
            tags=dict(settings.tags),
        )

    def take_warnings(self) -> list[PlanWarning]:
        """The warnings of the actions applied since the last call (import warnings kept with failOnWarnings off)."""
        taken, self._warnings = self._warnings, []
        return taken

    def _import(self, api: LiveApi, definition: Definition, description: str, fail_on_warnings: bool = True) -> None:
        """``PutRestApi`` (overwrite) ``definition``, then keep the API's name and (marked) description.

        ``fail_on_warnings``: API Gateway rolls the import back on a warning (the error names it); off, the
        warnings come back with the API and are kept for the output (``take_warnings``) and the log.
        """
        resource = f"RestApi/{api.name}"
        try:
            imported = self.calls.call(
                resource,
                "PutRestApi",
                lambda: self.calls.apigateway.put_rest_api(
                    restApiId=api.id,
                    mode="overwrite",
                    failOnWarnings=fail_on_warnings,
                    body=definition.payload.encode("utf-8"),
                ),
            )
        except BackendError as exc:
            if fail_on_warnings and exc.code == "BadRequestException" and "warning" in str(exc).lower():
                raise BackendError(
                    f"{exc}; the import is rolled back on warnings (failOnWarnings: true): fix the definition, or "
                    "set failOnWarnings: false on the RestApi to import it with its warnings",
                    code=exc.code,
                ) from None
            raise
        warnings = [str(w) for w in imported.get("warnings") or []]
        if warnings:
            log.warning("import_warnings", api=api.name, definition_sha256=definition.sha256, warnings=warnings)
            text = "; ".join(warnings)
            self._warnings.append(PlanWarning(resource, f"import warnings: {text}", code="import_warnings"))
        self._imported[api.id] = definition.sha256
        ops: list[PatchOp] = []
        if imported.get("name", api.name) != api.name:
            ops.append(patch_replace("/name", api.name))  # an import may rename the API after info.title
        if (imported.get("description") or "") != description:
            ops.append(patch_replace("/description", description))
        if ops:
            self._patch_api(api, ops)

    def _patch_api(self, api: LiveApi, ops: list[PatchOp]) -> None:
        self.calls.call(
            f"RestApi/{api.name}",
            "UpdateRestApi",
            lambda: self.calls.apigateway.update_rest_api(restApiId=api.id, patchOperations=ops),  # type: ignore[arg-type]
        )

    # ----------------------------------------------------------- deployments

    def _create_deployment(self, action: CreateDeployment) -> None:
        """Snapshot ``action.definition`` (imported just before, never trusted from a marker), then restore."""
        api = self._api(action.api)
        sha = action.definition.sha256
        existing = self._live.deployments.setdefault(api.name, {})
        if sha in existing:
            return
        keep = api_description(api.description, api.definition_sha256, self.instance)
        if self._imported.get(api.id) != sha:
            self._import(api, action.definition, keep, action.fail_on_warnings)
        deployment_id = self._create_deployment_once(api, action)
        existing[sha] = LiveDeployment(deployment_id, sha, action.revision)
        self._hashes.setdefault(api.name, {})[deployment_id] = sha
        if action.api_definition.sha256 != sha:
            self._import(api, action.api_definition, keep, action.fail_on_warnings)

    def _create_deployment_once(self, api: LiveApi, action: CreateDeployment) -> str:
        """CreateDeployment sent once (never retried blindly); if it fails, the hash is looked for first.

        A lost answer (time-out, reset, 5xx after AWS acted) would otherwise make a second deployment of the
        same definition; a deployment carrying the hash is the one asked for, whatever happened to the answer.
        """
        sha = action.definition.sha256
        try:
            created = self.calls.call(
                action.resource,
                "CreateDeployment",
                lambda: self.calls.apigateway_once.create_deployment(
                    restApiId=api.id, description=deployment_description(sha, action.revision)
                ),
            )
            return str(created["id"])
        except BackendError as exc:
            self._read_api(self._live, api)
            found = self._live.deployments.get(api.name, {}).get(sha)
            if found is None:
                raise
            log.info("deployment_found_after_failed_create", api=api.name, deployment_id=found.id, error=str(exc))
            return found.id

    def _deployment_id(self, api: LiveApi, sha: str) -> str:
        found = self._live.deployments.get(api.name, {}).get(sha)
        if found is None:
            self._read_api(self._live, api)
            found = self._live.deployments.get(api.name, {}).get(sha)
        if found is None:
            raise BackendError(
                f"RestApi/{api.name}: no deployment of definition {sha[:12]} exists; re-plan", code="NotFoundException"
            )
        return found.id

    # ---------------------------------------------------------------- stages

    def _put_stage(self, action: CreateStage | UpdateStage) -> None:
        api = self._api(action.api)
        key = (api.name, action.stage)
        deployment_id = self._deployment_id(api, action.definition.sha256)
        canary = None
        if action.canary is not None:
            canary = CanaryTarget(
                action.canary.percent_traffic,
                self._deployment_id(api, action.canary.definition.sha256),
                dict(action.canary.variables),
                action.canary.use_stage_cache,
            )
        current = self._live.stages.get(key)
        before = current
        if current is None:
            current = self._create_stage(api, action, deployment_id, canary) or self._live.stages[key]
        self._mine(current, action.resource)
        ops = stage_patch(current, deployment_id, action.description, action.variables, canary, action.settings)
        if ops:
            updated = self.calls.call(
                action.resource,
                "UpdateStage",
                lambda: self.calls.apigateway.update_stage(
                    restApiId=api.id,
                    stageName=action.stage,
                    patchOperations=ops,  # type: ignore[arg-type]
                ),
            )
            hashes = self._hashes.get(api.name, {})
            self._live.stages[key] = replace(
                live_stage(api, updated, hashes, self.region), managed=True, owner=self.instance
            )
        if action.settings is not None:
            arn = f"arn:{self.partition}:apigateway:{self.region}::/restapis/{api.id}/stages/{action.stage}"
            self._tag(action.resource, arn, current.settings.tags if current.settings else {}, action.settings.tags)
            kept = self._live.stages.get(key)
            if kept is not None and kept.settings is not None:  # the kept state shows the tags just written
                self._live.stages[key] = replace(kept, settings=replace(kept.settings, tags=dict(action.settings.tags)))
        self._grant_stage(api, action, before)

    def _tag(self, resource: str, arn: str, live: dict[str, str], wanted: dict[str, str]) -> None:
        """Make a stage's or API's own tags ``wanted`` (TagResource/UntagResource); marks and aws: tags stay."""
        to_set, to_remove = tag_changes(live, wanted)
        if to_set:
            self.calls.call(
                resource, "TagResource", lambda: self.calls.apigateway.tag_resource(resourceArn=arn, tags=to_set)
            )
        if to_remove:
            self.calls.call(
                resource,
                "UntagResource",
                lambda: self.calls.apigateway.untag_resource(resourceArn=arn, tagKeys=to_remove),
            )

    def _create_stage(
        self, api: LiveApi, action: CreateStage | UpdateStage, deployment_id: str, canary: CanaryTarget | None
    ) -> LiveStage | None:
        """Create the stage; if it exists after all, return it (the caller updates it)."""
        params: dict[str, Any] = {
            "restApiId": api.id,
            "stageName": action.stage,
            "deploymentId": deployment_id,
            "variables": dict(action.variables),
            "tags": {**(action.settings.tags if action.settings else {}), **self._owner_tags()},
        }
        if action.description:
            params["description"] = action.description
        if action.settings is not None:  # what CreateStage takes; the rest goes in the UpdateStage after it
            if action.settings.tracingEnabled:
                params["tracingEnabled"] = True
            if action.settings.cacheClusterEnabled:
                params["cacheClusterEnabled"] = True
                params["cacheClusterSize"] = action.settings.cacheClusterSize or "0.5"
        if canary is not None:
            params["canarySettings"] = {
                "percentTraffic": canary.percent_traffic,
                "deploymentId": canary.deployment_id,
                "stageVariableOverrides": dict(canary.variables),
                **({"useStageCache": True} if canary.use_stage_cache else {}),
            }
        hashes = self._hashes.get(api.name, {})
        try:
            created = self.calls.call(
                action.resource, "CreateStage", lambda: self.calls.apigateway.create_stage(**params)
            )
        except BackendError as exc:
            if exc.code != "ConflictException":
                raise
            found = self.calls.call(
                action.resource,
                "GetStage",
                lambda: self.calls.apigateway.get_stage(restApiId=api.id, stageName=action.stage),
            )
            existing = live_stage(api, found, hashes, self.region)
            self._live.stages[(api.name, action.stage)] = existing
            return existing
        self._live.stages[(api.name, action.stage)] = replace(
            live_stage(api, created, hashes, self.region), managed=True, owner=self.instance
        )
        return None

    def _delete_stage(self, action: DeleteStage) -> None:
        api = self._live.apis.get(action.api)
        if api is None:
            return  # gone already, with its stages
        self._delete_owned(
            self._live.stages,
            (action.api, action.stage),
            action.resource,
            "DeleteStage",
            "NotFoundException",
            lambda: self.calls.apigateway.delete_stage(restApiId=api.id, stageName=action.stage),
        )

    def _delete_owned(
        self,
        kept: dict[_K, LiveStage] | dict[_K, LiveAlias] | dict[_K, LiveBasePathMapping],
        key: _K,
        resource: str,
        operation: str,
        gone: str,
        request: Callable[[], object],
    ) -> bool:
        """Delete this instance's resource ``kept[key]`` and forget it; the error code ``gone`` (already
        deleted) counts as done.  False: it is gone already, or not ours, and nothing was called."""
        current = kept.get(key)
        if current is None or owner_of(current) != self.instance:
            return False
        try:
            self.calls.call(resource, operation, request)
        except BackendError as exc:
            if exc.code != gone:
                raise
        del kept[key]
        return True

    # --------------------------------------------------------------- aliases

    def _put_alias(self, action: CreateAlias | UpdateAlias) -> None:
        version, weights = routing_to_lambda(action.routing)
        description = alias_description(action.description, self.instance)
        if len(description) > ALIAS_DESCRIPTION_MAX:
            raise BackendError(
                f"{action.resource}: description is {len(description)} characters with the {ALIAS_MARKER!r} marker; "
                f"Lambda allows {ALIAS_DESCRIPTION_MAX}: shorten it to {ALIAS_DESCRIPTION_MAX - len(ALIAS_MARKER) - 1}",
                code="ValidationException",
            )
        key = (action.function, action.alias)
        current = self._live.aliases.get(key)
        revision_id = action.revision_id if isinstance(action, UpdateAlias) else None
        if current is None:
            try:
                created = self.calls.call(
                    action.resource,
                    "CreateAlias",
                    lambda: self.calls.lambda_.create_alias(
                        FunctionName=action.function,
                        Name=action.alias,
                        FunctionVersion=version,
                        Description=description,
                        **({"RoutingConfig": {"AdditionalVersionWeights": weights}} if weights else {}),  # type: ignore[arg-type]
                    ),
                )
            except BackendError as exc:
                if exc.code not in ("ResourceConflictException", "ConflictException"):
                    raise
                found = self.calls.call(
                    action.resource,
                    "GetAlias",
                    lambda: self.calls.lambda_.get_alias(FunctionName=action.function, Name=action.alias),
                )
                current = live_alias(action.function, found)
                revision_id = current.revision_id
            else:
                self._note_account(action.function, created)
                self._live.aliases[key] = live_alias(action.function, created)
                self._grant_alias(action.function, action.alias)
                return
        self._mine(current, action.resource)
        params: dict[str, Any] = {
            "FunctionName": action.function,
            "Name": action.alias,
            "FunctionVersion": version,
            "Description": description,
            "RoutingConfig": {"AdditionalVersionWeights": weights},
        }
        if revision_id:
            params["RevisionId"] = revision_id
        try:
            updated = self.calls.call(action.resource, "UpdateAlias", lambda: self.calls.lambda_.update_alias(**params))
        except BackendError as exc:
            if exc.code == "ResourceNotFoundException" and "Alias not found" in str(exc):
                raise ConflictError(f"{exc}; re-plan from live state", code=exc.code) from None
            raise
        self._live.aliases[key] = live_alias(action.function, updated)

    def _delete_alias(self, action: DeleteAlias) -> None:
        self._delete_owned(
            self._live.aliases,
            (action.function, action.alias),
            action.resource,
            "DeleteAlias",
            "ResourceNotFoundException",
            lambda: self.calls.lambda_.delete_alias(FunctionName=action.function, Name=action.alias),
        )

    # ------------------------------------------------------ base path mappings

    def _domain_arn(self, domain: str) -> str:
        """The custom domain's ARN, the resource its tags belong to (as listed, else a public domain's)."""
        return self._domain_arns.get(domain) or f"arn:{self.partition}:apigateway:{self.region}::/domainnames/{domain}"

    def _tag_domain(self, action: CreateBasePathMapping | UpdateBasePathMapping | AdoptBasePathMapping) -> None:
        """Claim the mapping for this instance: its key on the custom domain's tags."""
        arn = self._domain_arn(action.domain)
        tags = {mapping_tag(action.base_path): self.instance}
        self.calls.call(
            action.resource, "TagResource", lambda: self.calls.apigateway.tag_resource(resourceArn=arn, tags=tags)
        )

    def _untag_domain(self, action: CreateBasePathMapping | UpdateBasePathMapping | DeleteBasePathMapping) -> None:
        """Take back this instance's claim on the mapping (its key on the custom domain's tags)."""
        arn = self._domain_arn(action.domain)
        keys = [mapping_tag(action.base_path)]
        self.calls.call(
            action.resource,
            "UntagResource",
            lambda: self.calls.apigateway.untag_resource(resourceArn=arn, tagKeys=keys),
        )

    def _put_mapping(self, action: CreateBasePathMapping | UpdateBasePathMapping) -> None:
        """Create the mapping (claimed on the domain first, so a crash never leaves one unowned), or point
        this instance's at the action's API and stage (``replace /restapiId`` and ``/stage``)."""
        api = self._api(action.api, own=False)
        key = (action.domain, action.base_path)
        current = self._live.mappings.get(key)
        if current is None:
            self._tag_domain(action)  # (an update of a mapping gone since the read re-creates it)
            created: Mapping[str, Any]
            try:
                created = self.calls.call(
                    action.resource,
                    "CreateBasePathMapping",
                    lambda: self.calls.apigateway.create_base_path_mapping(
                        domainName=action.domain, basePath=action.base_path, restApiId=api.id, stage=action.stage
                    ),
                )
            except BackendError as exc:
                if exc.code != "ConflictException":
                    raise
                created = self._made_since_read(action, api, exc)
            self._live.mappings[key] = self._mine_mapping(action.domain, created, api)
            return
        self._mine(current, action.resource)
        ops: list[PatchOp] = []
        if current.rest_api_id != api.id:
            ops.append(patch_replace("/restapiId", api.id))
        if current.stage != action.stage:
            ops.append(patch_replace("/stage", action.stage))
        if not ops:
            return
        updated = self.calls.call(
            action.resource,
            "UpdateBasePathMapping",
            lambda: self.calls.apigateway.update_base_path_mapping(
                domainName=action.domain,
                basePath=action.base_path,
                patchOperations=ops,  # type: ignore[arg-type]
            ),
        )
        self._live.mappings[key] = self._mine_mapping(action.domain, updated, api)

    def _made_since_read(
        self, action: CreateBasePathMapping | UpdateBasePathMapping, api: LiveApi, exc: BackendError
    ) -> Mapping[str, Any]:
        """The mapping a create found taken: this one's (a retry after a lost answer) if it points where the
        action does; else someone else's, and the claim just made is taken back."""
        found = self.calls.call(
            action.resource,
            "GetBasePathMapping",
            lambda: self.calls.apigateway.get_base_path_mapping(domainName=action.domain, basePath=action.base_path),
        )
        if (found.get("restApiId"), found.get("stage")) == (api.id, action.stage):
            return found
        self._untag_domain(action)
        raise ConflictError(f"{exc}; someone made it since the read: re-plan", code=exc.code)

    def _mine_mapping(self, domain: str, item: Mapping[str, Any], api: LiveApi) -> LiveBasePathMapping:
        found = live_mapping(domain, item, {}, {api.id: api.name})
        return replace(found, managed=True, owner=self.instance)

    def _adopt_mapping(self, action: AdoptBasePathMapping) -> None:
        """Claim an existing, unmanaged mapping on the domain's tags (it keeps its target until an update)."""
        key = (action.domain, action.base_path)
        current = self._live.mappings.get(key)
        if not self._unclaimed(current, action.resource, "base path mapping"):
            return
        self._tag_domain(action)
        self._live.mappings[key] = replace(current, managed=True, owner=self.instance)

    def _delete_mapping(self, action: DeleteBasePathMapping) -> None:
        """Delete this instance's mapping, then its claim on the domain's tags."""
        if self._delete_owned(
            self._live.mappings,
            (action.domain, action.base_path),
            action.resource,
            "DeleteBasePathMapping",
            "NotFoundException",
            lambda: self.calls.apigateway.delete_base_path_mapping(domainName=action.domain, basePath=action.base_path),
        ):
            self._untag_domain(action)

    # ----------------------------------------------------------- permissions

    def _old_refs(self, stage: LiveStage | None) -> set[AliasRef]:
        if stage is None:
            return set()
        refs: set[AliasRef] = set()
        definition = self._definitions.get(stage.definition_sha256 or "")
        if definition is not None:
            refs |= alias_refs(definition, stage.variables)
        if stage.canary is not None:
            canary_definition = self._definitions.get(stage.canary.definition_sha256 or "")
            if canary_definition is not None:
                refs |= alias_refs(canary_definition, {**stage.variables, **stage.canary.variables})
        return refs

    def _grant_stage(self, api: LiveApi, action: CreateStage | UpdateStage, before: LiveStage | None) -> None:
        """Let API Gateway invoke every alias the stage names now and did not name before (an integration whose
        permission cannot be worked out is the plan's warning, logged by the engine: ``plan_permissions``)."""
        for ref in sorted(
            desired_refs(action.definition, action.variables, action.canary) - self._old_refs(before),
            key=lambda r: (r.function, r.alias),
        ):
            self._grant(ref, api)

    def _grant_alias(self, function: str, alias: str) -> None:
        """Let API Gateway invoke a new alias from every desired stage that names it."""
        for stage in self._desired.stages.values():
            api = self._live.apis.get(stage.api)
            if api is None:
                continue
            for ref in desired_refs(stage.definition, stage.variables, stage.canary):
                if (ref.function, ref.alias) == (function, alias):
                    self._grant(ref, api)

    def _grant(self, ref: AliasRef, api: LiveApi) -> None:
        """Add the invoke permission to a managed alias; never touch the policy of an alias that is not ours."""
        key = (ref.function, ref.alias, api.id)
        if key in self._granted:
            return
        alias = self._live.aliases.get((ref.function, ref.alias))
        if alias is None and ref.function in self._functions_read:
            return  # no such alias yet: creating it grants the permission
        if alias is None or owner_of(alias) != self.instance:
            self._granted.add(key)  # not ours: the plan warned about it (permission_not_granted)
            return
        account = self._accounts.get(ref.function, "") if ref.account == UNKNOWN_ACCOUNT else ref.account
        if not account:
            log.warning(
                "permission_not_granted",
                alias=f"{ref.function}:{ref.alias}",
                api=api.name,
                reason="the account of ${AWS::AccountId} is unknown (the function has no alias yet)",
            )
            return
        statement = f"{STATEMENT_PREFIX}{api.id}"
        if statement in self._policy(ref.function, ref.alias):
            self._granted.add(key)  # granted before: not sent again
            return
        try:
            self.calls.call(
                f"Alias/{ref.function}/{ref.alias}",
                "AddPermission",
                lambda: self.calls.lambda_.add_permission(
                    FunctionName=ref.function,
                    Qualifier=ref.alias,
                    StatementId=f"{STATEMENT_PREFIX}{api.id}",
                    Action="lambda:InvokeFunction",
                    Principal=INVOKE_PRINCIPAL,
                    SourceArn=f"arn:{ref.partition}:execute-api:{self.region}:{account}:{api.id}/*",
                ),
            )
        except BackendError as exc:
            if exc.code != "ResourceConflictException" or "already exists" not in str(exc):
                raise  # else: granted before
        self._policies.setdefault((ref.function, ref.alias), set()).add(statement)
        self._granted.add(key)

    def _note_account(self, function: str, item: Mapping[str, Any]) -> None:
        """Remember the function's account from an alias ARN (for integration ARNs using ${AWS::AccountId})."""
        arn = str(item.get("AliasArn") or "").split(":")
        if len(arn) > 4 and arn[4]:
            self._accounts[function] = arn[4]

    def _policy(self, function: str, alias: str) -> set[str]:
        """The statement ids of an alias's resource policy, read once per pass (GetPolicy)."""
        key = (function, alias)
        if key not in self._policies:
            try:
                found = self.calls.call(
                    f"Alias/{function}/{alias}",
                    "GetPolicy",
                    lambda: self.calls.lambda_.get_policy(FunctionName=function, Qualifier=alias),
                )
                statements = json.loads(found.get("Policy") or "{}").get("Statement") or []
                qualified = f":function:{function}:{alias}"  # moto answers with the whole function's policy
                self._policies[key] = {
                    str(s.get("Sid"))
                    for s in statements
                    if isinstance(s, dict) and str(s.get("Resource", qualified)).endswith(qualified)
                }
            except BackendError as exc:
                if exc.code != "ResourceNotFoundException":
                    raise
                self._policies[key] = set()  # no policy yet
        return self._policies[key]
