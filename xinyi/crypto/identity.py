"""Who is who on the network: roles and principals.

A principal is always read from a certificate issued by the national root (the mutual-TLS
certificate of a connection, or the signing certificate of a signed statement). Nothing here
parses identity out of a request field.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

from xinyi.records import uscc as uscc_codes


class Role(StrEnum):
    REGISTRY = "registry"
    NODE = "node"
    BANK = "bank"
    GUARANTOR = "guarantor"
    AUDITOR = "auditor"
    ENTERPRISE = "enterprise"
    REPRESENTATIVE = "representative"  # a natural person an enterprise named to sign consents for it
    GOVERNMENT = "government"  # a government department: eligibility checks, privacy-protected statistics


# Roles that query enterprises' data (institutions named as consent grantees).
QUERYING_ROLES = frozenset({Role.BANK, Role.GUARANTOR, Role.GOVERNMENT})

_AREA_CODE = re.compile(r"^[1-8][0-9]{5}$")
_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")


class IdentityError(ValueError):
    """A role or id that cannot name a principal."""


def check_principal_id(role: Role, principal_id: str) -> str:
    """Return the id if it is well-formed for the role, else raise IdentityError saying why."""
    if role is Role.NODE:
        if not _AREA_CODE.match(principal_id):
            raise IdentityError(
                f"node id {principal_id!r} must be a 6-digit GB/T 2260 area code, e.g. 510100"
            )
    elif role in (Role.BANK, Role.GUARANTOR, Role.ENTERPRISE, Role.GOVERNMENT):
        problem = uscc_codes.problem(principal_id)
        if problem:
            raise IdentityError(f"{role} id must be a USCC: {problem}")
    else:
        if not _NAME.match(principal_id):
            raise IdentityError(
                f"{role} id {principal_id!r} must be lower-case letters, digits and '-', e.g. national"
            )
        if role is Role.REGISTRY and principal_id.isdigit():
            # A log is named xinyi/<id>: a registry named like an area code would share a node's key name.
            raise IdentityError(f"registry id {principal_id!r} must hold a letter (all digits is a node's area code)")
    return principal_id


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated party: its role and its id (area code, USCC or name)."""

    role: Role
    id: str

    def __str__(self) -> str:
        return f"{self.role}/{self.id}"

    @property
    def uri(self) -> str:
        """The URI written into the certificate's subjectAltName."""
        return f"xinyi://{self.role}/{self.id}"

    @classmethod
    def from_uri(cls, uri: str) -> "Principal":
        prefix = "xinyi://"
        if not uri.startswith(prefix) or uri.count("/") != 3:
            raise IdentityError(f"not a xinyi identity URI: {uri!r}")
        role_text, principal_id = uri[len(prefix) :].split("/", 1)
        try:
            role = Role(role_text)
        except ValueError:
            raise IdentityError(f"unknown role {role_text!r} in {uri!r}") from None
        return cls(role, check_principal_id(role, principal_id))

    @classmethod
    def parse(cls, text: str) -> "Principal":
        """Parse "role/id", as used on the command line and in policies."""
        return cls.from_uri("xinyi://" + text)
