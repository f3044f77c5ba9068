"""Authorization: who may do what, decided by the Cedar policies in policies/.

The policies and schema are parsed and validated once, in `Authorizer.from_dir`; `decide` only
builds the few entities of one request and evaluates. Every policy carries an @id annotation,
and that annotation is what a `Decision` reports as the deciding policy.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import cedarpy

from xinyi.crypto.identity import Principal


def _default_policy_dir() -> Path:
    """XINYI_POLICY_DIR if set; else the repository's policies/; else the copy in the wheel."""
    configured = os.environ.get("XINYI_POLICY_DIR")
    if configured:
        return Path(configured)
    here = Path(__file__).resolve().parent
    repository = here.parent / "policies"
    return repository if repository.is_dir() else here / "_policies"


DEFAULT_POLICY_DIR = _default_policy_dir()

_NAMESPACE = "Xinyi"
MAX_REMEMBERED = 10_000  # decisions kept per policy set; forgotten all at once past this
_NETWORK_ID = "xinyi"


class Action(StrEnum):
    QUERY = "query"
    ROUTE_QUERY = "route_query"
    RELAY_QUERY = "relay_query"
    MANAGE_CONSENT = "manage_consent"
    DELIVER_CONSENT = "deliver_consent"
    REGISTER_NODE = "register_node"
    READ_DIRECTORY = "read_directory"
    READ_AUDIT = "read_audit"
    SUBMIT_CHECKPOINT = "submit_checkpoint"
    READ_ACCESSES = "read_accesses"
    HANDLE_DISPUTES = "handle_disputes"
    READ_DISPUTES = "read_disputes"
    READ_NODE_REPORT = "read_node_report"
    QUERY_STATISTICS = "query_statistics"
    SUBMIT_MODEL = "submit_model"
    APPROVE_MODEL = "approve_model"
    REGISTER_INSTITUTION = "register_institution"
    REVIEW_HOLDINGS = "review_holdings"
    REVIEW_NODES = "review_nodes"


class ResourceKind(StrEnum):
    """The Cedar entity types a request can be about (without the namespace)."""

    ENTERPRISE = "Enterprise"
    AUDIT_LOG = "AuditLog"
    NETWORK = "Network"


@dataclass(frozen=True, slots=True)
class Resource:
    """What a request is about. Build it with the constructors below, not by hand."""

    kind: ResourceKind
    id: str

    @classmethod
    def enterprise(cls, uscc: str) -> "Resource":
        return cls(ResourceKind.ENTERPRISE, uscc)

    @classmethod
    def audit_log(cls, owner: str) -> "Resource":
        """The audit log kept by `owner`, written as a principal, e.g. "node/510100"."""
        return cls(ResourceKind.AUDIT_LOG, owner)

    @classmethod
    def network(cls) -> "Resource":
        return cls(ResourceKind.NETWORK, _NETWORK_ID)


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    policy_ids: tuple[str, ...]  # @id annotations of the deciding policies
    reason: str


class PolicyError(Exception):
    """A policy or schema file that cannot be loaded; the message names the file."""


class Authorizer:
    """Decides requests against a fixed, pre-validated policy set. Safe to share."""

    def __init__(self, policies: cedarpy.PolicySet, schema: cedarpy.Schema) -> None:
        # Cedar is deterministic: the same request against the same policies gets the same
        # decision, so decisions are remembered beside the policy set that made them (a
        # reload swaps both at once) and a query evaluates Cedar only for a request not seen.
        self._state: tuple[cedarpy.PolicySet, cedarpy.Schema, dict] = (policies, schema, {})

    def reload(self, path: Path) -> None:
        """Replace the policy set with the one in `path` (SIGHUP). On any error the current set
        stays in force and PolicyError says why; the swap itself is one assignment."""
        self._state = type(self).from_dir(path)._state

    @classmethod
    def from_dir(cls, path: Path = DEFAULT_POLICY_DIR) -> "Authorizer":
        """Load the one *.cedarschema and every *.cedar file in `path`, or raise PolicyError."""
        path = Path(path)
        schema = _load_schema(path)
        policy_files = sorted(path.glob("*.cedar"))
        if not policy_files:
            raise PolicyError(f"{path}: no *.cedar policy files")
        static_policies: dict[str, Any] = {}
        origins: dict[str, Path] = {}
        for policy_file in policy_files:
            for policy_id, policy in _load_policy_file(policy_file, schema).items():
                if policy_id in origins:
                    raise PolicyError(
                        f'{policy_file}: @id("{policy_id}") is already used in {origins[policy_id]}'
                    )
                static_policies[policy_id] = policy
                origins[policy_id] = policy_file
        # Keying the set by @id (instead of Cedar's positional "policy0", ...) makes Cedar itself
        # report the annotations, in reasons and in evaluation error messages alike.
        policy_json = {"staticPolicies": static_policies, "templates": {}, "templateLinks": []}
        try:
            policies = cedarpy.PolicySet.from_json_str(json.dumps(policy_json))
        except ValueError as exc:
            raise PolicyError(f"{path}: cannot combine the policy files: {exc}") from None
        return cls(policies, schema)

    def decide(
        self,
        principal: Principal,
        action: Action,
        resource: Resource,
        context: dict[str, Any] | None = None,
        *,
        licence: str = "",
        represents: frozenset[str] = frozenset(),
    ) -> Decision:
        """Allow or deny; never raises for a request Cedar rejects, it denies instead.

        `licence` comes from the principal's certificate, `represents` from the registry's
        delegations: attributes never come from a request field.
        """
        policies, schema, remembered = self._state
        context = _jsonable(context or {})
        key = (str(principal), str(action), str(resource.kind), resource.id, licence, tuple(sorted(represents)),
               json.dumps(context, sort_keys=True, ensure_ascii=False))
        decision = remembered.get(key)
        if decision is None:
            decision = self._evaluate(policies, schema, principal, action, resource, context, licence, represents)
            if len(remembered) >= MAX_REMEMBERED:
                remembered.clear()
            remembered[key] = decision
        return decision

    @staticmethod
    def _evaluate(policies, schema, principal: Principal, action: Action, resource: Resource,
                  context: dict[str, Any], licence: str, represents: frozenset[str]) -> Decision:
        caller_uid = {"type": f"{_NAMESPACE}::Caller", "id": str(principal)}
        resource_uid = {"type": f"{_NAMESPACE}::{resource.kind}", "id": resource.id}
        entities = [
            {
                "uid": caller_uid,
                "attrs": {"role": str(principal.role), "id": principal.id, "licence": licence,
                          "represents": sorted(represents)},
                "parents": [{"type": f"{_NAMESPACE}::Role", "id": str(principal.role)}],
            },
            {
                "uid": resource_uid,
                "attrs": {"uscc": resource.id} if resource.kind is ResourceKind.ENTERPRISE else {},
                "parents": [],
            },
        ]
        request = {
            "principal": caller_uid,
            "action": {"type": f"{_NAMESPACE}::Action", "id": str(action)},
            "resource": resource_uid,
            "context": context,
        }
        try:
            result = cedarpy.is_authorized(request, policies, entities, schema)
        except (ValueError, TypeError) as exc:
            return Decision(False, (), f"denied: Cedar cannot evaluate the request: {exc}")
        errors = result.diagnostics.errors
        if errors:
            # Fail closed: a policy that errored may have been a forbid that would have denied.
            return Decision(False, (), "denied: Cedar reported an error: " + "; ".join(errors))
        policy_ids = tuple(sorted(result.diagnostics.reasons))
        if result.allowed:
            return Decision(True, policy_ids, f"allowed by {', '.join(policy_ids)}")
        if policy_ids:
            return Decision(False, policy_ids, f"denied by {', '.join(policy_ids)}")
        return Decision(False, (), f"no policy permits {principal} to {action}")


def _load_schema(path: Path) -> cedarpy.Schema:
    schema_files = sorted(path.glob("*.cedarschema"))
    if len(schema_files) != 1:
        found = ", ".join(f.name for f in schema_files) or "none"
        raise PolicyError(f"{path}: expected exactly one *.cedarschema file, found {found}")
    try:
        return cedarpy.Schema.from_str(schema_files[0].read_text(encoding="utf-8"))
    except ValueError as exc:
        raise PolicyError(f"{schema_files[0]}: invalid schema: {exc}") from None


def _load_policy_file(policy_file: Path, schema: cedarpy.Schema) -> dict[str, Any]:
    """Parse and validate one file; return its policies (Cedar JSON form) keyed by @id."""
    text = policy_file.read_text(encoding="utf-8")
    try:
        parsed = json.loads(cedarpy.policies_to_json_str(text))
    except ValueError as exc:
        raise PolicyError(f"{policy_file}: cannot parse: {exc}") from None
    if parsed["templates"]:
        raise PolicyError(f"{policy_file}: templates (?principal, ?resource) are not supported")
    validation = cedarpy.validate_policies(text, schema)
    if not validation.validation_passed:
        names = validation.id_annotations_by_policy_id
        problems = "; ".join(
            f"policy {names.get(e.policy_id, e.policy_id)!r}: {e.error}" for e in validation.errors
        )
        raise PolicyError(f"{policy_file}: does not match the schema: {problems}")
    by_id: dict[str, Any] = {}
    for cedar_id, policy in parsed["staticPolicies"].items():
        policy_id = policy.get("annotations", {}).get("id")
        if not policy_id:
            position = int(cedar_id.removeprefix("policy")) + 1
            raise PolicyError(f"{policy_file}: policy number {position} has no @id annotation")
        if policy_id in by_id:
            raise PolicyError(f'{policy_file}: @id("{policy_id}") is used twice')
        by_id[policy_id] = policy
    return by_id


def _jsonable(context: dict[str, Any]) -> dict[str, Any]:
    """Cedar sets arrive as JSON arrays; accept Python sets for them (json cannot encode sets)."""
    return {
        key: sorted(value) if isinstance(value, (set, frozenset)) else value
        for key, value in context.items()
    }
