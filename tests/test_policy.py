"""The Cedar policies in policies/ and the authorizer that applies them."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

from xinyi.crypto.identity import Principal, Role
from xinyi.policy import (
    DEFAULT_POLICY_DIR,
    Action,
    Authorizer,
    Decision,
    PolicyError,
    Resource,
)

BANK = Principal(Role.BANK, "914403001922038216")
GUARANTOR = Principal(Role.GUARANTOR, "91310000132149237G")
ENTERPRISE = Principal(Role.ENTERPRISE, "91440300708461136T")
OTHER_ENTERPRISE_USCC = "91100000100003962T"
NODE = Principal(Role.NODE, "510100")
REGISTRY = Principal(Role.REGISTRY, "national")
AUDITOR = Principal(Role.AUDITOR, "pbc-audit")
EVERY_ROLE = (BANK, GUARANTOR, ENTERPRISE, NODE, REGISTRY, AUDITOR)

TARGET = Resource.enterprise(ENTERPRISE.id)


@pytest.fixture(scope="module")
def authz() -> Authorizer:
    return Authorizer.from_dir(DEFAULT_POLICY_DIR)


LICENCE = "B0014H144030001"  # a financial licence number, as carried in the institution's certificate


def query(authz: Authorizer, who: Principal, purpose: str, action: Action = Action.QUERY, licence: str = LICENCE) -> Decision:
    context = {"purpose": purpose, "categories": ["basic", "loans"]}
    return authz.decide(who, action, TARGET, context, licence=licence)


def assert_allowed(decision: Decision, policy_id: str) -> None:
    assert decision.allowed, decision.reason
    assert decision.policy_ids == (policy_id,)
    assert policy_id in decision.reason


def assert_denied_by(decision: Decision, policy_id: str) -> None:
    assert not decision.allowed
    assert policy_id in decision.policy_ids, decision.reason
    assert policy_id in decision.reason


def assert_default_deny(decision: Decision, who: Principal, action: Action) -> None:
    assert not decision.allowed
    assert decision.policy_ids == ()
    assert decision.reason == f"no policy permits {who} to {action}"


# ---- queries


@pytest.mark.parametrize("action", [Action.QUERY, Action.ROUTE_QUERY])
@pytest.mark.parametrize("purpose", ["credit_assessment", "loan_monitoring"])
def test_bank_may_query_for_lending_purposes(authz: Authorizer, action: Action, purpose: str) -> None:
    assert_allowed(
        query(authz, BANK, purpose, action),
        "banks-may-query-for-credit-assessment-or-loan-monitoring",
    )


@pytest.mark.parametrize("action", [Action.QUERY, Action.ROUTE_QUERY])
def test_bank_may_not_query_for_guarantee(authz: Authorizer, action: Action) -> None:
    assert_denied_by(query(authz, BANK, "guarantee", action), "purpose-must-fit-role")


@pytest.mark.parametrize("action", [Action.QUERY, Action.ROUTE_QUERY])
def test_guarantor_may_query_for_guarantee(authz: Authorizer, action: Action) -> None:
    assert_allowed(query(authz, GUARANTOR, "guarantee", action), "guarantors-may-query-for-guarantee")


@pytest.mark.parametrize("purpose", ["credit_assessment", "loan_monitoring"])
def test_guarantor_may_not_query_for_lending_purposes(authz: Authorizer, purpose: str) -> None:
    assert_denied_by(query(authz, GUARANTOR, purpose), "purpose-must-fit-role")


def test_unknown_purpose_is_denied(authz: Authorizer) -> None:
    assert_denied_by(query(authz, BANK, "marketing"), "purpose-must-fit-role")


@pytest.mark.parametrize("who", [ENTERPRISE, NODE, REGISTRY, AUDITOR])
def test_only_banks_and_guarantors_query(authz: Authorizer, who: Principal) -> None:
    assert_denied_by(query(authz, who, "credit_assessment"), "only-banks-and-guarantors-query")


@pytest.mark.parametrize("action", [Action.QUERY, Action.ROUTE_QUERY])
def test_an_enterprise_may_read_its_own_records(authz: Authorizer, action: Action) -> None:
    assert_allowed(query(authz, ENTERPRISE, "self_access", action, licence=""), "enterprises-may-read-their-own-records")


def test_self_access_is_for_the_enterprise_itself(authz: Authorizer) -> None:
    context = {"purpose": "self_access", "categories": ["tax"]}
    other = authz.decide(ENTERPRISE, Action.QUERY, Resource.enterprise(OTHER_ENTERPRISE_USCC), context)
    assert_denied_by(other, "self-access-is-for-the-enterprise-itself")
    for who in (BANK, GUARANTOR, Principal(Role.GOVERNMENT, "11510000000000019E"), NODE, REGISTRY, AUDITOR,
                Principal(Role.REPRESENTATIVE, "zhang-wei")):
        assert_denied_by(query(authz, who, "self_access"), "self-access-is-for-the-enterprise-itself")
    # Only self_access: any other purpose is still the institutions' alone.
    assert_denied_by(query(authz, ENTERPRISE, "credit_assessment"), "only-banks-and-guarantors-query")


def test_query_without_its_context_is_denied_not_raised(authz: Authorizer) -> None:
    decision = authz.decide(BANK, Action.QUERY, TARGET)
    assert not decision.allowed
    assert "categories" in decision.reason


def test_categories_may_be_a_python_set(authz: Authorizer) -> None:
    context = {"purpose": "loan_monitoring", "categories": {"loans", "tax"}}
    assert authz.decide(BANK, Action.QUERY, TARGET, context, licence=LICENCE).allowed


def test_resource_of_the_wrong_kind_is_denied_not_raised(authz: Authorizer) -> None:
    decision = authz.decide(AUDITOR, Action.READ_AUDIT, Resource.network())
    assert not decision.allowed
    assert "read_audit" in decision.reason


def test_registry_may_relay_queries(authz: Authorizer) -> None:
    assert_allowed(
        authz.decide(REGISTRY, Action.RELAY_QUERY, Resource.network()), "registry-may-relay-queries"
    )


def test_bank_may_not_relay_queries(authz: Authorizer) -> None:
    assert_default_deny(
        authz.decide(BANK, Action.RELAY_QUERY, Resource.network()), BANK, Action.RELAY_QUERY
    )


# ---- consent


def test_enterprise_manages_its_own_consent(authz: Authorizer) -> None:
    assert_allowed(
        authz.decide(ENTERPRISE, Action.MANAGE_CONSENT, Resource.enterprise(ENTERPRISE.id)),
        "enterprises-may-manage-their-own-consent",
    )


def test_enterprise_may_not_manage_another_enterprises_consent(authz: Authorizer) -> None:
    decision = authz.decide(
        ENTERPRISE, Action.MANAGE_CONSENT, Resource.enterprise(OTHER_ENTERPRISE_USCC)
    )
    assert_denied_by(decision, "no-managing-another-enterprises-consent")


def test_bank_may_not_manage_consent(authz: Authorizer) -> None:
    decision = authz.decide(BANK, Action.MANAGE_CONSENT, Resource.enterprise(ENTERPRISE.id))
    assert_denied_by(decision, "no-managing-another-enterprises-consent")


def test_registry_delivers_consents(authz: Authorizer) -> None:
    assert_allowed(
        authz.decide(REGISTRY, Action.DELIVER_CONSENT, Resource.network()),
        "registry-may-deliver-consents",
    )


def test_node_may_not_deliver_consents(authz: Authorizer) -> None:
    assert_default_deny(
        authz.decide(NODE, Action.DELIVER_CONSENT, Resource.network()), NODE, Action.DELIVER_CONSENT
    )


# ---- membership, directory and audit


def test_node_may_register(authz: Authorizer) -> None:
    assert_allowed(authz.decide(NODE, Action.REGISTER_NODE, Resource.network()), "nodes-may-register")


def test_bank_may_not_register_as_a_node(authz: Authorizer) -> None:
    assert_default_deny(
        authz.decide(BANK, Action.REGISTER_NODE, Resource.network()), BANK, Action.REGISTER_NODE
    )


@pytest.mark.parametrize("who", EVERY_ROLE, ids=str)
def test_every_role_reads_the_directory(authz: Authorizer, who: Principal) -> None:
    assert_allowed(
        authz.decide(who, Action.READ_DIRECTORY, Resource.network()),
        "every-member-may-read-the-directory",
    )


def test_auditor_reads_audit_logs(authz: Authorizer) -> None:
    assert_allowed(
        authz.decide(AUDITOR, Action.READ_AUDIT, Resource.audit_log(str(NODE))),
        "auditors-may-read-audit-logs",
    )


@pytest.mark.parametrize("who", [BANK, NODE, REGISTRY], ids=str)
def test_audit_log_is_auditor_only(authz: Authorizer, who: Principal) -> None:
    decision = authz.decide(who, Action.READ_AUDIT, Resource.audit_log(str(NODE)))
    assert_denied_by(decision, "audit-log-is-auditor-only")


# ---- loading


def test_default_dir_loads_cleanly() -> None:
    assert isinstance(Authorizer.from_dir(DEFAULT_POLICY_DIR), Authorizer)


def test_policy_module_does_not_import_grpc() -> None:
    assert "grpc" not in Path(sys.modules[Authorizer.__module__].__file__).read_text()


@pytest.fixture
def policy_dir(tmp_path: Path) -> Path:
    for source in DEFAULT_POLICY_DIR.iterdir():
        shutil.copy(source, tmp_path)
    return tmp_path


def test_syntax_error_names_the_file(policy_dir: Path) -> None:
    (policy_dir / "broken.cedar").write_text('@id("broken") permit (principal, action, resource')
    with pytest.raises(PolicyError, match="broken.cedar"):
        Authorizer.from_dir(policy_dir)


def test_unknown_context_attribute_fails_validation(policy_dir: Path) -> None:
    (policy_dir / "extra.cedar").write_text(
        '@id("uses-missing-context")\n'
        'permit (principal, action == Xinyi::Action::"query", resource)\n'
        "when { context.nonexistent == 1 };\n"
    )
    with pytest.raises(PolicyError, match=r"extra\.cedar.*uses-missing-context"):
        Authorizer.from_dir(policy_dir)


def test_unknown_entity_type_fails_validation(policy_dir: Path) -> None:
    (policy_dir / "extra.cedar").write_text(
        '@id("unknown-type")\npermit (principal in Xinyi::Bank::"x", action, resource);\n'
    )
    with pytest.raises(PolicyError, match=r"extra\.cedar"):
        Authorizer.from_dir(policy_dir)


READ = 'permit (principal, action == Xinyi::Action::"read_directory", resource);\n'


@pytest.mark.parametrize("text, number", [(READ, 1), ('@id("first")\n' + READ + READ, 2)])
def test_policy_without_id_is_rejected_naming_its_place_in_the_file(policy_dir: Path, text: str, number: int) -> None:
    # The operator finds it by counting policies in the file.
    (policy_dir / "extra.cedar").write_text(text)
    with pytest.raises(PolicyError, match=rf"extra\.cedar: policy number {number} has no @id annotation"):
        Authorizer.from_dir(policy_dir)


def test_duplicate_id_across_files_is_rejected(policy_dir: Path) -> None:
    (policy_dir / "extra.cedar").write_text(
        '@id("nodes-may-register")\n'
        'permit (principal, action == Xinyi::Action::"register_node", resource);\n'
    )
    with pytest.raises(PolicyError, match=r"nodes-may-register.*already used in .*extra\.cedar"):
        Authorizer.from_dir(policy_dir)


def test_policies_from_every_file_are_applied(policy_dir: Path) -> None:
    (policy_dir / "zz-extra.cedar").write_text(
        '@id("registry-may-register-nodes")\n'
        'permit (principal in Xinyi::Role::"registry", action == Xinyi::Action::"register_node", resource);\n'
    )
    decision = Authorizer.from_dir(policy_dir).decide(REGISTRY, Action.REGISTER_NODE, Resource.network())
    assert_allowed(decision, "registry-may-register-nodes")


def test_missing_schema_is_rejected(policy_dir: Path) -> None:
    (policy_dir / "xinyi.cedarschema").unlink()
    with pytest.raises(PolicyError, match="cedarschema"):
        Authorizer.from_dir(policy_dir)


@pytest.mark.parametrize("action", [Action.QUERY, Action.ROUTE_QUERY])
def test_an_institution_without_a_licence_may_not_query(authz: Authorizer, action: Action) -> None:
    decision = query(authz, BANK, "credit_assessment", action, licence="")
    assert not decision.allowed and "institutions-need-a-licence" in decision.policy_ids


def test_a_representative_manages_consent_only_for_whom_it_represents(authz: Authorizer) -> None:
    rep = Principal(Role.REPRESENTATIVE, "zhang-wei")
    allowed = authz.decide(rep, Action.MANAGE_CONSENT, TARGET, represents=frozenset({ENTERPRISE.id}))
    assert allowed.allowed and allowed.policy_ids == ("representatives-may-manage-consent-for-whom-they-represent",)
    denied = authz.decide(rep, Action.MANAGE_CONSENT, TARGET, represents=frozenset({"91100000100003962T"}))
    assert not denied.allowed and "no-managing-another-enterprises-consent" in denied.policy_ids


def test_only_nodes_handle_disputes(authz: Authorizer) -> None:
    assert authz.decide(NODE, Action.HANDLE_DISPUTES, Resource.network()).allowed
    assert not authz.decide(BANK, Action.HANDLE_DISPUTES, Resource.network()).allowed


def test_licensed_institutions_and_government_departments_register_as_grantees(authz: Authorizer) -> None:
    for who in (BANK, GUARANTOR):
        assert_allowed(authz.decide(who, Action.REGISTER_INSTITUTION, Resource.network(), licence=LICENCE),
                       "institutions-may-register")
        assert_denied_by(authz.decide(who, Action.REGISTER_INSTITUTION, Resource.network()), "institutions-need-a-licence")
    government = Principal(Role.GOVERNMENT, "11510000000000019E")
    assert_allowed(authz.decide(government, Action.REGISTER_INSTITUTION, Resource.network()), "institutions-may-register")
    for who in (ENTERPRISE, NODE, REGISTRY, AUDITOR):
        assert_default_deny(authz.decide(who, Action.REGISTER_INSTITUTION, Resource.network()), who,
                            Action.REGISTER_INSTITUTION)


def test_only_the_platform_operator_reviews_holding_claims(authz: Authorizer) -> None:
    assert_allowed(authz.decide(REGISTRY, Action.REVIEW_HOLDINGS, Resource.network()),
                   "the-platform-operator-reviews-holdings")
    for who in (BANK, GUARANTOR, ENTERPRISE, NODE, AUDITOR):
        assert_default_deny(authz.decide(who, Action.REVIEW_HOLDINGS, Resource.network()), who, Action.REVIEW_HOLDINGS)
