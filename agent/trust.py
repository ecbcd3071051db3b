"""Reconcile step 3: may this node apply the new head commit?

Two questions, answered before anything is read from the tree:

* **Who signed it?** Git's SSH signatures (``gpg.format=ssh``) are verified in-process,
  following OpenSSH's sshsig.c and its allowed_signers format, so the verdict equals
  ``ssh-keygen -Y verify -f allowed_signers -I <principal> -n git`` (the tests compare
  every case against it). The ``sshsig`` package is not enough: it knows no ECDSA,
  ignores allowed_signers options and asserts on malformed input.
* **May history move there?** :func:`agent.policy.check_move` applies
  ``trust.non_fast_forward``.

Key validity windows are checked against the current time, not the commit time: the
signer chooses the commit time, so a leaked key that has expired could backdate commits.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import cast

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    PublicFormat,
    load_ssh_public_key,
)

from agent.config import TrustConfig
from agent.errors import ConfigError, TrustError

NAMESPACE = "git"
"""The sshsig namespace git signs commits in (``ssh-keygen -Y sign -n git``)."""

_ECDSA_HASHES: dict[str, type[hashes.HashAlgorithm]] = {
    "ecdsa-sha2-nistp256": hashes.SHA256,
    "ecdsa-sha2-nistp384": hashes.SHA384,
    "ecdsa-sha2-nistp521": hashes.SHA512,
}
_KEY_TYPES = frozenset({"ssh-ed25519", "ssh-rsa", *_ECDSA_HASHES})
_RSA_SIG_HASHES: dict[bytes, type[hashes.HashAlgorithm]] = {
    b"rsa-sha2-256": hashes.SHA256,
    b"rsa-sha2-512": hashes.SHA512,
}
_RSA_MIN_BITS = 1024  # OpenSSH refuses smaller RSA keys outright
_MESSAGE_HASHES = {"sha256": hashlib.sha256, "sha512": hashlib.sha512}
_ARMOR_BEGIN = "-----BEGIN SSH SIGNATURE-----"
_ARMOR_END = "-----END SSH SIGNATURE-----"
_PGP_MARKERS = (b"-----BEGIN PGP SIGNATURE-----", b"-----BEGIN PGP MESSAGE-----")
_OPTION = re.compile(r'([A-Za-z-]+)(?:="([^"]*)")?(,|(?=\s)|$)')
_TIME = re.compile(r"(\d{8}|\d{12}|\d{14})(Z|UTC)?", re.IGNORECASE)

_PublicKey = ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey | rsa.RSAPublicKey


@dataclass(frozen=True)
class AllowedSigner:
    """One line of an allowed_signers file (certificate authorities are not supported)."""

    line: int
    principals: str
    key: bytes
    """The public key in canonical OpenSSH form (``ssh-ed25519 AAAA...``), no comment."""
    namespaces: str | None = None
    valid_after: float | None = None
    valid_before: float | None = None


def load_allowed_signers(path: Path) -> tuple[AllowedSigner, ...]:
    """Parse an ssh-keygen allowed_signers file; any bad line is a ConfigError naming it.

    ssh-keygen skips bad lines with a log message; on an unattended node that would
    silently drop a trusted key, so here the whole file is refused.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as err:
        raise ConfigError(str(path), "(file)", "does not exist") from err
    except UnicodeDecodeError as err:
        raise ConfigError(str(path), "(file)", "is not UTF-8 text") from err
    except OSError as err:
        raise ConfigError(str(path), "(file)", f"cannot be read: {err.strerror}") from err
    signers = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip(" \t\r\n")
        if line and not line.startswith("#"):
            try:
                signers.append(_parse_line(number, line))
            except ValueError as err:
                raise ConfigError(str(path), f"line {number}", str(err)) from err
    if not signers:
        raise ConfigError(str(path), "(file)", "lists no signers; every signed commit would fail")
    return tuple(signers)


def _parse_line(number: int, line: str) -> AllowedSigner:
    if line.startswith('"'):
        principals, quote, rest = line[1:].partition('"')
        if not quote:
            raise ValueError("principals: no closing double quote")
    else:
        principals, _, rest = re.sub(r"[ \t]+", " ", line, count=1).partition(" ")
    rest = rest.lstrip(" \t")
    if not principals or not rest:
        raise ValueError("expected: principals [options] key-type base64-key [comment]")
    options: dict[str, str] = {}
    first = rest.split(None, 1)[0]
    # As OpenSSH: no key type contains '=' or ',', so such a token starts the options.
    if "=" in first or "," in first or first.lower() == "cert-authority":
        options, rest = _parse_options(rest)
    fields = rest.split(None, 2)
    if len(fields) < 2:
        raise ValueError("missing public key after the options")
    kind, blob = fields[0], fields[1]
    if kind.endswith("-cert-v01@openssh.com"):
        raise ValueError(f"{kind}: certificates are not supported; list the plain key")
    if kind not in _KEY_TYPES:
        raise ValueError(
            f"key type {kind!r} is not supported (use ssh-ed25519, ecdsa-sha2-nistp* or ssh-rsa)"
        )
    try:
        key = _load_key(f"{kind} {blob}".encode())
    except ValueError as err:
        raise ValueError(f"invalid {kind} key: {err}") from err
    after = _parse_time(options["valid-after"]) if "valid-after" in options else None
    before = _parse_time(options["valid-before"]) if "valid-before" in options else None
    if after is not None and before is not None and before <= after:
        raise ValueError("valid-before must be later than valid-after")
    return AllowedSigner(
        line=number,
        principals=principals,
        key=_canonical(key),
        namespaces=options.get("namespaces"),
        valid_after=after,
        valid_before=before,
    )


def _parse_options(text: str) -> tuple[dict[str, str], str]:
    """Split ``opt="v",flag key...`` into options and the rest of the line."""
    options: dict[str, str] = {}
    pos = 0
    while True:
        match = _OPTION.match(text, pos)
        if match is None:
            raise ValueError(f"cannot parse options at {text[pos : pos + 30]!r}")
        name, value = match.group(1).lower(), match.group(2)
        if name == "cert-authority":
            raise ValueError("cert-authority is not supported; list each signing key")
        if name not in ("namespaces", "valid-after", "valid-before"):
            raise ValueError(f"unknown option {match.group(1)!r}")
        if value is None:
            raise ValueError(f'option {name} needs a quoted value: {name}="..."')
        if name in options:
            raise ValueError(f"option {name} given twice")
        options[name] = value
        pos = match.end()
        if match.group(3) != ",":
            return options, text[pos:].lstrip(" \t")


def _parse_time(value: str) -> float:
    """OpenSSH's YYYYMMDD[HHMM[SS]][Z]: local time unless suffixed Z (or UTC)."""
    match = _TIME.fullmatch(value)
    if match is None:
        raise ValueError(f"time {value!r} must look like YYYYMMDD[HHMM[SS]][Z]")
    digits = match.group(1).ljust(14, "0")
    try:
        moment = datetime.strptime(digits, "%Y%m%d%H%M%S")
    except ValueError as err:
        raise ValueError(f"time {value!r} is not a valid date") from err
    return (moment.replace(tzinfo=UTC) if match.group(2) else moment).timestamp()


def _load_key(openssh: bytes) -> _PublicKey:
    try:
        key = load_ssh_public_key(openssh)
    except UnsupportedAlgorithm as err:
        raise ValueError(str(err)) from err
    if isinstance(key, rsa.RSAPublicKey) and key.key_size < _RSA_MIN_BITS:
        raise ValueError(f"RSA key of {key.key_size} bits is too small")
    # Callers pass only _KEY_TYPES, which load as one of these three classes.
    return cast(_PublicKey, key)


def _canonical(key: _PublicKey) -> bytes:
    return key.public_bytes(Encoding.OpenSSH, PublicFormat.OpenSSH)


class _Reader:
    """SSH wire format (RFC 4251): uint32, string, mpint; ValueError when short."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._pos = 0

    def take(self, size: int) -> bytes:
        if self._pos + size > len(self._data):
            raise ValueError("truncated")
        chunk = self._data[self._pos : self._pos + size]
        self._pos += size
        return chunk

    def uint32(self) -> int:
        return int.from_bytes(self.take(4), "big")

    def string(self) -> bytes:
        return self.take(self.uint32())

    def mpint(self) -> int:
        value = int.from_bytes(self.string(), "big", signed=True)
        if value < 0:
            raise ValueError("negative integer")
        return value

    def end(self) -> None:
        if self._pos != len(self._data):
            raise ValueError("trailing data")


@dataclass(frozen=True)
class _SshSig:
    """The decoded SSHSIG blob (OpenSSH PROTOCOL.sshsig)."""

    key_blob: bytes
    namespace: bytes
    hash_algorithm: bytes
    signature: bytes


def _decode_sshsig(armored: bytes) -> _SshSig:
    lines = armored.decode("ascii").strip().splitlines()
    if len(lines) < 3 or lines[0] != _ARMOR_BEGIN or lines[-1].rstrip() != _ARMOR_END:
        raise ValueError("not an armored SSH signature")
    try:
        blob = base64.b64decode("".join(part.strip() for part in lines[1:-1]), validate=True)
    except binascii.Error as err:
        raise ValueError(f"bad base64: {err}") from err
    reader = _Reader(blob)
    if reader.take(6) != b"SSHSIG":
        raise ValueError("missing SSHSIG preamble")
    if (version := reader.uint32()) != 1:
        raise ValueError(f"unsupported SSHSIG version {version}")
    key_blob, namespace = reader.string(), reader.string()
    reader.string()  # reserved
    hash_algorithm, signature = reader.string(), reader.string()
    reader.end()
    return _SshSig(key_blob, namespace, hash_algorithm, signature)


def _verify_raw(key: _PublicKey, kind: str, signature: bytes, message: bytes) -> None:
    """Check an SSH signature blob; raises InvalidSignature or ValueError."""
    reader = _Reader(signature)
    algorithm, raw = reader.string(), reader.string()
    reader.end()
    if isinstance(key, ed25519.Ed25519PublicKey):
        if algorithm != b"ssh-ed25519":
            raise ValueError(f"signature algorithm {algorithm!r} for an ed25519 key")
        key.verify(raw, message)
    elif isinstance(key, ec.EllipticCurvePublicKey):
        if algorithm != kind.encode():
            raise ValueError(f"signature algorithm {algorithm!r} for a {kind} key")
        point = _Reader(raw)
        r, s = point.mpint(), point.mpint()
        point.end()
        key.verify(encode_dss_signature(r, s), message, ec.ECDSA(_ECDSA_HASHES[kind]()))
    else:
        # OpenSSH refuses SHA-1 (ssh-rsa) signatures here.
        if algorithm not in _RSA_SIG_HASHES:
            raise ValueError(f"RSA signature algorithm {algorithm!r} is not allowed")
        size = (key.key_size + 7) // 8
        if len(raw) > size:
            raise ValueError("RSA signature longer than the modulus")
        # OpenSSH pads short signatures from other signers with leading zeros.
        key.verify(
            raw.rjust(size, b"\0"), message, padding.PKCS1v15(), _RSA_SIG_HASHES[algorithm]()
        )


def _string(value: bytes) -> bytes:
    return len(value).to_bytes(4, "big") + value


def _fingerprint(key_blob: bytes) -> str:
    digest = base64.b64encode(hashlib.sha256(key_blob).digest()).decode().rstrip("=")
    return f"SHA256:{digest}"


def _match_pattern_list(name: str, patterns: str) -> bool:
    """OpenSSH match_pattern_list: comma list of * ? globs, a matching !pattern vetoes."""
    matched = False
    for pattern in patterns.split(","):
        negated = pattern.startswith("!")
        glob = re.escape(pattern[1:] if negated else pattern)
        if re.fullmatch(glob.replace(r"\*", ".*").replace(r"\?", "."), name):
            if negated:
                return False
            matched = True
    return matched


def _when(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


class Verifier:
    """Checks head commits against ``trust.allowed_signers`` (loaded once, at construction).

    Restart the agent after editing allowed_signers. Raises ConfigError for a bad file.
    """

    def __init__(self, cfg: TrustConfig) -> None:
        self._cfg = cfg
        self._signers = (
            load_allowed_signers(cfg.allowed_signers) if cfg.allowed_signers is not None else ()
        )

    def verify(self, commit: str, payload: bytes, signature: bytes | None) -> str | None:
        """Return the principals of the allowed_signers line that vouches for ``commit``.

        ``payload`` and ``signature`` are what dulwich's ``Commit.extract_signature()``
        returns. Unsigned: TrustError when ``require_signed``, else None. A present SSH
        signature must always verify, against allowed_signers when one is configured
        (None is returned when it is not: valid, but nobody vouches for the key). An
        OpenPGP signature cannot be checked: refused when ``require_signed``, else ignored.
        """
        if signature is None or signature.startswith(_PGP_MARKERS):
            if not self._cfg.require_signed:
                return None
            if signature is None:
                raise TrustError(commit, "commit is not signed and trust.require_signed = true")
            raise TrustError(
                commit, "commit has an OpenPGP signature; only SSH signatures are supported"
            )
        key = self._check_signature(commit, payload, signature)
        if self._cfg.allowed_signers is not None:
            return self._find_principals(commit, key, time.time())
        if self._cfg.require_signed:
            raise TrustError(commit, "no trust.allowed_signers file is configured")
        return None

    def _check_signature(self, commit: str, payload: bytes, armored: bytes) -> bytes:
        """Verify the signature itself; return the signing key in canonical OpenSSH form."""
        try:
            sig = _decode_sshsig(armored)
        except ValueError as err:  # UnicodeDecodeError included
            raise TrustError(commit, f"signature is malformed ({err})") from err
        namespace = sig.namespace.decode("utf-8", "replace")
        if namespace != NAMESPACE:
            raise TrustError(
                commit,
                f"signature was made for namespace {namespace!r}, not {NAMESPACE!r}: "
                "it is not a git commit signature",
            )
        hash_name = sig.hash_algorithm.decode("ascii", "replace")
        if hash_name not in _MESSAGE_HASHES:
            raise TrustError(commit, f"signature uses unsupported hash {hash_name!r}")
        try:
            kind = _Reader(sig.key_blob).string().decode("ascii")
            if kind not in _KEY_TYPES:
                raise TrustError(commit, f"signed with a {kind} key, which is not supported")
            key = _load_key(f"{kind} {base64.b64encode(sig.key_blob).decode()}".encode())
        except ValueError as err:  # UnicodeDecodeError included
            raise TrustError(commit, f"signature holds an invalid public key ({err})") from err
        message = b"".join(
            (
                b"SSHSIG",
                _string(sig.namespace),
                _string(b""),
                _string(sig.hash_algorithm),
                _string(_MESSAGE_HASHES[hash_name](payload).digest()),
            )
        )
        try:
            _verify_raw(key, kind, sig.signature, message)
        except (InvalidSignature, ValueError) as err:
            raise TrustError(
                commit,
                f"signature by key {_fingerprint(sig.key_blob)} does not match the commit "
                "(content changed after signing, or a corrupt signature)",
            ) from err
        return _canonical(key)

    def _find_principals(self, commit: str, key: bytes, now: float) -> str:
        path = self._cfg.allowed_signers
        problems = []
        for signer in self._signers:
            if signer.key != key:
                continue
            where = f"{path}:{signer.line} ({signer.principals})"
            if signer.namespaces is not None and not _match_pattern_list(
                NAMESPACE, signer.namespaces
            ):
                problems.append(f"{where} allows the key only for namespaces={signer.namespaces!r}")
            elif signer.valid_after is not None and now < signer.valid_after:
                problems.append(
                    f"{where} makes the key valid only after {_when(signer.valid_after)}"
                )
            elif signer.valid_before is not None and now > signer.valid_before:
                problems.append(f"{where}: the key expired at {_when(signer.valid_before)}")
            else:
                return signer.principals
        who = f"signed by key {_fingerprint(base64.b64decode(key.split(b' ')[1]))}"
        if problems:
            raise TrustError(commit, f"{who}, but " + "; ".join(problems))
        raise TrustError(commit, f"{who}, which is not in allowed_signers {path}")
