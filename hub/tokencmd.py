"""``edgefleet-hub token create NAME``: a new random API token and its SHA-256.

The token is printed once, for the user; the hash goes into fleet.toml
(``token_sha256``), which can then be kept in Git without giving the token away.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from hub.users import new_token, valid_user_name


def create(args: argparse.Namespace) -> int:
    if not valid_user_name(args.name):
        print(f"edgefleet-hub: {args.name!r} is not a valid user name (letters, digits, . _ @ -)",
              file=sys.stderr)  # fmt: skip
        return 2
    token, digest = new_token()
    print(f"token for {args.name} (shown once; give it to the user):\n{token}\n")
    print("fleet.toml:\n[[users]]")
    print(f'name = "{args.name}"\nrole = "viewer"  # or "operator" (with stages) or "admin"')
    print(f'token_sha256 = "{digest}"')
    return 0


def add_parser(sub: Any) -> None:
    p = sub.add_parser("token", help="API tokens for [[users]]")
    tokens = p.add_subparsers(dest="token_command", required=True, metavar="ACTION")
    c = tokens.add_parser("create", help="print a new random token and its sha256 (once)")
    c.add_argument("name", help="the user the token is for")
    c.set_defaults(func=create)
