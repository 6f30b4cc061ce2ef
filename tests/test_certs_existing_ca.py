"""`istio-spiffe-webhook certs --ca-cert FILE --ca-key FILE`: a serving certificate from an
existing CA, the CA's files and the caBundle byte for byte unchanged; every unusable CA is
one error line and a non-zero exit, with nothing written."""

from __future__ import annotations

import base64
import datetime
import hashlib
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed25519, rsa
from cryptography.x509.oid import NameOID
from cryptography.x509.verification import PolicyBuilder, Store

from webhook.certs import (
    CertificateAuthority,
    UnusableCA,
    load_certificate_authority,
    service_names,
)
from webhook.cli import main

UTC = datetime.UTC
SERVICE = NAMESPACE = "istio-spiffe-webhook"
FOUR = ("ca.crt", "tls.crt", "tls.key", "ca-bundle-patch.yaml")  # ca.key is never written

CA_TRUE = x509.BasicConstraints(ca=True, path_length=None)
AnyKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, ["certs", *args])
    return result.exit_code, result.stdout, result.stderr


def contents(directory: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(directory.iterdir())}


def digest(*paths: Path) -> list[str]:
    return [hashlib.sha256(path.read_bytes()).hexdigest() for path in paths]


def load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def verified_chain(leaf: x509.Certificate, *trusted: x509.Certificate) -> list[x509.Certificate]:
    """The chain cryptography's verifier builds for every Service name (all the same)."""
    chains = [
        PolicyBuilder()
        .store(Store(list(trusted)))
        .build_server_verifier(x509.DNSName(name))
        .verify(leaf, [])
        for name in service_names(SERVICE, NAMESPACE)
    ]
    assert all(chain == chains[0] for chain in chains)
    return chains[0]


def make_ca(
    directory: Path,
    *,
    key: AnyKey | None = None,
    name: str = "elsewhere CA",
    not_before: datetime.datetime | None = None,
    not_after: datetime.datetime | None = None,
    basic_constraints: x509.BasicConstraints | None = CA_TRUE,
    key_cert_sign: bool | None = True,
    subject_key_identifier: bool = True,
    key_format: serialization.PrivateFormat = serialization.PrivateFormat.PKCS8,
) -> tuple[Path, Path]:
    """A CA as another tool would make it, written to directory/ca.crt and ca.key."""
    key = key or ec.generate_private_key(ec.SECP384R1())
    now = datetime.datetime.now(UTC)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before or now - datetime.timedelta(days=1))
        .not_valid_after(not_after or now + datetime.timedelta(days=3650))
    )
    if basic_constraints is not None:
        builder = builder.add_extension(basic_constraints, critical=True)
    if key_cert_sign is not None:
        usage = x509.KeyUsage(True, False, False, False, False, key_cert_sign, True, False, False)
        builder = builder.add_extension(usage, critical=True)
    if subject_key_identifier:
        ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
        builder = builder.add_extension(ski, critical=False)
    algorithm = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    certificate = builder.sign(key, algorithm)
    directory.mkdir(parents=True, exist_ok=True)
    cert_file, key_file = directory / "ca.crt", directory / "ca.key"
    cert_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, key_format, serialization.NoEncryption())
    )
    return cert_file, key_file


# --- Renewing ----------------------------------------------------------------------------


def test_renewing_in_place_changes_only_the_serving_pair_which_the_old_ca_verifies(
    tmp_path: Path,
) -> None:
    out = tmp_path / "certs"
    assert run("--out", str(out))[0] == 0
    before = contents(out)
    old_ca = load(out / "ca.crt")
    code, stdout, stderr = run(
        "--out",
        str(out),
        "--force",
        "--ca-cert",
        str(out / "ca.crt"),
        "--ca-key",
        str(out / "ca.key"),
    )
    assert (code, stderr) == (0, "")
    assert stdout.splitlines() == [f"wrote {out / name}" for name in FOUR]
    after = contents(out)
    assert sorted(after) == sorted(before)
    for name in ("ca.crt", "ca.key", "ca-bundle-patch.yaml"):
        assert after[name] == before[name], name
    for name in ("tls.crt", "tls.key"):
        assert after[name] != before[name], name
    leaf = load(out / "tls.crt")
    assert verified_chain(leaf, old_ca) == [leaf, old_ca]
    key = serialization.load_pem_private_key(after["tls.key"], None)
    assert key.public_key() == leaf.public_key()


def test_renewing_without_force_names_the_serving_files_but_not_the_identical_ca_crt(
    tmp_path: Path,
) -> None:
    out = tmp_path / "certs"
    assert run("--out", str(out))[0] == 0
    before = contents(out)
    code, stdout, stderr = run(
        "--out", str(out), "--ca-cert", str(out / "ca.crt"), "--ca-key", str(out / "ca.key")
    )
    names = ", ".join(str(out / n) for n in ("tls.crt", "tls.key", "ca-bundle-patch.yaml"))
    assert (code, stdout, stderr) == (
        1,
        "",
        f"Error: {names} already exist (use --force to overwrite)\n",
    )
    assert contents(out) == before


def test_a_ca_from_elsewhere_becomes_ca_crt_and_the_ca_bundle_byte_for_byte_its_key_stays_put(
    tmp_path: Path,
) -> None:
    cert_file, key_file = make_ca(tmp_path / "pki")
    # Text around the PEM block (as `openssl x509 -text` writes it) is kept too.
    cert_file.write_bytes(b"Subject: CN=elsewhere CA\n" + cert_file.read_bytes())
    sources = digest(cert_file, key_file)
    out = tmp_path / "certs"
    code, stdout, stderr = run(
        "--out", str(out), "--ca-cert", str(cert_file), "--ca-key", str(key_file)
    )
    assert (code, stderr) == (0, "")
    assert stdout.splitlines() == [f"wrote {out / name}" for name in FOUR]
    assert sorted(contents(out)) == sorted(FOUR)  # no ca.key
    assert digest(cert_file, key_file) == sources
    assert (out / "ca.crt").read_bytes() == cert_file.read_bytes()
    patch = yaml.safe_load((out / "ca-bundle-patch.yaml").read_text())
    assert base64.b64decode(patch[0]["value"]) == cert_file.read_bytes()
    ca, leaf = load(cert_file), load(out / "tls.crt")
    assert verified_chain(leaf, ca) == [leaf, ca]


@pytest.mark.parametrize(
    "make_key",
    [
        lambda: ec.generate_private_key(ec.SECP256R1()),
        lambda: rsa.generate_private_key(65537, 2048),
        ed25519.Ed25519PrivateKey.generate,
    ],
    ids=["ecdsa-p256", "rsa-2048", "ed25519"],
)
def test_ecdsa_rsa_and_ed25519_cas_sign_the_serving_certificate(
    tmp_path: Path, make_key: Callable[[], AnyKey]
) -> None:
    cert_file, key_file = make_ca(tmp_path / "pki", key=make_key())
    out = tmp_path / "certs"
    code, _, stderr = run("--out", str(out), "--ca-cert", str(cert_file), "--ca-key", str(key_file))
    assert (code, stderr) == (0, "")
    ca, leaf = load(cert_file), load(out / "tls.crt")
    # Issuer name and signature; cryptography's Web PKI verifier refuses Ed25519, which Go's
    # crypto/x509 (the API server) accepts. The whole chain is verified for ECDSA and RSA in
    # the other tests.
    leaf.verify_directly_issued_by(ca)


def test_a_ca_without_subject_key_identifier_and_a_traditional_rsa_key_file_signs(
    tmp_path: Path,
) -> None:
    cert_file, key_file = make_ca(
        tmp_path / "pki",
        key=rsa.generate_private_key(65537, 2048),
        subject_key_identifier=False,
        key_format=serialization.PrivateFormat.TraditionalOpenSSL,
    )
    assert key_file.read_text().startswith("-----BEGIN RSA PRIVATE KEY-----\n")
    out = tmp_path / "certs"
    assert run("--out", str(out), "--ca-cert", str(cert_file), "--ca-key", str(key_file))[0] == 0
    ca, leaf = load(cert_file), load(out / "tls.crt")
    authority = leaf.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    assert authority == x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.public_key())
    assert verified_chain(leaf, ca) == [leaf, ca]


def test_in_a_bundle_of_cas_the_one_the_key_belongs_to_signs_and_the_bundle_is_kept(
    tmp_path: Path,
) -> None:
    other_file, _ = make_ca(tmp_path / "other", name="other CA")
    cert_file, key_file = make_ca(tmp_path / "pki", name="signing CA")
    bundle = tmp_path / "bundle.crt"
    bundle.write_bytes(other_file.read_bytes() + cert_file.read_bytes())
    out = tmp_path / "certs"
    code, _, stderr = run("--out", str(out), "--ca-cert", str(bundle), "--ca-key", str(key_file))
    assert (code, stderr) == (0, "")
    assert (out / "ca.crt").read_bytes() == bundle.read_bytes()
    other, ca, leaf = load(other_file), load(cert_file), load(out / "tls.crt")
    assert verified_chain(leaf, other, ca) == [leaf, ca]


def test_a_ca_that_ends_sooner_than_days_ends_the_serving_certificate_with_a_warning(
    tmp_path: Path,
) -> None:
    ends = datetime.datetime.now(UTC).replace(microsecond=0) + datetime.timedelta(days=10)
    cert_file, key_file = make_ca(tmp_path / "pki", not_after=ends)
    out = tmp_path / "certs"
    code, stdout, stderr = run(
        "--out", str(out), "--ca-cert", str(cert_file), "--ca-key", str(key_file)
    )
    assert (code, stdout.count("wrote ")) == (0, 4)
    assert stderr == (
        f"warning: the serving certificate ends with the CA on {ends:%Y-%m-%d %H:%M:%S} UTC,"
        " 355 days short of the 365 asked for\n"
    )
    assert load(out / "tls.crt").not_valid_after_utc == ends


def test_a_ca_that_outlasts_days_gives_the_serving_certificate_exactly_days(
    tmp_path: Path,
) -> None:
    cert_file, key_file = make_ca(tmp_path / "pki")
    out = tmp_path / "certs"
    code, _, stderr = run(
        "--out", str(out), "--days", "30", "--ca-cert", str(cert_file), "--ca-key", str(key_file)
    )
    assert (code, stderr) == (0, "")
    leaf = load(out / "tls.crt")
    assert leaf.not_valid_after_utc - leaf.not_valid_before_utc == datetime.timedelta(
        days=30, minutes=5
    )


def test_the_loaded_ca_is_the_file_as_given_the_signing_certificate_and_its_key(
    tmp_path: Path,
) -> None:
    cert_file, key_file = make_ca(tmp_path / "pki")
    ca = load_certificate_authority(cert_file, key_file)
    assert isinstance(ca, CertificateAuthority)
    assert (ca.pem, ca.certificate, ca.key_file) == (
        cert_file.read_bytes(),
        load(cert_file),
        key_file,
    )
    assert ca.key.public_key() == ca.certificate.public_key()


# --- Refusing ----------------------------------------------------------------------------


def test_a_key_of_another_ca_in_the_directory_is_never_replaced_not_even_with_force(
    tmp_path: Path,
) -> None:
    out = tmp_path / "certs"
    assert run("--out", str(out))[0] == 0
    before = contents(out)
    cert_file, key_file = make_ca(tmp_path / "pki")
    code, stdout, stderr = run(
        "--out", str(out), "--force", "--ca-cert", str(cert_file), "--ca-key", str(key_file)
    )
    assert (code, stdout) == (1, "")
    assert stderr == (
        f"Error: {out / 'ca.key'} is not the key of the given CA ({key_file}): move it away"
        " first (the given CA's key is never copied, and --force does not delete keys)\n"
    )
    assert contents(out) == before


def test_ca_cert_without_ca_key_is_a_usage_error(tmp_path: Path) -> None:
    cert_file, _ = make_ca(tmp_path / "pki")
    code, stdout, stderr = run("--out", str(tmp_path / "out"), "--ca-cert", str(cert_file))
    assert (code, stdout) == (2, "")
    assert stderr.splitlines()[-1] == "Error: --ca-cert and --ca-key go together"
    assert not (tmp_path / "out").exists()


def test_a_missing_ca_file_is_a_usage_error(tmp_path: Path) -> None:
    _, key_file = make_ca(tmp_path / "pki")
    missing = tmp_path / "missing.crt"
    code, _, stderr = run(
        "--out", str(tmp_path / "out"), "--ca-cert", str(missing), "--ca-key", str(key_file)
    )
    assert code == 2
    assert (
        stderr.splitlines()[-1]
        == f"Error: Invalid value for '--ca-cert': File '{missing}' does not exist."
    )


def past(days: int) -> datetime.datetime:
    return datetime.datetime(2020, 1, 1, tzinfo=UTC) + datetime.timedelta(days=days)


def future(days: int) -> datetime.datetime:
    return datetime.datetime.now(UTC).replace(microsecond=0) + datetime.timedelta(days=days)


NOT_YET = future(2)


# A case makes its files in a folder and returns (--ca-cert, --ca-key); CASES pairs each
# with the error after "Error: ", {cert} and {key} standing for those files.
Case = Callable[[Path], tuple[Path, Path]]


def expired(pki: Path) -> tuple[Path, Path]:
    return make_ca(pki, name="old CA", not_before=past(0), not_after=past(365))


def not_yet_valid(pki: Path) -> tuple[Path, Path]:
    return make_ca(pki, name="new CA", not_before=NOT_YET, not_after=future(3650))


def not_a_ca(pki: Path) -> tuple[Path, Path]:
    return make_ca(pki, name="leaf", basic_constraints=x509.BasicConstraints(False, None))


def no_basic_constraints(pki: Path) -> tuple[Path, Path]:
    return make_ca(pki, name="leaf", basic_constraints=None, key_cert_sign=None)


def may_not_sign(pki: Path) -> tuple[Path, Path]:
    return make_ca(pki, name="crl signer", key_cert_sign=False)


def mismatched(pki: Path) -> tuple[Path, Path]:
    cert_file, _ = make_ca(pki / "a")
    _, key_file = make_ca(pki / "b")
    return cert_file, key_file


def mismatched_bundle(pki: Path) -> tuple[Path, Path]:
    cert_file, key_file = mismatched(pki)
    other_file, _ = make_ca(pki / "c")
    cert_file.write_bytes(cert_file.read_bytes() + other_file.read_bytes())
    return cert_file, key_file


def encrypted_key(pki: Path) -> tuple[Path, Path]:
    cert_file, key_file = make_ca(pki)
    key = serialization.load_pem_private_key(key_file.read_bytes(), None)
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    return cert_file, key_file


def dsa_key(pki: Path) -> tuple[Path, Path]:
    cert_file, key_file = make_ca(pki)
    key = dsa.generate_private_key(1024)
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_file, key_file


def certificate_as_key(pki: Path) -> tuple[Path, Path]:
    cert_file, _ = make_ca(pki)
    return cert_file, cert_file


def key_in_certificate_file(pki: Path) -> tuple[Path, Path]:
    cert_file, key_file = make_ca(pki)
    cert_file.write_bytes(cert_file.read_bytes() + key_file.read_bytes())
    return cert_file, key_file


def garbage_certificate(pki: Path) -> tuple[Path, Path]:
    cert_file, key_file = make_ca(pki)
    cert_file.write_text("not a certificate\n")
    return cert_file, key_file


def der_certificate(pki: Path) -> tuple[Path, Path]:
    cert_file, key_file = make_ca(pki)
    cert_file.write_bytes(load(cert_file).public_bytes(serialization.Encoding.DER))
    return cert_file, key_file


CASES: list[tuple[Case, str]] = [
    (expired, "{cert}: CN=old CA expired on 2020-12-31 00:00:00 UTC"),
    (not_yet_valid, f"{{cert}}: CN=new CA is not valid before {NOT_YET:%Y-%m-%d %H:%M:%S} UTC"),
    (not_a_ca, "{cert}: CN=leaf is not a CA (basicConstraints CA:TRUE missing)"),
    (no_basic_constraints, "{cert}: CN=leaf is not a CA (basicConstraints CA:TRUE missing)"),
    (
        may_not_sign,
        "{cert}: CN=crl signer may not sign certificates (keyUsage without keyCertSign)",
    ),
    (mismatched, "{key} is not the key of the certificate in {cert}"),
    (mismatched_bundle, "{key} is not the key of any certificate in {cert}"),
    (encrypted_key, "{key}: the key is encrypted; give it unencrypted"),
    (dsa_key, "{key}: a CA key must be ECDSA, RSA or Ed25519, not DSA"),
    (certificate_as_key, "{key}: no PEM private key found"),
    (
        key_in_certificate_file,
        "{cert}: holds a private key; give a file with only the CA certificate"
        " (it becomes the caBundle)",
    ),
    (garbage_certificate, "{cert}: no PEM certificate found"),
    (der_certificate, "{cert}: no PEM certificate found"),
]


@pytest.mark.parametrize(("case", "message"), CASES, ids=[case.__name__ for case, _ in CASES])
def test_an_unusable_ca_is_one_error_line_exit_1_and_nothing_is_written(
    tmp_path: Path, case: Case, message: str
) -> None:
    cert_file, key_file = case(tmp_path / "pki")
    sources = digest(cert_file, key_file)
    out = tmp_path / "certs"
    code, stdout, stderr = run(
        "--out", str(out), "--ca-cert", str(cert_file), "--ca-key", str(key_file)
    )
    assert (code, stdout) == (1, "")
    assert stderr == "Error: " + message.format(cert=cert_file, key=key_file) + "\n"
    assert not out.exists()
    assert digest(cert_file, key_file) == sources


def test_the_loader_raises_unusable_ca_with_the_same_message(tmp_path: Path) -> None:
    cert_file, key_file = expired(tmp_path / "pki")
    with pytest.raises(UnusableCA) as caught:
        load_certificate_authority(cert_file, key_file)
    assert str(caught.value) == f"{cert_file}: CN=old CA expired on 2020-12-31 00:00:00 UTC"


def test_an_unreadable_ca_file_is_an_unusable_ca(tmp_path: Path) -> None:
    _, key_file = make_ca(tmp_path / "pki")
    with pytest.raises(UnusableCA) as caught:
        load_certificate_authority(tmp_path, key_file)  # a directory cannot be read
    assert str(caught.value) == f"{tmp_path}: cannot read: Is a directory"
