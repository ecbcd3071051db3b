"""agent/trust.py against real signatures made by git and ssh-keygen.

Every verdict on a signed commit is compared with the reference,
``ssh-keygen -Y verify -f allowed_signers -I principal -n git`` for the principal the
test trusts: both accept or both refuse. (The Verifier returns the principals field of
the vouching line, which may be a pattern list, as ``ssh-keygen -Y find-principals``.)
"""

from __future__ import annotations

import base64
import hashlib
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.serialization import load_ssh_private_key
from dulwich.objects import Commit
from dulwich.repo import Repo

from agent.config import NonFastForward, TrustConfig
from agent.errors import ConfigError, TrustError
from agent.policy import check_move
from agent.trust import Verifier
from tests.testbed.fleetrepo import FleetRepo, SigningKey

PRINCIPAL = "ops@example.org"
KEY_KINDS = {
    "ed25519": ["-t", "ed25519"],
    "ecdsa-p256": ["-t", "ecdsa", "-b", "256"],
    "ecdsa-p384": ["-t", "ecdsa", "-b", "384"],
    "ecdsa-p521": ["-t", "ecdsa", "-b", "521"],
    "rsa": ["-t", "rsa", "-b", "2048"],
}


@dataclass(frozen=True)
class Signed:
    sha: str
    payload: bytes
    signature: bytes | None


@dataclass(frozen=True)
class Corpus:
    keys: dict[str, SigningKey]
    commits: dict[str, Signed]
    """One commit signed by each key kind, plus "unsigned" and "stranger" (untrusted key)."""


def make_key(directory: Path, kind: str) -> SigningKey:
    directory.mkdir(parents=True)
    private = directory / "key"
    subprocess.run(
        ["ssh-keygen", "-q", *KEY_KINDS[kind], "-N", "", "-C", PRINCIPAL, "-f", str(private)],
        check=True,
    )
    public = directory / "key.pub"
    allowed = directory / "allowed_signers"
    allowed.write_text(f"{PRINCIPAL} {public.read_text()}")
    return SigningKey(private=private, public=public, allowed_signers=allowed, principal=PRINCIPAL)


def read_commit(repo: FleetRepo, sha: str) -> Signed:
    with Repo(str(repo.bare)) as bare:
        commit = bare[sha.encode()]
        assert isinstance(commit, Commit)
        payload, signature, _ = commit.extract_signature()
    return Signed(sha, payload, signature)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Corpus]:
    root = tmp_path_factory.mktemp("trust")
    repo = FleetRepo(root)
    keys = {kind: make_key(root / kind, kind) for kind in KEY_KINDS}
    keys["stranger"] = make_key(root / "stranger", "ed25519")
    commits = {"unsigned": read_commit(repo, repo.commit({"a": "unsigned"}))}
    for kind, key in keys.items():
        sha = repo.commit({"a": kind}, message=f"signed by {kind}", sign=key)
        commits[kind] = read_commit(repo, sha)
    yield Corpus(keys, commits)


def pub(key: SigningKey) -> str:
    return key.public.read_text().strip()


def fingerprint(key: SigningKey) -> str:
    out = subprocess.run(
        ["ssh-keygen", "-lf", str(key.public)], capture_output=True, text=True, check=True
    )
    return out.stdout.split()[1]


def ssh_keygen_accepts(
    allowed: Path, principal: str, payload: bytes, signature: bytes, work: Path
) -> bool:
    sig = work / "reference.sig"
    sig.write_bytes(signature)
    done = subprocess.run(
        [
            "ssh-keygen",
            "-Y",
            "verify",
            "-n",
            "git",
            "-f",
            str(allowed),
            "-I",
            principal,
            "-s",
            str(sig),
        ],
        input=payload,
        capture_output=True,
        check=False,
    )
    return done.returncode == 0


def verdict(
    tmp_path: Path,
    allowed_signers: str,
    signed: Signed,
    principal: str = PRINCIPAL,
    require_signed: bool = True,
) -> str | TrustError | None:
    """The Verifier's answer, after checking that ssh-keygen agrees with it."""
    allowed = tmp_path / "allowed_signers"
    allowed.write_text(allowed_signers)
    verifier = Verifier(TrustConfig(allowed_signers=allowed, require_signed=require_signed))
    got: str | TrustError | None
    try:
        got = verifier.verify(signed.sha, signed.payload, signed.signature)
    except TrustError as err:
        got = err
    if signed.signature is not None:
        reference = ssh_keygen_accepts(
            allowed, principal, signed.payload, signed.signature, tmp_path
        )
        assert reference == isinstance(got, str), f"ssh-keygen says {reference}, we say {got!r}"
    return got


def refused(got: str | TrustError | None, *words: str) -> TrustError:
    assert isinstance(got, TrustError), f"expected a refusal, got {got!r}"
    for word in words:
        assert word in got.reason, f"{word!r} not in {got.reason!r}"
    return got


def sign_file(key: SigningKey, payload: bytes, namespace: str, work: Path, *opts: str) -> bytes:
    data = work / f"payload-{namespace}"
    data.write_bytes(payload)
    subprocess.run(
        [
            "ssh-keygen",
            "-q",
            "-Y",
            "sign",
            "-f",
            str(key.private),
            "-n",
            namespace,
            *opts,
            str(data),
        ],
        check=True,
        capture_output=True,
    )
    return data.with_name(data.name + ".sig").read_bytes()


# --- signatures accepted ---------------------------------------------------------------


@pytest.mark.parametrize("kind", list(KEY_KINDS))
def test_commit_signed_by_trusted_key_is_accepted(
    corpus: Corpus, tmp_path: Path, kind: str
) -> None:
    key = corpus.keys[kind]
    got = verdict(tmp_path, f'{PRINCIPAL} namespaces="git" {pub(key)}\n', corpus.commits[kind])
    assert got == PRINCIPAL


def test_signing_key_fixture_file_is_accepted(signing_key: SigningKey, tmp_path: Path) -> None:
    repo = FleetRepo(tmp_path)
    signed = read_commit(repo, repo.commit({"x": "1"}, sign=signing_key))
    verifier = Verifier(TrustConfig(allowed_signers=signing_key.allowed_signers))
    assert verifier.verify(signed.sha, signed.payload, signed.signature) == PRINCIPAL


def test_principal_list_wildcards_comments_and_later_lines(corpus: Corpus, tmp_path: Path) -> None:
    allowed = (
        "# fleet signers\n"
        "\n"
        f"admin@example.org {pub(corpus.keys['rsa'])}\n"
        f'   "*@example.org,release bot"\tvalid-after="20200101",namespaces="git,file" '
        f"{pub(corpus.keys['ecdsa-p256'])} comment here\n"
    )
    got = verdict(tmp_path, allowed, corpus.commits["ecdsa-p256"])
    assert got == "*@example.org,release bot"


def test_key_restricted_on_one_line_is_accepted_on_another(corpus: Corpus, tmp_path: Path) -> None:
    key = pub(corpus.keys["ed25519"])
    allowed = f'files@example.org namespaces="file" {key}\n{PRINCIPAL} {key}\n'
    assert verdict(tmp_path, allowed, corpus.commits["ed25519"]) == PRINCIPAL


def test_sha256_message_hash_is_accepted(corpus: Corpus, tmp_path: Path) -> None:
    key = corpus.keys["ed25519"]
    base = corpus.commits["unsigned"]
    sig = sign_file(key, base.payload, "git", tmp_path, "-O", "hashalg=sha256")
    got = verdict(tmp_path, f"{PRINCIPAL} {pub(key)}\n", Signed(base.sha, base.payload, sig))
    assert got == PRINCIPAL


def ssh_string(value: bytes) -> bytes:
    return len(value).to_bytes(4, "big") + value


def test_rsa_signature_shorter_than_modulus_is_accepted(corpus: Corpus, tmp_path: Path) -> None:
    """Signers other than OpenSSH may drop a leading zero byte; ssh-keygen pads it back."""
    key = corpus.keys["rsa"]
    private = load_ssh_private_key(key.private.read_bytes(), None)
    assert isinstance(private, rsa.RSAPrivateKey)
    base = corpus.commits["unsigned"]
    for attempt in range(5000):  # about 1 in 256 signatures starts with a zero byte
        payload = base.payload + f"attempt {attempt}\n".encode()
        message = b"SSHSIG" + b"".join(
            ssh_string(part) for part in (b"git", b"", b"sha512", hashlib.sha512(payload).digest())
        )
        raw = private.sign(message, padding.PKCS1v15(), hashes.SHA512())
        if raw[0] == 0:
            break
    else:
        pytest.fail("no RSA signature with a leading zero byte found")
    blob = (
        b"SSHSIG"
        + (1).to_bytes(4, "big")
        + b"".join(
            ssh_string(part)
            for part in (
                base64.b64decode(pub(key).split()[1]),
                b"git",
                b"",
                b"sha512",
                ssh_string(b"rsa-sha2-512") + ssh_string(raw.lstrip(b"\0")),
            )
        )
    )
    armored = b"-----BEGIN SSH SIGNATURE-----\n%s\n-----END SSH SIGNATURE-----\n" % (
        base64.encodebytes(blob).replace(b"\n", b"")
    )
    got = verdict(tmp_path, f"{PRINCIPAL} {pub(key)}\n", Signed(base.sha, payload, armored))
    assert got == PRINCIPAL


def test_key_inside_its_validity_window_is_accepted(corpus: Corpus, tmp_path: Path) -> None:
    key = pub(corpus.keys["ed25519"])
    allowed = f'{PRINCIPAL} valid-after="20200101",valid-before="29990101000000Z" {key}\n'
    assert verdict(tmp_path, allowed, corpus.commits["ed25519"]) == PRINCIPAL


# --- signatures refused ----------------------------------------------------------------


def test_unsigned_commit_is_refused(corpus: Corpus, tmp_path: Path) -> None:
    got = verdict(
        tmp_path, f"{PRINCIPAL} {pub(corpus.keys['ed25519'])}\n", corpus.commits["unsigned"]
    )
    err = refused(got, "not signed", "require_signed")
    assert err.commit == corpus.commits["unsigned"].sha


def test_untrusted_key_is_refused(corpus: Corpus, tmp_path: Path) -> None:
    allowed = f"{PRINCIPAL} {pub(corpus.keys['ed25519'])}\n"
    got = verdict(tmp_path, allowed, corpus.commits["stranger"])
    refused(got, fingerprint(corpus.keys["stranger"]), "not in allowed_signers")


def test_tampered_payload_is_refused(corpus: Corpus, tmp_path: Path) -> None:
    good = corpus.commits["ed25519"]
    tampered = Signed(good.sha, good.payload.replace(b"signed by", b"signed bx"), good.signature)
    assert tampered.payload != good.payload
    got = verdict(tmp_path, f"{PRINCIPAL} {pub(corpus.keys['ed25519'])}\n", tampered)
    refused(got, "does not match the commit", fingerprint(corpus.keys["ed25519"]))


@pytest.mark.parametrize("kind", ["ecdsa-p256", "rsa"])
def test_signature_swapped_between_commits_is_refused(
    corpus: Corpus, tmp_path: Path, kind: str
) -> None:
    other = corpus.commits["ed25519"]
    swapped = Signed(other.sha, other.payload, corpus.commits[kind].signature)
    got = verdict(tmp_path, f"{PRINCIPAL} {pub(corpus.keys[kind])}\n", swapped)
    refused(got, "does not match the commit")


def test_signature_for_another_namespace_is_refused(corpus: Corpus, tmp_path: Path) -> None:
    key = corpus.keys["ed25519"]
    base = corpus.commits["unsigned"]
    sig = sign_file(key, base.payload, "file", tmp_path)
    got = verdict(tmp_path, f"{PRINCIPAL} {pub(key)}\n", Signed(base.sha, base.payload, sig))
    refused(got, "namespace 'file'")


def test_principal_restricted_to_other_namespace_is_refused(corpus: Corpus, tmp_path: Path) -> None:
    allowed = f'{PRINCIPAL} namespaces="file,ssh*" {pub(corpus.keys["ed25519"])}\n'
    got = verdict(tmp_path, allowed, corpus.commits["ed25519"])
    refused(got, "namespaces='file,ssh*'", "allowed_signers:1")


def test_negated_namespace_pattern_is_refused(corpus: Corpus, tmp_path: Path) -> None:
    allowed = f'{PRINCIPAL} namespaces="*,!git" {pub(corpus.keys["ed25519"])}\n'
    refused(verdict(tmp_path, allowed, corpus.commits["ed25519"]), "namespaces=")


def test_expired_key_is_refused(corpus: Corpus, tmp_path: Path) -> None:
    allowed = f'{PRINCIPAL} valid-before="20200101Z" {pub(corpus.keys["ed25519"])}\n'
    refused(verdict(tmp_path, allowed, corpus.commits["ed25519"]), "expired", "2020-01-01")


def test_key_not_yet_valid_is_refused(corpus: Corpus, tmp_path: Path) -> None:
    allowed = f'{PRINCIPAL} valid-after="299901011200Z" {pub(corpus.keys["ecdsa-p384"])}\n'
    refused(verdict(tmp_path, allowed, corpus.commits["ecdsa-p384"]), "valid only after 2999")


@pytest.mark.parametrize(
    ("signature", "reason"),
    [
        (b"-----BEGIN SSH SIGNATURE-----\n!!!!\n-----END SSH SIGNATURE-----\n", "malformed"),
        (b"-----BEGIN SSH SIGNATURE-----\nU1NIU0lH\n-----END SSH SIGNATURE-----\n", "malformed"),
        (b"not a signature at all", "malformed"),
        (b"\xff\xfe", "malformed"),
    ],
)
def test_malformed_signature_is_refused(
    corpus: Corpus, tmp_path: Path, signature: bytes, reason: str
) -> None:
    base = corpus.commits["unsigned"]
    got = verdict(
        tmp_path,
        f"{PRINCIPAL} {pub(corpus.keys['ed25519'])}\n",
        Signed(base.sha, base.payload, signature),
    )
    refused(got, reason)


def test_truncated_signature_is_refused(corpus: Corpus, tmp_path: Path) -> None:
    good = corpus.commits["ed25519"]
    assert good.signature is not None
    lines = good.signature.decode().strip().splitlines()
    cut = "\n".join([lines[0], lines[1][:40], lines[-1]]).encode()
    got = verdict(
        tmp_path,
        f"{PRINCIPAL} {pub(corpus.keys['ed25519'])}\n",
        Signed(good.sha, good.payload, cut),
    )
    refused(got, "malformed")


def test_openpgp_signature_is_refused_when_required(corpus: Corpus, tmp_path: Path) -> None:
    allowed = tmp_path / "allowed_signers"
    allowed.write_text(f"{PRINCIPAL} {pub(corpus.keys['ed25519'])}\n")
    pgp = b"-----BEGIN PGP SIGNATURE-----\n\niQEz\n-----END PGP SIGNATURE-----\n"
    base = corpus.commits["unsigned"]
    with pytest.raises(TrustError, match="OpenPGP"):
        Verifier(TrustConfig(allowed_signers=allowed)).verify(base.sha, base.payload, pgp)
    optional = Verifier(TrustConfig(allowed_signers=allowed, require_signed=False))
    assert optional.verify(base.sha, base.payload, pgp) is None


# --- require_signed = false ------------------------------------------------------------


def test_optional_signing_accepts_unsigned(corpus: Corpus, tmp_path: Path) -> None:
    allowed = f"{PRINCIPAL} {pub(corpus.keys['ed25519'])}\n"
    assert verdict(tmp_path, allowed, corpus.commits["unsigned"], require_signed=False) is None
    without_file = Verifier(TrustConfig(allowed_signers=None, require_signed=False))
    unsigned = corpus.commits["unsigned"]
    assert without_file.verify(unsigned.sha, unsigned.payload, None) is None


def test_optional_signing_still_refuses_bad_signatures(corpus: Corpus, tmp_path: Path) -> None:
    good = corpus.commits["ed25519"]
    tampered = Signed(good.sha, good.payload + b"evil\n", good.signature)
    allowed = f"{PRINCIPAL} {pub(corpus.keys['ed25519'])}\n"
    refused(verdict(tmp_path, allowed, tampered, require_signed=False), "does not match")
    stranger = corpus.commits["stranger"]
    refused(verdict(tmp_path, allowed, stranger, require_signed=False), "not in allowed_signers")


def test_optional_signing_without_allowed_signers_checks_the_signature(corpus: Corpus) -> None:
    verifier = Verifier(TrustConfig(allowed_signers=None, require_signed=False))
    good = corpus.commits["rsa"]
    assert verifier.verify(good.sha, good.payload, good.signature) is None
    with pytest.raises(TrustError, match="does not match"):
        verifier.verify(good.sha, good.payload[:-1], good.signature)


def test_required_signing_without_allowed_signers_refuses(corpus: Corpus) -> None:
    good = corpus.commits["ed25519"]
    verifier = Verifier(TrustConfig(allowed_signers=None, require_signed=True))
    with pytest.raises(TrustError, match=r"no trust\.allowed_signers"):
        verifier.verify(good.sha, good.payload, good.signature)


# --- malformed allowed_signers ---------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        (PRINCIPAL, "expected: principals"),
        (f"{PRINCIPAL} ssh-ed25519", "missing public key"),
        (f"{PRINCIPAL} ssh-ed25519 AAAA!!notbase64", "invalid ssh-ed25519 key"),
        (f"{PRINCIPAL} ssh-ed25519 {'A' * 68}", "invalid ssh-ed25519 key"),
        (f'{PRINCIPAL} namespaces="git" ssh-dss AAAAB3NzaC1kc3M=', "not supported"),
        (f"{PRINCIPAL} sk-ssh-ed25519@openssh.com AAAA", "not supported"),
        (f"{PRINCIPAL} ssh-ed25519-cert-v01@openssh.com AAAA", "certificates"),
        (f"{PRINCIPAL} cert-authority KEY", "cert-authority is not supported"),
        (f'{PRINCIPAL} no-touch-required="x" KEY', "unknown option"),
        (f"{PRINCIPAL} namespaces=git KEY", "cannot parse options"),
        (f'{PRINCIPAL} valid-after,namespaces="git" KEY', "needs a quoted value"),
        (f'{PRINCIPAL} valid-after="2020" KEY', "YYYYMMDD"),
        (f'{PRINCIPAL} valid-after="20201399" KEY', "not a valid date"),
        (f'{PRINCIPAL} valid-after="20250101",valid-before="20240101" KEY', "valid-before"),
        (f'{PRINCIPAL} namespaces="git",namespaces="file" KEY', "given twice"),
        (f'"{PRINCIPAL} KEY', "closing double quote"),
    ],
)
def test_malformed_allowed_signers_names_file_and_line(
    corpus: Corpus, tmp_path: Path, line: str, problem: str
) -> None:
    allowed = tmp_path / "allowed_signers"
    good = f"{PRINCIPAL} {pub(corpus.keys['ed25519'])}"
    allowed.write_text(f"# signers\n{good}\n{line.replace('KEY', good.split(' ', 1)[1])}\n")
    with pytest.raises(ConfigError) as caught:
        Verifier(TrustConfig(allowed_signers=allowed))
    assert caught.value.path == str(allowed)
    assert caught.value.key == "line 3"
    assert problem in caught.value.problem


@pytest.mark.parametrize(
    ("content", "problem"),
    [(None, "does not exist"), (b"# nobody\n\n", "lists no signers"), (b"\xff\n", "UTF-8")],
)
def test_unusable_allowed_signers_file(tmp_path: Path, content: bytes | None, problem: str) -> None:
    allowed = tmp_path / "allowed_signers"
    if content is not None:
        allowed.write_bytes(content)
    with pytest.raises(ConfigError, match=problem) as caught:
        Verifier(TrustConfig(allowed_signers=allowed))
    assert caught.value.path == str(allowed)


# --- history moves ---------------------------------------------------------------------

CURRENT, NEW = "a" * 40, "b" * 40
MOVES = {
    "first": (None, False, ()),
    "same": (CURRENT, False, ()),
    "fast-forward": (CURRENT, True, ()),
    "non-ff-known": (CURRENT, False, ("c" * 40, NEW)),
    "non-ff-unknown": (CURRENT, False, ("c" * 40,)),
}
ALLOWED = {
    "never": {"first", "same", "fast-forward"},
    "known-good": {"first", "same", "fast-forward", "non-ff-known"},
    "always": set(MOVES),
}


@pytest.mark.parametrize("policy", list(ALLOWED))
@pytest.mark.parametrize("move", list(MOVES))
def test_check_move_matrix(policy: NonFastForward, move: str) -> None:
    current, fast_forward, known_good = MOVES[move]
    new = CURRENT if move == "same" else NEW
    if move in ALLOWED[policy]:
        check_move(policy, current, new, fast_forward, known_good)
        return
    with pytest.raises(TrustError) as caught:
        check_move(policy, current, new, fast_forward, known_good)
    assert caught.value.commit == new
    assert "not a fast-forward" in caught.value.reason
    assert f"non_fast_forward = {policy}" in caught.value.reason
